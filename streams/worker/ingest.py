"""The hot path's batch step, pure: the raw messages of one consumed batch in, everything the batch's Kafka
transaction must carry out (dead letters, partials, seen ids, the offsets to commit).

The same steps as ``cxpulse replay``, in the same order and from the same modules: decode (schemas.codec),
validate (streams.validate), de-duplicate (streams.dedup, one Deduplicator per source partition), aggregate
into panes (streams.aggregate).  Nothing here talks to Kafka; streams.worker.hotpath does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from schemas.codec import SchemaCatalog, decode_batch, encode_feedback
from streams.agents.keys import segment_partition
from streams.aggregate import State, aggregate_drivers, aggregate_panes
from streams.dedup import Dedup, Deduplicator
from streams.followups import select as select_followups
from streams.journeys import answer_row, journey_partition
from streams.privacy import pseudonymise
from streams.validate import Clock, Feedback, validate_batch
from streams.worker.records import (
    FROM_THE_START,
    PanePartial,
    PartialBatch,
    SourceRange,
    dead_letter_headers,
)


class RawMessage(Protocol):
    """The part of a confluent-kafka Message the batch step reads."""

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...


class DeadLetterOut(NamedTuple):
    """An invalid message on its way to the dead-letter topic: original key and bytes, reason headers."""

    source_partition: int
    source_offset: int
    reason: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


class BatchOut(NamedTuple):
    """What one batch's transaction carries, and what the batch counted."""

    dead_letters: list[DeadLetterOut]
    partials: dict[int, PartialBatch]  # partials partition -> its message (every partition gets one)
    seen: dict[int, dict[int, list[str]]]  # source partition -> ids counted in this batch, by expiry bucket
    offsets: dict[int, int]  # source partition -> next offset to read (committed with the transaction)
    records: int
    counted: int
    duplicates: int
    late: int  # counted events whose pane had closed on the processing clock (docs/contract.md section 5)
    followups: list[dict[str, Any]]  # counted detractor answers to call back (streams/followups.py)
    answers: dict[int, list[bytes]]  # source partition -> raw bytes of the answers counted (for ClickHouse)
    journeys: dict[int, list[bytes]]  # journey-answers partition -> counted answers with a customer id (JSON rows)


@dataclass
class _Collected:
    """One batch's output while its partitions are processed (Ingest.batch turns it into a BatchOut)."""

    panes: dict[int, list[PanePartial]]  # partials partition -> the pane partials it owns
    dead: list[DeadLetterOut] = field(default_factory=list)
    seen: dict[int, dict[int, list[str]]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    ranges: list[SourceRange] = field(default_factory=list)
    followups: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[int, list[bytes]] = field(default_factory=dict)
    journeys: dict[int, list[bytes]] = field(default_factory=dict)
    counted: int = 0
    duplicates: int = 0
    late: int = 0


@dataclass
class Ingest:
    """The batch step with the state it keeps between batches: a Deduplicator and the next batch's range start
    per source partition (both owned by the hot path, which restores them when it is assigned a partition)."""

    topic: str
    catalog: SchemaCatalog
    pane_ms: int
    partials_partitions: int
    followups: bool = False  # select detractor follow-ups
    answers: bool = False  # pass the counted answers' raw bytes on (the ClickHouse sink stores them)
    journey_partitions: int = 0  # > 0: forward the counted answers with a customer id to the journey agent
    customer_key: bytes = b""  # set: customer ids become keyed pseudonyms right after decoding (streams.privacy)
    dedup: dict[int, Dedup] = field(default_factory=dict)
    starts: dict[int, int] = field(default_factory=dict)
    _owner: dict[tuple[str, str], int] = field(default_factory=dict)

    def owner(self, channel: str, journey: str) -> int:
        key = (channel, journey)
        owner = self._owner.get(key)
        if owner is None:
            owner = self._owner[key] = segment_partition(channel, journey, self.partials_partitions)
        return owner

    def batch(self, messages: Sequence[RawMessage], clock: Clock) -> BatchOut:
        """Run decode, validate, dedup and aggregate over one batch (messages in offset order per partition).

        De-duplication state is updated in place: when the batch's transaction does not commit, the caller
        restores the de-duplication state of its partitions (streams.worker.hotpath does: from its local
        checkpoint and the changelog).
        """
        by_partition: dict[int, list[RawMessage]] = defaultdict(list)
        for message in messages:
            by_partition[message.partition() or 0].append(message)
        out = _Collected({q: [] for q in range(self.partials_partitions)})
        for partition, members in by_partition.items():
            self._partition(partition, members, clock, out)
        out.dead.sort(key=lambda letter: (letter.source_partition, letter.source_offset))
        batch_ranges = tuple(out.ranges)
        partials = {q: PartialBatch(batch_ranges, tuple(members)) for q, members in out.panes.items()}
        return BatchOut(
            out.dead,
            partials,
            out.seen,
            out.offsets,
            len(messages),
            out.counted,
            out.duplicates,
            out.late,
            out.followups,
            out.answers,
            out.journeys,
        )

    def _partition(self, partition: int, members: list[RawMessage], clock: Clock, out: _Collected) -> None:
        """One source partition's messages of the batch, in offset order, into ``out``."""
        decoded = decode_batch([message.value() for message in members], self.catalog)
        if self.customer_key:
            pseudonymise(self.customer_key, decoded.records)
        for index, why in decoded.failed:  # any bytes at all: a poison message is a dead letter, not a crash
            out.dead.append(self._letter(members[index], "undecodable", why, None))
        valid, rejected = validate_batch(decoded.records, clock)
        for rejection in rejected:
            message = members[decoded.kept[rejection.at]]
            out.dead.append(self._letter(message, rejection.reason, rejection.detail, decoded.schema_ids[rejection.at]))
        dedup = self.dedup.get(partition)
        if dedup is None:
            dedup = self.dedup[partition] = Deduplicator()
        unique, dropped = dedup.first_seen(valid)
        out.duplicates += dropped
        out.counted += len(unique)
        if unique:
            out.seen[partition] = dedup.buckets(unique)
            if self.followups:
                out.followups.extend(select_followups(unique, decoded.records))
            if self.answers:
                at = counted_at(rejected, valid, unique, len(decoded.kept))
                if self.customer_key:  # the raw bytes hold the customer id: the pseudonymised record instead
                    out.answers[partition] = [encode_feedback(decoded.records[i], self.catalog) for i in at]
                else:
                    out.answers[partition] = [members[decoded.kept[i]].value() or b"" for i in at]
            if self.journey_partitions:
                self._journeys(unique, out.journeys)
        self._panes(partition, unique, clock, out)
        end = (members[-1].offset() or 0) + 1
        out.ranges.append(SourceRange(partition, self.starts.get(partition, FROM_THE_START), end))
        out.offsets[partition] = end

    def _panes(self, partition: int, unique: list[Feedback], clock: Clock, out: _Collected) -> None:
        """The partition's counted events as pane partials, each sent to its segment's partials partition."""
        pane_ms = self.pane_ms
        deltas: dict[tuple[str, str, int], dict[str, State]] = defaultdict(dict)
        for (pane, channel, journey, metric), state in aggregate_panes(unique, pane_ms).items():
            deltas[(channel, journey, pane)][metric] = state
            if pane + pane_ms <= clock.now_ms:
                out.late += state.n
        drivers = aggregate_drivers(unique, pane_ms)
        for (channel, journey, pane), states in deltas.items():
            found = drivers.get((pane, channel, journey), {})
            out.panes[self.owner(channel, journey)].append(
                PanePartial(channel, journey, pane, partition, states, found)
            )

    def _journeys(self, unique: list[Feedback], out: dict[int, list[bytes]]) -> None:
        """The counted answers that carry a customer id, as rows for the journey agent, by customer's partition."""
        partitions = self.journey_partitions
        for event in unique:
            customer = event.customer_id
            if customer and not customer.isspace():
                row = orjson.dumps(answer_row(event, customer))
                out.setdefault(journey_partition(customer, partitions), []).append(row)

    def committed(self, offsets: dict[int, int]) -> None:
        """The batch's transaction committed: its ends are where the next batches of those partitions start."""
        self.starts.update(offsets)

    def _letter(self, message: RawMessage, reason: str, detail: str, schema_id: int | None) -> DeadLetterOut:
        partition = message.partition() or 0
        offset = message.offset() or 0
        headers = dead_letter_headers(reason, detail, self.topic, partition, offset, schema_id)
        return DeadLetterOut(partition, offset, reason, message.key(), message.value(), headers)


def counted_at(rejected: Sequence[Any], valid: Sequence[Any], unique: Sequence[Any], decoded: int) -> list[int]:
    """Indexes (into the decoded records) of the events that were counted: valid (validate_batch keeps the decoded
    order, minus the rejected) and first seen (first_seen returns the same objects, in order)."""
    rejected_at = {rejection.at for rejection in rejected}
    valid_at = [i for i in range(decoded) if i not in rejected_at]
    at = {id(event): valid_at[j] for j, event in enumerate(valid)}
    return [at[id(event)] for event in unique]


def reasons(letters: Sequence[DeadLetterOut]) -> Counter[str]:
    """Dead letters counted by reason."""
    return Counter(letter.reason for letter in letters)
