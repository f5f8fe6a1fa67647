"""The repair reader against the real broker: it returns exactly the asked offset ranges."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streams.gaps import OffsetReader
from streams.kafka import producer
from tests.support import RunningBroker


def test_reader_returns_exactly_the_asked_ranges(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=2)
    out = producer(kafka_broker.bootstrap)
    for i in range(50):
        out.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), partition=1)
    assert out.flush(30) == 0

    async def scenario() -> tuple[int, list[tuple[int, bytes | None]], list[int], int]:
        reader = OffsetReader(kafka_broker.bootstrap)
        try:
            low = await reader.low_watermark(topic, 1)
            got = await reader.read(topic, 1, [(3, 6), (40, 42)])
            tail = await reader.read(topic, 1, [(48, 60)])  # past the end: what exists, without waiting forever
            return low, [(r.offset, r.value) for r in got], [r.offset for r in tail], reader.repaired
        finally:
            reader.close()

    low, got, tail, repaired = asyncio.run(scenario())
    assert low == 0
    assert got == [(3, b"v3"), (4, b"v4"), (5, b"v5"), (40, b"v40"), (41, b"v41")]
    assert tail == [48, 49]
    assert repaired == 7
