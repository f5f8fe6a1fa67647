"""The composition root: each process of a worker after the hot path, built from its parts.  ``python -m
streams.processes merge|journeys|sink METRICS_PORT LOGLEVEL`` (run by the supervisor); each process imports only
what it runs:

- ``merge`` and ``journeys``, the Faust processes (streams/processes/agents.py): the agents of streams/worker/ and
  the Faust-fed sinks (the KPI view, the effort detector, the follow-up webhook);
- ``sink``, the ClickHouse sink (streams/processes/sink.py: a librdkafka loop, not Faust): it never imports Faust,
  aiokafka or the agents (issue 35, item 5: 31 MB and 0.36 CPU s of imports at each start), and the Faust
  processes never import clickhouse-connect.

The only modules that import both streams/worker/ and sinks/ (the agents stand on streams/agents/, and neither
side imports the other).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MERGE, SINK, JOURNEYS = "merge", "sink", "journeys"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.processes merge|journeys|sink METRICS_PORT LOGLEVEL``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[0] == SINK:
        from streams.processes.sink import run_sink

        return run_sink(args[1:])
    from streams.agents.faust_app import run_process
    from streams.processes.agents import journeys_process, merge_process

    if args[0] == JOURNEYS:
        return run_process(JOURNEYS, args[1:], journeys_process)
    return run_process(MERGE, args[1:], merge_process)
