"""Typed stand-ins shared by the unit tests: a Kafka message, and the broker's part between the hot path's route step
and its count step (what a batch routes, read back in a later batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.agents.record import Record
from streams.core.validate import Clock
from streams.worker.ingest import BatchOut, Ingest
from streams.worker.records import THROUGH_HEADER, encode_routed, encode_routed_through

FEEDBACK = "cx.feedback"
ROUTED = "cx-routed"


@dataclass
class FakeMessage:
    """A stand-in for a confluent-kafka Message (streams.worker.ingest.RawMessage)."""

    p: int
    o: int
    v: bytes | None
    k: bytes | None = None
    t: str = FEEDBACK
    ts: int = 0
    h: list[tuple[str, bytes]] | None = None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.h

    def error(self) -> None:
        return None


@dataclass
class RoutedTopic:
    """The routed topic between two batches: what a batch routed becomes messages of ``ROUTED`` (one per routed
    partition and batch, with the route step's ``through`` header), read by a later batch."""

    waiting: dict[int, list[FakeMessage]] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)

    def add(self, out: BatchOut, through: dict[int, int] | None = None) -> None:
        header = [(THROUGH_HEADER, encode_routed_through(through or {}))]
        for partition, values in out.routed.items():
            offset = self.ends.get(partition, 0)
            self.waiting.setdefault(partition, []).append(
                FakeMessage(partition, offset, encode_routed(values), t=ROUTED, h=header)
            )
            self.ends[partition] = offset + 1

    def take(self) -> list[FakeMessage]:
        """Every routed message not read yet, in offset order per partition."""
        out = [message for messages in self.waiting.values() for message in messages]
        self.waiting.clear()
        return out


def ingest(partials: int = 1, routed: int = 1, **options: Any) -> Ingest:
    """An Ingest of ``FEEDBACK`` with the test catalog's defaults (LocalCatalog), 60-second panes."""
    from schemas.codec import LocalCatalog

    return Ingest(FEEDBACK, LocalCatalog(), options.pop("pane_ms", 60_000), partials, routed, **options)


@dataclass
class TwoSteps:
    """An Ingest and its routed topic: :meth:`batch` runs feedback messages through the route step, then their
    routed answers through the count step in the next batch (both committed), as the hot path does when no other
    message comes between."""

    step: Ingest
    topic: RoutedTopic = field(default_factory=RoutedTopic)

    def batch(self, messages: Sequence[FakeMessage], clock: Clock) -> tuple[BatchOut, BatchOut]:
        routed = self.step.batch(messages, clock)
        self.step.committed(routed.offsets)
        self.topic.add(routed)
        counted = self.step.batch(self.topic.take(), clock)
        self.step.committed(counted.offsets)
        return routed, counted


# --- what the Faust agents stand on (streams.agents.base.AgentContext), as tests give it --------------------


class Produced:
    """A ResultsProducer that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.flushes = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1,
                timestamp: int = 0) -> None:  # fmt: skip
        self.messages.append((topic, value, key, partition))

    def produce_many(
        self, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]], partition: int = -1
    ) -> None:
        for value, key in messages:
            self.produce(topic, value, key, partition)

    async def flush(self) -> None:
        self.flushes += 1
        await asyncio.sleep(0)  # a real flush waits for the broker: other tasks run meanwhile

    def on(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, int]]:
        return [m for m in self.messages if m[0] == topic]


class Held:
    """What the agent's process holds: partitions, their ends, whether it has settled."""

    def __init__(self, topic: str, partitions: dict[int, int], settled: bool = True) -> None:
        self.topic, self.partitions, self.is_settled = topic, partitions, settled
        self.rebalanced = 0
        self.handed: dict[int, int] = {}  # partition -> the last offset the consumer handed over (unknown: absent)

    def assigned(self, topic: str) -> set[int]:
        return set(self.partitions) if topic == self.topic else set()

    def end(self, topic: str, partition: int) -> int | None:
        return self.partitions.get(partition) if topic == self.topic else None

    def settled(self) -> bool:
        return self.is_settled

    def rebalances(self) -> int:
        return self.rebalanced

    def delivered(self, topic: str, partition: int) -> int | None:
        return self.handed.get(partition) if topic == self.topic else None


class Reader:
    """A partials partition's messages, readable by range (what PartitionReader reads from Kafka)."""

    topic = "cx-partials"

    def __init__(self, records: list[Record], end: int) -> None:
        self.records, self.end, self.reads = records, end, 0

    async def read(
        self, partition: int, start: int, end: int | None = None, max_bytes: int | None = None
    ) -> list[Record]:
        self.reads += 1
        found = [r for r in self.records if r.partition == partition and start <= r.offset < (end or 10**9)]
        size = 0
        for n, record in enumerate(found):
            size += len(record.value)
            if max_bytes is not None and size >= max_bytes:
                return found[: n + 1]
        return found

    async def watermarks(self, partition: int) -> tuple[int, int]:
        return 0, self.end


class Offsets:
    """A consumer group's committed offsets (streams.worker.repair.CommittedOffsets)."""

    def __init__(self, committed: dict[int, int]) -> None:
        self.committed = committed

    def read(self) -> dict[int, int]:
        return self.committed
