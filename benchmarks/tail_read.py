"""How fast a changelog is read to its end on this machine, alone (issue 19: what bounds a full restore).

Starts its own Kafka broker, writes N changelog-like records (JSON keys, values of a given size, lz4, 6
partitions; a third of the keys written twice: a changelog's revisions) and reads them back three ways, each
timed from assignment to the last partition's end:

1. bare: a confluent-kafka consumer's ``consume`` loop, keeping each key's last value (the floor in Python);
2. read_tails: ``LocalTables.read_tails`` into empty local copies (RocksDB), what a wiped restore does;
3. read_tails with the journeys' index entries (``journey_index``: each value's tail decoded).

Usage::

    .venv/bin/python -m benchmarks.tail_read [--records 600000] [--value-bytes 400]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.bench import load, warm_up
from streams.agents.local_tables import LocalTables
from streams.kafka import DRAIN_POLL_SECONDS
from streams.topics import TopicSpec, ensure_topics
from streams.worker.journey_agent import journey_index
from tests.support import start_broker

PARTITIONS = 6
console = Console(width=160)


def records(count: int, value_bytes: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp): JSON keys, values shaped like a journey group's state (its tail: due time and
    closed instances), padded to ``value_bytes``; one key in three written twice."""
    rng = random.Random(7)
    now = int(time.time() * 1000)
    keys = [orjson.dumps(f"j|checkout|customer-{i:09d}") for i in range(count * 3 // 4)]
    out = []
    for i in range(count):
        key = keys[i] if i < len(keys) else keys[rng.randrange(len(keys))]
        tail = orjson.dumps({"t": now + rng.randrange(86_400_000), "k": [[now - 1000, 1, 2, 3]]})[1:]
        pad = max(0, value_bytes - len(tail) - 12)
        value = b'{"a":"' + b"x" * pad + b'",' + tail
        out.append((key, value, now))
    return out


def bare(bootstrap: str, topic: str) -> tuple[int, int]:
    """Read every partition to its end, keeping each key's last value: (records, keys)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tail-read-bench",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(PARTITIONS)])
    latest: dict[int, dict[bytes, bytes | None]] = {partition: {} for partition in range(PARTITIONS)}
    pending, count = set(range(PARTITIONS)), 0
    while pending:
        for message in consumer.consume(num_messages=10_000, timeout=DRAIN_POLL_SECONDS):
            error = message.error()
            if error is None:
                latest[message.partition() or 0][message.key() or b""] = message.value()
                count += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                pending.discard(message.partition() or 0)
    consumer.close()
    return count, sum(len(keys) for keys in latest.values())


def tails(bootstrap: str, topic: str, directory: Path, index: bool) -> tuple[int, int]:
    local = LocalTables(bootstrap, directory)
    if index:
        local.index_by(topic, journey_index)
    try:
        local.open_all(topic, range(PARTITIONS))
        found = local.read_tails(topic, dict.fromkeys(range(PARTITIONS), 0))
        return sum(offset + 1 for _, offset in found.values()), sum(len(keys) for keys, _ in found.values())
    finally:
        local.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=600_000, help="changelog records (600,000)")
    parser.add_argument("--value-bytes", type=int, default=400, help="bytes a value (400)")
    args = parser.parse_args()
    table = Table(title=f"reading a changelog of {args.records:,} records ({args.value_bytes} B values) to its end")
    for column in ("read", "seconds", "records/s", "keys"):
        table.add_column(column, justify="right" if column != "read" else "left")
    with tempfile.TemporaryDirectory(prefix="cxpulse-tail-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir / "kafka")
        try:
            warm_up(broker.bootstrap)
            topic = "tail-read-changelog"
            ensure_topics(broker.bootstrap, [TopicSpec(topic, PARTITIONS, {"cleanup.policy": "compact"})])
            load(broker.bootstrap, topic, records(args.records, args.value_bytes))
            runs = [("bare consume loop", None), ("read_tails", False), ("read_tails + journeys index", True)]
            for number, (name, index) in enumerate(runs):
                started = time.perf_counter()
                if index is None:
                    count, keys = bare(broker.bootstrap, topic)
                else:
                    count, keys = tails(broker.bootstrap, topic, workdir / f"copies-{number}", index)
                seconds = time.perf_counter() - started
                table.add_row(name, f"{seconds:.2f}", f"{count / seconds:,.0f}", f"{keys:,}")
                console.print(f"{name}: {seconds:.2f} s")
        finally:
            broker.stop()
    console.print(table)


if __name__ == "__main__":
    main()
