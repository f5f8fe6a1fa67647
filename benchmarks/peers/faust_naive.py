"""A naive Faust agent: one event at a time, a tumbling windowed table (60 s) of counts per segment and metric.

The way Faust's documentation counts per window: ``app.Table(...).tumbling(60).relative_to_stream()`` (the
events' Kafka timestamps are their occurred_at), ``table[key] += 1`` per event.  Results are the table's
changelog (``<app>-counts-changelog``).  Usage (from benchmarks/bench.py)::

    python -m benchmarks.peers.faust_naive --bootstrap H:P --topic T --app-id ID --data-dir DIR
"""

from __future__ import annotations

import argparse
import io
import sys
from datetime import timedelta
from typing import Any

import fastavro
import faust

from schemas.codec import FEEDBACK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.data_dir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int).tumbling(60, expires=timedelta(days=7)).relative_to_stream()

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for value in stream:
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), FEEDBACK, None)
            counts[f"{record['channel']}|{record['journey']}|{record['metric']}"] += 1

    worker = faust.Worker(app, loglevel="warn", quiet=True)
    worker.spinner = None  # the spinner turns the root logger to DEBUG (DESIGN.md, known traps)
    sys.argv = [sys.argv[0]]
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
