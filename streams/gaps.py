"""Offset-gap repair: every offset of an input partition is processed, whatever the Faust consumer delivers.

faust-streaming's consumer can hand an agent a partition's messages with offsets missing and still commit past
them: messages fetched around a rebalance or a recovery are dropped while Faust records the jump as a "gap"
it treats as acked (faust-streaming#216, #221, #312; seen here after every worker restart: a handful of events
right after the first batch never reached the agent, yet their offsets were committed).  So the agents keep,
per input partition, the next offset they expect (in a changelog-backed table), and before processing a batch
they read any offsets missing from it straight from the broker with an independent consumer outside the group.
Offsets below the expected one (re-deliveries) are processed again: every state update is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import NamedTuple, cast

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition
from prometheus_client import Counter

from streams.errors import CxPulseError
from streams.kafka import consumer

LOG = logging.getLogger("cxpulse.gaps")
READ_TIMEOUT_SECONDS = 30.0


class Record(NamedTuple):
    """One input message, from Faust or from the repair reader."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def missing_ranges(offsets: Sequence[int], expected: int) -> list[tuple[int, int]]:
    """The half-open offset ranges in [expected, max(offsets)) that ``offsets`` (sorted, distinct) lack."""
    ranges = []
    cursor = expected
    for offset in offsets:
        if offset > cursor:
            ranges.append((cursor, offset))
        cursor = max(cursor, offset + 1)
    return ranges


def complete(records: Sequence[Record], fetched: Sequence[Record]) -> list[Record]:
    """The batch in offset order, one record per offset, with the ``fetched`` ones filled in."""
    by_offset = {r.offset: r for r in fetched}
    by_offset.update((r.offset, r) for r in records)
    return [by_offset[o] for o in sorted(by_offset)]


class OffsetReader:
    """Reads exact offset ranges of a partition, outside any consumer group (one client per worker)."""

    def __init__(self, bootstrap: str, counter: Counter | None = None) -> None:
        self._bootstrap = bootstrap
        self._counter = counter
        self._consumer: Consumer | None = None
        self._lock = asyncio.Lock()
        self.repaired = 0  # records read to fill gaps, for the log and the tests

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = consumer(self._bootstrap, "cxpulse-gap-reader", **{"enable.partition.eof": True})
        return self._consumer

    async def low_watermark(self, topic: str, partition: int) -> int:
        """The first offset still in the partition."""
        return (await self.watermarks(topic, partition))[0]

    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """The first offset still in the partition and the offset the next message will get."""
        async with self._lock:
            client = self._client()
            low, high = await asyncio.to_thread(
                client.get_watermark_offsets, TopicPartition(topic, partition), 10.0, False
            )
            return int(low), int(high)

    async def partition_count(self, topic: str) -> int:
        async with self._lock:
            metadata = await asyncio.to_thread(self._client().list_topics, topic, 10.0)
            return len(metadata.topics[topic].partitions)

    async def scan(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        """The records of [start, end), headers included (for reading back what this worker wrote)."""
        async with self._lock:
            return await asyncio.to_thread(self._read, topic, partition, start, end)

    async def read(self, topic: str, partition: int, ranges: Sequence[tuple[int, int]]) -> list[Record]:
        """The records with offsets in the half-open ``ranges`` that the consumer skipped (logged and counted)."""
        async with self._lock:
            out: list[Record] = []
            for start, end in ranges:
                out.extend(await asyncio.to_thread(self._read, topic, partition, start, end))
            self.repaired += len(out)
            if self._counter is not None:
                self._counter.inc(len(out))
            LOG.warning(
                "read %d records of %s[%d] offsets %s that the consumer skipped", len(out), topic, partition, ranges
            )
            return out

    def _read(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        if start >= end:
            return []
        client = self._client()
        client.assign([TopicPartition(topic, partition, start)])
        out: list[Record] = []
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                for message in client.consume(num_messages=min(max(end - start, 1), 1000), timeout=0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - confluent-kafka's documented name
                            return out
                        raise CxPulseError(f"reading {topic}[{partition}] {start}..{end}: {error}")
                    offset = message.offset() or 0  # never None for a delivered message
                    if start <= offset < end:
                        pairs = cast("list[tuple[str, bytes | None]]", message.headers() or [])
                        headers = tuple((name, value or b"") for name, value in pairs)
                        out.append(Record(topic, partition, offset, message.key(), message.value(), headers))
                    if offset >= end - 1:
                        return out
                position = client.position([TopicPartition(topic, partition)])[0].offset
                if position not in (OFFSET_END,) and position >= end:
                    return out
            raise CxPulseError(f"reading {topic}[{partition}] {start}..{end}: no answer in {READ_TIMEOUT_SECONDS} s")
        finally:
            client.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
