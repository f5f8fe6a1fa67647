"""The hot path's batch step, pure: the raw messages of one consumed batch in, everything the batch's Kafka
transaction must carry out (dead letters, routed answers, partials, seen ids, the offsets to commit).

The same steps as ``cxpulse replay``, in the same order and from the same modules, in two steps, because the
copies of an answer can arrive on any feedback partition (a platform keys by customer, another by event id; an
HTTP post with a customer id and its retry without one), and only one owner of an event id can tell which copy
came first:

- **route** (messages of the feedback topic): decode (schemas.codec), validate (streams.core.validate); invalid ones
  become dead letters, valid ones go on validated (records.Routed: pseudonymised first when customer ids are keyed,
  their comments as kept, with the fields the store keeps) to the routed partition of their event id
  (:func:`routed_partition`), in the order of their Kafka timestamps.
- **count** (messages of the routed topic): decode, de-duplicate (streams.core.dedup: one Deduplicator per routed
  partition, so every copy of an id meets the same one), aggregate into panes (streams.core.aggregate), and everything
  that follows from a counted answer: partials, answers for the store, journey answers, follow-ups.

One consumer reads both topics and one transaction carries both steps' output: a routed answer is counted in a
later batch (a hop of one batch), exactly once.  Nothing here talks to Kafka; streams.worker.hotpath does.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from schemas.codec import SchemaCatalog, decode_batch
from streams.agents.keys import segment_partition
from streams.core.aggregate import Mentions, State, aggregate_drivers, aggregate_mentions, aggregate_panes
from streams.core.comments import CommentMode, ThemeMatcher, with_comments
from streams.core.dedup import Dedup, Deduplicator
from streams.core.followups import context as followup_context
from streams.core.followups import is_detractor
from streams.core.followups import select as select_followups
from streams.core.journeys import answer_row, journey_partition
from streams.core.privacy import pseudonymise
from streams.core.quotes import Quotes, aggregate_quotes, quotable
from streams.core.validate import Clock, Feedback, validate_batch
from streams.worker.records import (
    FROM_THE_START,
    ROUTED_SOURCE,
    PanePartial,
    PartialBatch,
    Routed,
    SourceRange,
    dead_letter_headers,
    decode_routed,
    decode_routed_through,
    json_row,
    store_fields,
)


class RawMessage(Protocol):
    """The part of a confluent-kafka Message the batch step reads."""

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def timestamp(self) -> tuple[int, int]: ...

    def headers(self) -> Any: ...  # list of (name, value) pairs, or None

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
    routed: dict[int, list[Routed]]  # routed partition -> the valid answers it counts
    partials: dict[int, PartialBatch]  # partials partition -> its message (each gets one when the count step ran)
    seen: dict[int, dict[int, list[str]]]  # routed partition -> ids counted in this batch, by expiry bucket
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> next offset to read (committed with the transaction)
    through: dict[int, dict[int, int]]  # routed partition -> {feedback partition: ms} of the routed messages counted
    records: int  # feedback messages (the route step's input)
    counted: int
    duplicates: int
    late: int  # counted events whose pane had closed on the processing clock (docs/contract.md section 5)
    followups: list[dict[str, Any]]  # counted detractor answers to call back (streams/core/followups.py)
    answers: dict[int, list[bytes]]  # routed partition -> raw bytes of answers counted, routed by an older worker
    journeys: dict[int, list[bytes]]  # journey-answers partition -> counted answers with a customer id (JSON rows)
    answer_themes: dict[int, list[tuple[str, ...]]]  # routed partition -> the themes of each of ``answers``
    answer_rows: dict[int, list[bytes]]  # routed partition -> counted answers' routed rows, for ClickHouse


@dataclass
class _Collected:
    """One batch's output while its partitions are processed (Ingest.batch turns it into a BatchOut)."""

    panes: dict[int, list[PanePartial]]  # partials partition -> the pane partials it owns
    dead: list[DeadLetterOut] = field(default_factory=list)
    routed: dict[int, list[tuple[int, int, int, Routed]]] = field(default_factory=dict)  # q -> (ts, p, offset, ..)
    seen: dict[int, dict[int, list[str]]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    through: dict[int, dict[int, int]] = field(default_factory=dict)
    ranges: list[SourceRange] = field(default_factory=list)
    followups: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[int, list[bytes]] = field(default_factory=dict)
    answer_rows: dict[int, list[bytes]] = field(default_factory=dict)
    answer_themes: dict[int, list[tuple[str, ...]]] = field(default_factory=dict)
    journeys: dict[int, list[bytes]] = field(default_factory=dict)
    counted: int = 0
    duplicates: int = 0
    late: int = 0


def routed_partition(event_id: str, partitions: int) -> int:
    """The routed partition that counts every copy of ``event_id`` (CRC-32: stable across processes and versions)."""
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % partitions


@dataclass
class Ingest:
    """The batch step with the state it keeps between batches: per routed partition, a Deduplicator and the next
    batch's range start (both owned by the hot path, which restores them when it is assigned a partition)."""

    topic: str  # the feedback topic (route step); any other topic's messages are routed ones (count step)
    catalog: SchemaCatalog
    pane_ms: int
    partials_partitions: int
    routed_partitions: int
    followups: bool = False  # select detractor follow-ups
    answers: bool = False  # pass the counted answers on (the ClickHouse sink stores them)
    journey_partitions: int = 0  # > 0: forward the counted answers with a customer id to the journey agent
    customer_key: bytes = b""  # set: customer ids become keyed pseudonyms right after decoding (streams.core.privacy)
    comments: CommentMode = "redacted"  # what becomes of comments before anything is sent on (contract section 9)
    matcher: ThemeMatcher | None = None  # the theme taxonomy, compiled once; None: no themes but "(any)"
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
        """Route the batch's feedback messages and count its routed ones (messages in offset order per partition).

        De-duplication state is updated in place: when the batch's transaction does not commit, the caller
        restores the de-duplication state of its partitions (streams.worker.hotpath does: from its local
        checkpoint and the changelog).
        """
        feedback: dict[int, list[RawMessage]] = defaultdict(list)
        routed: dict[int, list[RawMessage]] = defaultdict(list)
        for message in messages:
            (feedback if message.topic() == self.topic else routed)[message.partition() or 0].append(message)
        out = _Collected({q: [] for q in range(self.partials_partitions)} if routed else {})
        for partition, members in feedback.items():
            self._route(partition, members, clock, out)
        for partition, members in routed.items():
            self._count(partition, members, clock, out)
        out.dead.sort(key=lambda letter: (letter.source_partition, letter.source_offset))
        batch_ranges = tuple(out.ranges)
        partials = {q: PartialBatch(batch_ranges, tuple(members)) for q, members in out.panes.items()}
        return BatchOut(
            out.dead,
            {q: [answer for *_, answer in sorted(rows, key=_sent)] for q, rows in out.routed.items()},
            partials,
            out.seen,
            out.offsets,
            out.through,
            sum(len(members) for members in feedback.values()),
            out.counted,
            out.duplicates,
            out.late,
            out.followups,
            out.answers,
            out.journeys,
            out.answer_themes,
            out.answer_rows,
        )

    def _route(self, partition: int, members: list[RawMessage], clock: Clock, out: _Collected) -> None:
        """One feedback partition's messages of the batch: invalid ones to the dead letters, valid ones to the
        routed partition of their event id (every routed partition gets a message, answers or not: their header
        says how far this partition is routed).  Within a routed partition the answers go in the order of their
        Kafka timestamps, so that of two copies sent one after the other the first is counted."""
        decoded = decode_batch([message.value() for message in members], self.catalog)
        if self.customer_key:  # customer ids become keyed pseudonyms before anything is read from the records
            pseudonymise(self.customer_key, decoded.records)
        for index, why in decoded.failed:  # any bytes at all: a poison message is a dead letter, not a crash
            out.dead.append(self._letter(members[index], "undecodable", why, None))
        valid, rejected = validate_batch(decoded.records, clock)
        for rejection in rejected:
            message = members[decoded.kept[rejection.at]]
            out.dead.append(self._letter(message, rejection.reason, rejection.detail, decoded.schema_ids[rejection.at]))
        for q in range(self.routed_partitions):
            out.routed.setdefault(q, [])
        ats = counted_at(rejected, valid, valid, len(decoded.kept))
        # each record's comment as kept (redacted, or none); the answer's bytes are not passed on (records.Routed),
        # so nothing is encoded again
        valid, _ = with_comments(valid, [decoded.records[at] for at in ats], self.matcher, self.comments)
        for event, at in zip(valid, ats, strict=True):
            message = members[decoded.kept[at]]
            record = decoded.records[at]
            context = followup_context(record) if self.followups and is_detractor(event) else None
            if context is None and self.comments == "redacted" and quotable(event):  # for the effort alert
                context = {"comment": record.get("comment")}
            answer = Routed(event, b"", context, store_fields(record) if self.answers else None)
            row = (message.timestamp()[1], partition, message.offset() or 0, answer)
            out.routed[routed_partition(event.event_id, self.routed_partitions)].append(row)
        out.offsets[(self.topic, partition)] = (members[-1].offset() or 0) + 1

    def _count(self, partition: int, members: list[RawMessage], clock: Clock, out: _Collected) -> None:
        """One routed partition's messages of the batch, in offset order, into ``out``: their answers were
        validated when routed (the clock's checks included); here they are de-duplicated and counted."""
        answers: list[Routed] = []
        through = out.through.setdefault(partition, {})
        for message in members:
            try:
                answers.extend(decode_routed(message.value() or b""))
            except (ValueError, TypeError, IndexError) as exc:  # our own format, never seen broken: no wedge
                out.dead.append(self._letter(message, "undecodable", f"routed message: {exc}", None))
                continue
            for p, ms in decode_routed_through(message.headers()).items():
                through[p] = max(through.get(p, ms), ms)
        valid = [answer.event for answer in answers]
        dedup = self.dedup.get(partition)
        if dedup is None:
            dedup = self.dedup[partition] = Deduplicator()
        unique, dropped = dedup.first_seen(valid)
        out.duplicates += dropped
        out.counted += len(unique)
        quotes: dict[tuple[int, str, str], Quotes] = {}
        if unique:
            out.seen[partition] = dedup.buckets(unique)
            counted = _counted(unique, answers)
            quotes = aggregate_quotes(
                ((a.event, a.context.get("comment")) for a in counted if a.context is not None), self.pane_ms
            )
            if self.followups:
                contexts = [answer.context for answer in counted if answer.context is not None]
                if contexts:
                    out.followups.extend(select_followups(unique, contexts))
            if self.answers:
                rows = [answer.raw for answer in counted if answer.store is not None]  # their routed rows
                if rows:
                    out.answer_rows[partition] = rows
                if len(rows) < len(counted):  # routed by a worker before 2026-12-06: its answers' bytes
                    raws = [answer for answer in counted if answer.store is None]
                    out.answers[partition] = [answer.raw for answer in raws]
                    out.answer_themes[partition] = [answer.event.themes for answer in raws]
            if self.journey_partitions:
                self._journeys(unique, out.journeys)
        self._panes(partition, unique, clock, out, quotes)
        end = (members[-1].offset() or 0) + 1
        out.ranges.append(SourceRange(ROUTED_SOURCE + partition, self.starts.get(partition, FROM_THE_START), end))
        out.offsets[(members[-1].topic() or "", partition)] = end

    def _panes(
        self,
        partition: int,
        unique: list[Feedback],
        clock: Clock,
        out: _Collected,
        quotes: dict[tuple[int, str, str], Quotes],
    ) -> None:
        """The partition's counted events as pane partials (with the quotes of their high-effort CES answers),
        each sent to its segment's partials partition."""
        pane_ms = self.pane_ms
        deltas: dict[tuple[str, str, int], dict[str, State]] = defaultdict(dict)
        for (pane, channel, journey, metric), state in aggregate_panes(unique, pane_ms).items():
            deltas[(channel, journey, pane)][metric] = state
            if pane + pane_ms <= clock.now_ms:
                out.late += state.n
        drivers = aggregate_drivers(unique, pane_ms)
        mentions: dict[tuple[str, str, int], dict[str, Mentions]] = defaultdict(dict)
        for (pane, channel, journey, metric), counts in aggregate_mentions(unique, pane_ms).items():
            mentions[(channel, journey, pane)][metric] = counts
        for (channel, journey, pane), states in deltas.items():
            found = drivers.get((pane, channel, journey), {})
            said = quotes.get((pane, channel, journey), ())
            out.panes[self.owner(channel, journey)].append(
                PanePartial(
                    channel,
                    journey,
                    pane,
                    ROUTED_SOURCE + partition,
                    states,
                    found,
                    said,
                    mentions.get((channel, journey, pane), {}),
                )  # fmt: skip
            )

    def _journeys(self, unique: list[Feedback], out: dict[int, list[bytes]]) -> None:
        """The counted answers that carry a customer id, as rows for the journey agent, by customer's partition."""
        partitions = self.journey_partitions
        for event in unique:
            customer = event.customer_id
            if customer and not customer.isspace():
                row = json_row(answer_row(event, customer))
                out.setdefault(journey_partition(customer, partitions), []).append(row)

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        """The batch's transaction committed: its ends are where the next batches of the routed partitions start."""
        self.starts.update({partition: end for (topic, partition), end in offsets.items() if topic != self.topic})

    def _letter(self, message: RawMessage, reason: str, detail: str, schema_id: int | None) -> DeadLetterOut:
        partition = message.partition() or 0
        offset = message.offset() or 0
        headers = dead_letter_headers(reason, detail, message.topic() or self.topic, partition, offset, schema_id)
        return DeadLetterOut(partition, offset, reason, message.key(), message.value(), headers)


def _sent(row: tuple[int, int, int, Routed]) -> tuple[int, int, int]:
    """The order routed answers go in: Kafka timestamp (when it was sent), then partition and offset."""
    return row[0], row[1], row[2]


def _counted(unique: Sequence[Feedback], answers: Sequence[Routed]) -> list[Routed]:
    """The routed answers that were counted, in order (first_seen returns the same Feedback objects)."""
    routed = {id(answer.event): answer for answer in answers}
    return [routed[id(event)] for event in unique]


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
