"""Read-back of partial messages that Faust's consumer never handed to the ``merge`` agent.

faust-streaming's consumer can skip messages and commit past them: messages fetched around a rebalance or a
recovery are dropped while the jump is recorded as a "gap" that counts as acked (faust-streaming#216, #221,
#312, #606; seen here after worker restarts: a handful of messages right after the first batch never reached
the agent).  ``merge`` notices from the chain of source ranges (streams.worker.merge) and reads the missing
stretch straight from the broker with this reader: an independent confluent-kafka consumer outside any group,
``read_committed`` like the agent, so aborted hot-path transactions stay invisible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from confluent_kafka import Consumer, TopicPartition

from streams.agents.record import Record, headers_of
from streams.kafka import Kafka, consumer, read_range

LOG = logging.getLogger("cxpulse.repair")
READ_TIMEOUT_SECONDS = 30.0
READ_BACK_BYTES = 16 * 1024 * 1024  # a read-back holds at most about this much of a range at a time (read_chunks)


class RangeReader(Protocol):
    """What :func:`read_chunks` needs of a reader (:class:`PartitionReader`, or a test's)."""

    async def read(
        self, partition: int, start: int, end: int | None = None, max_bytes: int | None = None
    ) -> list[Record]: ...


class TopicReader(RangeReader, Protocol):
    """What the merge and journey agents read their input topic back with (:class:`PartitionReader`)."""

    topic: str

    async def watermarks(self, partition: int) -> tuple[int, int]: ...


class CommittedOffsets(Protocol):
    """A consumer group's committed offsets on one topic, partition -> next offset
    (streams.worker.merge_agent.GroupOffsets, or a test's)."""

    def read(self) -> dict[int, int]: ...


def filled(records: Sequence[Record], max_bytes: int) -> bool:
    """True when a read with ``max_bytes`` stopped at its budget (more of the range may follow)."""
    return sum(len(record.value) for record in records) >= max_bytes


async def read_chunks(
    reader: RangeReader, partition: int, start: int, end: int, max_bytes: int | None = None
) -> AsyncIterator[list[Record]]:
    """The committed records of [start, end), about ``max_bytes`` of values at a time (at least one record), for a
    caller that handles each chunk before the next is read: a read-back of a backlog's whole lag held hundreds of
    megabytes and the event loop for tens of seconds (``make bench-state --answers 3000000``)."""
    max_bytes = max_bytes or READ_BACK_BYTES
    while start < end:
        chunk = await reader.read(partition, start, end, max_bytes)
        if not chunk:
            return
        yield chunk
        if not filled(chunk, max_bytes):
            return  # the range ended before the budget did
        start = chunk[-1].offset + 1


class PartitionReader:
    """Reads offset ranges of a topic's partitions, outside any consumer group, committed records only.

    Blocking calls run in a thread; one lock serialises them (one client per process)."""

    def __init__(self, kafka: Kafka, topic: str) -> None:
        self._kafka = kafka
        self.topic = topic
        self._consumer: Consumer | None = None
        self._lock = asyncio.Lock()

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = consumer(
                self._kafka,
                f"{self.topic}-read-back",
                **{"enable.partition.eof": True, "isolation.level": "read_committed"},
            )
        return self._consumer

    async def watermarks(self, partition: int) -> tuple[int, int]:
        """The first offset still in the partition, and the last stable offset (the end for read_committed)."""
        async with self._lock:
            client = self._client()
            low, high = await asyncio.to_thread(
                client.get_watermark_offsets, TopicPartition(self.topic, partition), 10.0, False
            )
            return int(low), int(high)

    async def read(
        self, partition: int, start: int, end: int | None = None, max_bytes: int | None = None
    ) -> list[Record]:
        """The committed records with offsets in [start, end) (to the current end when ``end`` is None); with
        ``max_bytes``, only the first of them whose values reach it (at least one): :func:`read_chunks`."""
        async with self._lock:
            return await asyncio.to_thread(self._read, partition, start, end, max_bytes)

    def _read(self, partition: int, start: int, end: int | None, max_bytes: int | None = None) -> list[Record]:
        client = self._client()
        low, high = client.get_watermark_offsets(TopicPartition(self.topic, partition), 10.0, False)
        start = max(start, low)
        stop = high if end is None else min(end, high)
        if start >= stop:
            return []
        out: list[Record] = []
        size = 0
        for message in read_range(client, self.topic, {partition: (start, stop)}, READ_TIMEOUT_SECONDS):
            value = message.value() or b""
            out.append(
                Record(
                    partition,
                    message.offset() or 0,
                    value,
                    max(0, message.timestamp()[1]),
                    headers_of(message.headers()),
                    message.key(),
                )
            )
            size += len(value)
            if max_bytes is not None and size >= max_bytes:
                break
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
