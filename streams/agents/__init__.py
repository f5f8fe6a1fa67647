"""What every Faust process of cxpulse stands on: the batch-agent skeleton (base.py), the one producer of results
and changelogs (results.py), the Faust app builder and the few uses of faust-streaming beyond its API
(faust_app.py, faust_compat.py), metrics, health and the /metrics page.  Neither streams/worker/ nor sinks/ is
imported here; both import it, and streams/processes/ composes the processes from their agents."""
