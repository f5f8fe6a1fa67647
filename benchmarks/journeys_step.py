"""The journey agent's batch step alone, on one core (issue 35 item 2: the journeys process at the hot path's rate).

The agent (streams/worker/journey_agent.py) follows the journey-answers messages of the bench's live shape: 200,000
answers of 200,000 possible customers (`streams.core.synth.realistic_events`, as `make bench` loads them) in
messages of one hot-path batch's rows for one partition, 40 messages a Faust batch.  Its table is a dict that
encodes each key and value as the table on disk does for its changelog (orjson, the key's JSON), its producer
counts and drops: no Kafka, no Faust, no RocksDB.  So this is the agent's own Python per answer (decoding the rows,
loading and revising each group, its state's encoding, the revisions' Avro), what a batch step must cut; the
process adds Faust's consumer and table machinery, librdkafka and the checkpoints of its copies on disk (`make
bench`'s CPU seconds per process).  Compare with `benchmarks.hotpath_answers`, the hot path's batch step alone.
Usage::

    .venv/bin/python -m benchmarks.journeys_step [--answers 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from schemas.codec import LocalCatalog
from streams.agents.base import AgentContext
from streams.agents.faust_compat import encode_value
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record
from streams.agents.stores import raw_key
from streams.config import Settings
from streams.core.journeys import answer_row, encode_answer_rows, group_of, journey_partition
from streams.core.synth import realistic_events
from streams.core.validate import validate_batch
from streams.runtime import gc_seconds, tune_gc
from streams.worker.journey_agent import JourneyAgent
from tests.fakes import Held, Offsets, Produced, Reader

TOPIC = "journey-answers"
PARTITIONS = 6
ROWS_PER_MESSAGE = 10_000 // PARTITIONS  # a hot-path batch of 10,000 answers over 6 partitions
MESSAGES_PER_BATCH = 40


class Table(dict[str, Any]):
    """The agent's table: a dict that encodes what the table on disk encodes (the key for its copy's read; key and
    value for the changelog message of a write) and, as the table on disk does, keeps a written value's bytes
    (streams.agents.stores.DiskMapping.set_encoded), read back decoded."""

    def get(self, key: str, default: Any = None) -> Any:
        raw_key(key)
        value = super().get(key, default)
        return orjson.loads(value) if type(value) is bytes else value

    def __setitem__(self, key: str, value: Any) -> None:
        encode_value(value)
        raw_key(key)
        super().__setitem__(key, value)

    def set_many(self, items: list[tuple[str, Any]]) -> None:
        """KeyPartitionedTable.set_many's encoding of each item, kept encoded."""
        for key, value in items:
            raw_key(key)
            super().__setitem__(key, encode_value(value))


class Dropped(Produced):
    """A ResultsProducer that counts and drops (tests.fakes.Produced keeps every message)."""

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1,
                timestamp: int = 0) -> None:  # fmt: skip
        self.produced += 1


def messages(answers: int, now_ms: int) -> dict[int, list[Record]]:
    """The journey-answers messages of ``answers`` valid answers of the last minute, by partition."""
    events = list(realistic_events(answers, seed=11, start_ms=now_ms - 60_000, per_second=answers / 60,
                                   invalid_share=0.0, duplicate_share=0.0))  # fmt: skip
    valid, _ = validate_batch(events)
    rows: dict[int, list[list[Any]]] = {p: [] for p in range(PARTITIONS)}
    for event in valid:
        group = group_of(event)
        if group is not None:
            rows[journey_partition(group[0], PARTITIONS)].append(answer_row(event, group[0]))
    out: dict[int, list[Record]] = {}
    for partition, found in rows.items():
        chunks = [found[at : at + ROWS_PER_MESSAGE] for at in range(0, len(found), ROWS_PER_MESSAGE)]
        # offsets 0, 2, 4 ...: a commit marker after each hot-path transaction
        out[partition] = [Record(partition, 2 * n, encode_answer_rows(chunk), now_ms) for n, chunk in enumerate(chunks)]
    return out


def run(by_partition: dict[int, list[Record]]) -> tuple[float, int, int]:
    """One fresh agent through every message: (seconds, answers followed, revisions sent)."""
    settings = Settings(clickhouse_url="")
    produced = Dropped()
    held = Held(TOPIC, dict.fromkeys(range(PARTITIONS), 0))  # every partition, settled; nothing is read back
    context = AgentContext(settings, WorkerMetrics(CollectorRegistry()), produced, LocalCatalog(), held)  # type: ignore[arg-type]
    reader, committed = Reader([], 0), Offsets(dict.fromkeys(range(PARTITIONS), 0))
    agent = JourneyAgent(context, TOPIC, Table(), reader, committed)  # type: ignore[arg-type]

    async def follow() -> float:
        started = time.perf_counter()
        for partition, records in by_partition.items():
            for at in range(0, len(records), MESSAGES_PER_BATCH):
                await agent.handle(partition, records[at : at + MESSAGES_PER_BATCH])
        return time.perf_counter() - started

    seconds = asyncio.run(follow())
    followed = agent.metrics.registry.get_sample_value("cxpulse_worker_records_total", {"topic": TOPIC}) or 0
    return seconds, int(followed), produced.produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    now_ms = int(time.time() * 1000)  # the instances stay open: the live shape
    by_partition = messages(args.answers, now_ms)
    tune_gc()  # the collector's setting of every cxpulse process (streams/runtime.py)
    answers = sum(len(json.loads(r.value)) for records in by_partition.values() for r in records)
    times = []
    for n in range(args.runs):
        collecting = sum(gc_seconds)
        seconds, _, produced = run(by_partition)
        times.append(seconds)
        print(f"run {n + 1}: {answers / seconds:,.0f} answers/s ({seconds:.2f} s, {sum(gc_seconds) - collecting:.2f} s "
              f"of it collecting; {produced:,} revisions sent)")  # fmt: skip
    median = statistics.median(times)
    print(f"journeys batch step, {answers:,} answers, median of {args.runs}: {answers / median:,.0f} answers/s, "
          f"{1e6 * median / answers:.1f} µs an answer")  # fmt: skip


if __name__ == "__main__":
    main()
