"""The stream worker (``cxpulse worker``), one step a module.  Read in this order:

1. ``supervisor``: the command: topics, the processes of one worker, their summed /metrics, stop and restart.
2. ``hotpath``: the librdkafka batch loop, one Kafka transaction per batch (feedback in; dead letters,
   partials, seen ids and the input offsets out).
3. ``ingest``: the hot path's pure batch step: decode, validate, de-duplicate, aggregate into pane deltas.
4. ``records``: the message formats and table values, each encoded and decoded in one place.
5. ``app``: the Faust process: the ``merge`` agent on the partials, its tables, its timers.
6. ``merge``: the merge agent's pure step: absorb deltas once, follow each source's chain, results.
7. ``repair``: reading back partial messages the Faust consumer skipped.
8. ``faust_compat``: every use of a Faust private, in one place.
9. ``metrics``: the Prometheus metrics of every process.
"""
