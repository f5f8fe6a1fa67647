"""The ceiling: a bare confluent-kafka loop, ``consume(10000)`` + fastavro + a dict count per pane group.

No validation, no de-duplication, no state in Kafka, no output: what any Python consumer of these events pays
at least.  Prints one JSON line: when the first message arrived and when the last one was counted (epoch s), and
writes the counts to ``--counts`` for the agreement check.  Usage (from benchmarks/bench.py)::

    python -m benchmarks.peers.bare --bootstrap H:P --topic T --events N --counts FILE
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from collections import Counter

import fastavro
from confluent_kafka import Consumer

from schemas.codec import FEEDBACK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--counts", required=True)
    args = parser.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"bare-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    counts: Counter[tuple[int, str, str, str]] = Counter()
    seen = 0
    first = None
    reader = fastavro.schemaless_reader
    while seen < args.events:
        for message in consumer.consume(num_messages=10_000, timeout=1.0):
            if message.error() is not None:
                continue
            if first is None:
                first = time.time()
            record = reader(io.BytesIO(message.value()[5:]), FEEDBACK, None)
            at = record["occurred_at"]
            counts[(at - at % 60_000, record["channel"], record["journey"], record["metric"])] += 1
            seen += 1
    done = time.time()
    consumer.close()
    with open(args.counts, "w") as out:
        json.dump([[*key, n] for key, n in counts.items()], out)
    print(json.dumps({"first": first, "done": done}), flush=True)


if __name__ == "__main__":
    main()
