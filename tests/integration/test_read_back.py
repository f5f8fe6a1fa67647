"""The read-back reader (streams/worker/repair.py) on the real broker: a range read a budget of bytes at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.agents.record import Record
from streams.kafka import producer
from streams.worker.repair import PartitionReader, read_chunks
from tests.support import RunningBroker
from tests.workers import make_pipeline


def test_a_range_is_read_back_a_byte_budget_at_a_time(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """40 messages of 1-3 KB in a partition, read from offset 5 to 35 with a 10 KB budget: every record of the range
    once, in order, each chunk reaching the budget only with its last record; the last chunk ends the range."""
    settings = make_pipeline(kafka_broker.bootstrap, tmp_path).settings
    topic = settings.feedback_topic
    sender = producer(settings.kafka)
    sizes = [1024 * (1 + i % 3) for i in range(40)]
    for i, size in enumerate(sizes):
        sender.produce(topic, bytes([i]) * size, partition=2)
    assert sender.flush(30) == 0
    reader = PartitionReader(settings.kafka, topic)

    async def chunks() -> list[list[Record]]:
        return [chunk async for chunk in read_chunks(reader, 2, 5, 35, 10 * 1024)]

    try:
        got = asyncio.run(chunks())
    finally:
        reader.close()
    assert [r.offset for chunk in got for r in chunk] == list(range(5, 35))
    assert [r.value for chunk in got for r in chunk] == [bytes([i]) * sizes[i] for i in range(5, 35)]
    for chunk in got:
        assert sum(len(r.value) for r in chunk[:-1]) < 10 * 1024
    assert all(sum(len(r.value) for r in chunk) >= 10 * 1024 for chunk in got[:-1]) and len(got) > 3
