"""The ``journeys`` agent: the counted answers with a customer id in, journey instances out (docs/contract.md
section 8).

The hot path forwards each counted answer that carries a customer id, in its batch's transaction, to
``<app>-journey-answers``, partitioned by customer (streams.core.journeys.journey_partition): a customer's answers meet
in one partition, so in one agent.  Its table (``state`` of the ``journeys`` process) holds per (customer,
journey) the answers of the open and recent instances, in (occurred_at, event_id) order, and what it last emitted
of each instance (streams.core.journey_state.GroupState).

For each batch of one partition: add the answers (an answer read a second time changes nothing), recompute the
instances of every group the batch names, write each group's table value, with the revisions it is about to send
marked not sent and the batch's last offset, wait until Kafka has the states, then send each new or changed
instance to ``cx.journeys`` (a replaced one once more, ``deleted``) and wait until Kafka has them.  The order
matters: a state written after its revisions can be lost in a kill while the revisions are not, and the batch,
read again in other batches, may never produce them again (an instance whose start a late answer moved stayed
in Kafka, never deleted: found by the kill -9 test).  A state's revisions count as sent once a later batch of the
partition completed or the group's committed offset passed the state's offset; until then the batch is read again
(after a kill, a rebalance, or a failure: read back as a skip) and sends them again (versions are at least the
processing clock: the newest version wins).  What a look at due groups writes before it sends has no batch to be
read again: it is due at once, and the next look sends it again (streams.core.journey_state.GroupState.due).

Faust's consumer can skip messages after a restart or a rebalance (faust-streaming#216, #312, #606; see
streams.worker.repair), so the agent checks the offsets it is given: between two messages of the hot path's
transactions there is at most one commit marker, so a jump of more than one offset past the last message handled
(or past the group's committed offset, for the first batch of an assignment) is read back with the PartitionReader
(committed records only) before the batch; a partition whose end stays more than a marker past the last message
handled while no batch comes is read back at the tick (``TAIL_CHECK_SECONDS``), TAIL_READ_BYTES a check, once the
consumer has handed that end over and is not busy with other partitions (:meth:`JourneyAgent._check_tail`).
Adding an answer twice changes nothing, so a read-back of something handled already costs time, never a count.

The journey KPI gauges (``cxpulse_journeys_closed{journey,counter}``, ``cxpulse_journey_kpi{journey,kpi}``) count
the closed instances whose end lies in the last 24 h: each group's state keeps (end, counters) of its closed
instances, summed over the partitions this process holds at each look at the due groups (the same pass over the
table).

Its tick: groups whose ``due`` time passed (an open instance whose end + G the clock passed: closed, emitted once
more; an instance whose end + G is older than the retention: no answer a worker accepts can reach it, dropped
from the state) are looked at, at most every ``close_every_ms`` (1% of G, between 1 s and 60 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import MutableMapping, Sequence
from typing import Any

import orjson

from schemas.codec import JOURNEY_INSTANCE_RAW, encode_journey_row
from streams.agents.base import AgentContext, TableAgent, by_size
from streams.agents.health import FailureStreak
from streams.agents.local_tables import index_entry
from streams.agents.record import Record
from streams.agents.stores import DiskStore
from streams.core.journey_kpis import JourneyCounts
from streams.core.journey_state import OUTSIDE_A_BATCH, GroupState, closed_counts, first_answer
from streams.core.journeys import (
    Answer,
    Group,
    Revision,
    add_answers,
    decode_answer_rows,
    instance_row,
    instances_of,
    revise,
)
from streams.worker.repair import CommittedOffsets, TopicReader, filled, read_chunks
from streams.worker.tail_watch import (
    TAIL_CHECK_SECONDS,
    TailWatch,
)

LOG = logging.getLogger("cxpulse.journeys")
# a tail check reads back at most this much (the rest at the next check, the lock given back in between): the
# journeys process runs niced, and a 16 MB read-back (~130,000 answers) held its lock, and so every batch, for
# minutes on two saturated cores (a tick of 221 s in `make bench-state --answers 3000000`)
TAIL_READ_BYTES = 2 * 1024 * 1024
APPLY_BYTES = 512 * 1024  # journey-answers messages followed at a time (at least one)
# groups revised or stored between two turns of the event loop: the journeys process runs niced, and on two
# saturated cores a 512 KB run took seconds of wall time (timer drifts of 8-9 s, near the 10 s session timeout)
YIELD_GROUPS = 256
KPI_WINDOW_MS = 24 * 3_600_000  # the KPI gauges count the closed instances whose end lies this far back
FOREVER_MS = 2**62  # the end of an index range that has none
DUE_CHUNK = 1000  # due groups looked at between two turns of the event loop


# what a batch or a look writes of one group: its table value (None: the group is deleted) and its revisions, each as
# the values of the record JourneyInstance (streams.core.journeys.instance_row)
Update = tuple[dict[str, Any] | None, list[tuple[Any, ...]]]


def group_key(partition: int, group: Group) -> str:
    """The table key of a group: ``<partition>|<journey>|<customer_id>`` (the customer id last: it may hold any
    character, a label never holds a ``|``)."""
    return f"{partition}|{group[1]}|{group[0]}"


def journey_index(raw_key: bytes, raw_value: bytes) -> list[tuple[bytes, bytes]]:
    """A group state's index entries on disk: ``t:`` by its due time (when it has one), ``k:`` by the end of each
    closed instance it keeps, valued with the instance's counters (the 24-hour KPI gauges).  Read from the value's
    tail: ``to_table`` writes ``t`` and ``k`` last, after the answers (a JSON string never holds ``,"t":``
    unescaped)."""
    at = raw_value.rfind(b',"t":')
    try:
        tail = orjson.loads(b"{" + raw_value[at + 1 :]) if at >= 0 else orjson.loads(raw_value)
    except orjson.JSONDecodeError:
        tail = orjson.loads(raw_value)
    entries = []
    due = int(tail.get("t") or 0)
    if due > 0:
        entries.append((index_entry(b"t:", due, raw_key), b""))
    for end, *counts in tail.get("k") or ():
        entries.append((index_entry(b"k:", int(end), raw_key), orjson.dumps(counts)))
    return entries


def group_of_key(key: str) -> Group:
    _, journey, customer = key.split("|", 2)
    return customer, journey


class JourneyAgent(TableAgent):
    """The journeys agent (see the module docstring); ``table`` is its table (any mapping)."""

    name = "journeys"
    batch_size = 200
    within_seconds = 1.0  # a batch is a transaction and a revision of its groups: fewer at low rates (issue 35)
    transactional_input = True
    exports_lag = False

    def __init__(
        self,
        context: AgentContext,
        topic: str,
        table: MutableMapping[str, Any],
        reader: TopicReader,
        committed: CommittedOffsets,
    ) -> None:
        """``reader`` reads the journey answers back; ``committed`` is the journeys group's committed offsets on
        them: streams/processes/agents.py builds both."""
        super().__init__(context)
        settings = context.settings
        self.topic = topic
        self.table = table
        self.gap_ms = settings.journey_gap_seconds * 1000
        self.retention_ms = settings.retention_seconds * 1000
        self.close_every_ms = min(60_000, max(1000, self.gap_ms // 100))
        self.looked_at = 0  # epoch ms of the last look at the due groups
        self.schema_id = context.catalog.id_for(JOURNEY_INSTANCE_RAW)
        self.out_topic = settings.journeys_topic
        self.lock = asyncio.Lock()  # a batch and the look at due groups do not interleave at their awaits
        self.reader = reader
        self.committed = committed
        self.next: dict[int, int] = {}  # partition -> the offset after the last message handled
        self.confirmed: dict[int, int] = {}  # partition -> a state written at a lower offset has its revisions sent
        self.handled_at: dict[int, float] = {}  # partition -> monotonic time of its last batch
        self.tails = TailWatch()
        self.offset_reads = FailureStreak(LOG, "journeys: reading the group's committed offsets")

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        async with self.lock:
            expected = self.next.get(partition)
            if expected is None:
                expected = await self._committed(partition)
                self.confirmed[partition] = max(self.confirmed.get(partition, 0), expected or 0)
            first = records[0].offset
            if expected is not None and first - expected > 1:  # more than a commit marker: skipped messages
                await self._read_back(partition, expected, first)
            await self._apply(partition, records)
            self.next[partition] = max(self.next.get(partition, 0), records[-1].offset + 1)
            self.handled_at[partition] = time.monotonic()
            self.tails.moving(partition)

    async def _committed(self, partition: int) -> int | None:
        """The group's committed offset of the partition (where Faust starts an assignment), None when unknown."""
        try:
            offsets = await asyncio.to_thread(self.committed.read)
        except Exception as exc:  # noqa: BLE001 - the broker may be away a moment: no check this batch
            self.offset_reads.failed(exc)
            return None
        self.offset_reads.succeeded()
        found = offsets.get(partition)
        return None if found is None else int(found)

    async def _read_back(self, partition: int, start: int, end: int) -> None:
        """Follow the committed messages of [start, end) that the consumer skipped, read and followed a chunk
        (repair.READ_BACK_BYTES) at a time; ``next`` moves with each chunk."""
        async for missing in read_chunks(self.reader, partition, start, end):
            await self._follow_read_back(partition, missing)

    async def _follow_read_back(self, partition: int, missing: Sequence[Record]) -> None:
        self.metrics.repaired.inc(len(missing))
        LOG.warning(
            "read back %d journey-answers messages of %s[%d] offsets %d..%d that the consumer skipped",
            len(missing),
            self.topic,
            partition,
            missing[0].offset,
            missing[-1].offset,
        )
        await self._apply(partition, missing)
        self.next[partition] = max(self.next.get(partition, 0), missing[-1].offset + 1)

    async def _apply(self, partition: int, records: Sequence[Record]) -> None:
        """Follow the answers of the records, APPLY_BYTES of them at a time (each run's states written and its
        revisions sent before the next): a tail check's read-back of a backlog held the event loop 40 s in
        ``make bench-state --answers 3000000``, past the session timeout."""
        for run in by_size(records, APPLY_BYTES):
            await self._apply_run(partition, run)

    async def _apply_run(self, partition: int, records: Sequence[Record]) -> None:
        by_group: dict[Group, list[Answer]] = defaultdict(list)
        for record in records:
            try:
                rows = decode_answer_rows(record.value)
            except ValueError as exc:  # not written by a hot path: nothing to follow
                self.metrics.batch_errors.labels(self.topic).inc()
                LOG.error("%s[%d] offset %d skipped: %s", self.topic, partition, record.offset, exc)
                continue
            for group, answer in rows:
                by_group[group].append(answer)
        now_ms = int(time.time() * 1000)
        last = records[-1].offset
        updates: dict[str, Update] = {}
        for n, (group, answers) in enumerate(by_group.items(), 1):
            key = group_key(partition, group)
            value = self._read(key)
            if not value and len(answers) == 1:  # a new group's one answer: most groups of a live stream
                written, row = first_answer(group, answers[0], self.gap_ms, self.retention_ms, now_ms, last)
                updates[key] = (written, [row])
            else:
                state = self._state_of(partition, value)
                add_answers(state.answers, sorted(answers))
                updates[key] = self._update(*self._revise(group, state, now_ms, last))
            if n % YIELD_GROUPS == 0:
                await asyncio.sleep(0)  # under the lock: no other batch or look at due groups comes in between
        await self._send(updates)
        self.confirmed[partition] = max(self.confirmed.get(partition, 0), last + 1)
        self.metrics.records.labels(self.topic).inc(len(records))
        # a Faust batch of a backlog is 200 messages of ~1,700 answers: 2-5 minutes on saturated cores at nice 10,
        # and the stall watch killed the process after 300 s without a finished batch (bench-state, 3,000,000)
        self.metrics.health.progress.advanced()

    def _load(self, partition: int, key: str) -> GroupState:
        """A group's state; what it says was sent is known sent when the batch that wrote it is confirmed."""
        return self._state_of(partition, self._read(key))

    def _state_of(self, partition: int, value: Any) -> GroupState:
        """:meth:`_load` of a table value read."""
        state = GroupState.from_table(value)
        return state.confirmed() if state.offset < self.confirmed.get(partition, 0) else state

    def _read(self, key: str) -> Any:
        """A group's table value (None: none), from the table's store when it has one (a Faust table's ``data``):
        Faust's ``get`` reads a key twice (``in``, then ``[]``) through its wrappers and raises and catches a
        KeyError for a group it does not have, which is most groups of a batch: 7% of the journeys process's
        samples in py-spy (backlog shape, 2026-12-06).  Its ``on_key_get`` only counts the read for Faust's
        monitor, which cxpulse never reads."""
        store = getattr(self.table, "data", None)
        return (self.table if store is None else store).get(key)

    def _revise(self, group: Group, state: GroupState, now_ms: int, offset: int) -> tuple[GroupState, list[Revision]]:
        instances = instances_of(group, state.answers, self.gap_ms, now_ms)
        revisions, emitted = revise(group, state.emitted, instances, now_ms)
        return GroupState(state.answers, emitted, offset, closed_counts(instances)), revisions

    def _value(self, state: GroupState) -> dict[str, Any] | None:
        """A state's table value; None for a state with nothing left (deleted)."""
        return state.to_table(self.gap_ms, self.retention_ms) if state.answers or state.emitted else None

    def _update(self, state: GroupState, revisions: list[Revision]) -> Update:
        return self._value(state), [instance_row(revision) for revision in revisions]

    async def _send(self, updates: dict[str, Update]) -> None:
        """Write the states (what they are about to send marked not sent yet), then send the revisions: a kill in
        between leaves states that send them again when their batch is read again.  A kill after the
        revisions' flush and before the batch is committed sends some a second time, with a higher version."""
        await self._store({key: value for key, (value, _) in updates.items()})
        await self.results.flush()  # the states are in Kafka before anything they say they send
        kinds = {"open": 0, "closed": 0, "deleted": 0}
        messages: list[tuple[bytes | None, bytes | None]] = []
        for _, rows in updates.values():
            for row in rows:
                messages.append(self._revision(row))
                kinds["deleted" if row[20] else "closed" if row[18] else "open"] += 1
        self.results.produce_many(self.out_topic, messages)  # each to the partition of its key
        await self.results.flush()
        for kind, sent in kinds.items():  # counted once a batch: labels() takes a lock and looks the child up
            if sent:
                self.metrics.journey_revisions.labels(kind).inc(sent)

    def _revision(self, row: tuple[Any, ...]) -> tuple[bytes, bytes]:
        """One revision's message, value and key (``row``: the values of the record, in INSTANCE_FIELDS' order:
        customer_id, journey, start, ..., closed at 18, deleted at 20)."""
        return encode_journey_row(row, self.schema_id), f"{row[0]}|{row[1]}|{row[2]}".encode()

    async def _store(self, values: dict[str, dict[str, Any] | None]) -> None:
        """Write the groups' table values (None: the group is deleted), YIELD_GROUPS at a time; through the table's
        ``set_many`` when it has one (streams.agents.faust_compat.KeyPartitionedTable: what ``table[key] = value``
        does, without Faust's wrappers per key)."""
        set_many = getattr(self.table, "set_many", None)
        items = list(values.items())
        for at in range(0, len(items), YIELD_GROUPS):
            if at:
                await asyncio.sleep(0)
            chunk = items[at : at + YIELD_GROUPS]
            written = [(key, value) for key, value in chunk if value is not None]
            if set_many is not None:
                set_many(written)
            else:
                for key, kept in written:
                    self.table[key] = kept
            for key, value in chunk:
                if value is None and key in self.table:
                    del self.table[key]

    async def tick(self, now_ms: int) -> None:
        if self.tails.due(self.consumption.settled()):
            await self.follow_tails()
        if now_ms - self.looked_at < self.close_every_ms or not self.consumption.settled():
            return
        self.looked_at = now_ms
        await self.look_at_due(now_ms)
        self.metrics.state_keys.labels("journeys").set(len(self.table))

    async def follow_tails(self) -> None:
        """Read back what a quiet partition's end says was skipped at its tail (no next message reveals it)."""
        assigned = self.consumption.assigned(self.topic)
        for partition in [p for p in self.next if p not in assigned]:
            del self.next[partition]  # revoked: the next owner's committed offset says where to check from
        now = time.monotonic()
        busy = now - max(self.handled_at.values(), default=0.0) < TAIL_CHECK_SECONDS
        for partition in sorted(assigned):
            expected, end = self.next.get(partition), self.consumption.end(self.topic, partition)
            quiet = now - self.handled_at.get(partition, 0.0) >= TAIL_CHECK_SECONDS
            if expected is None or end is None or end - expected <= 1 or not quiet:
                continue  # (``end`` is the consumer's, as last fetched: stale for a partition it has paused)
            try:
                await self._check_tail(partition, busy)
            except Exception:
                self.metrics.batch_errors.labels(self.topic).inc()
                LOG.exception("tail check of %s[%d] failed; tried again in %s s", self.topic, partition,
                              TAIL_CHECK_SECONDS)  # fmt: skip

    async def _check_tail(self, partition: int, busy: bool) -> None:
        """Read a quiet partition back from the last message handled to its stable end (TAIL_READ_BYTES of it a
        check), unless the consumer is
        still on its way there (it has not handed the end over, up to TAIL_WAIT_CHECKS) or is busy with other
        partitions (up to TAIL_DEFER_CHECKS): a backlog's partition waits its turn for minutes, and a read-back of
        its lag is read twice (and once held the event loop 40 s)."""
        _, stable = await self.reader.watermarks(partition)  # every transaction below it is decided
        if self.tails.put_off(partition, stable, self.consumption.delivered(self.topic, partition), busy):
            return
        async with self.lock:
            start = self.next.get(partition)  # a batch may have come while the lock was awaited
            if start is None:
                return  # revoked meanwhile
            if stable > start:
                missing = await self.reader.read(partition, start, stable, TAIL_READ_BYTES)
                if missing:
                    await self._follow_read_back(partition, missing)
                if filled(missing, TAIL_READ_BYTES):
                    return  # the rest at the next check
            self.next[partition] = max(self.next.get(partition, 0), stable)  # nothing committed is left below it

    async def _due_from_index(
        self, store: DiskStore, assigned: set[int], now_ms: int, since: int
    ) -> tuple[list[str], dict[str, JourneyCounts]]:
        """The due groups and the closed instances' counters since ``since`` of a table on disk, from its index
        (:func:`journey_index`): only the due entries and the last 24 h of closed instances are read."""
        looked = {key for key, _, _ in await store.index_range(assigned, b"t:", 1, now_ms + 1)}
        totals: dict[str, JourneyCounts] = defaultdict(JourneyCounts)
        for key, counts, _ in await store.index_range(assigned, b"k:", since, FOREVER_MS):
            if key not in looked:  # counted once looked at
                totals[key.split("|", 2)[1]] += JourneyCounts(*orjson.loads(counts))
        return sorted(looked), totals

    def _due_by_scan(self, assigned: set[int], now_ms: int, since: int) -> tuple[list[str], dict[str, JourneyCounts]]:
        """:meth:`_due_from_index` of a table in memory (a test's dict): the whole table read."""
        due: list[str] = []
        totals: dict[str, JourneyCounts] = defaultdict(JourneyCounts)
        for key, value in list(self.table.items()):
            if not value or int(key.split("|", 1)[0]) not in assigned:
                continue
            if 0 < value.get("t", 0) <= now_ms:
                due.append(key)  # counted once looked at
                continue
            for end, *counts in value.get("k", ()):
                if end >= since:
                    totals[key.split("|", 2)[1]] += JourneyCounts(*counts)
        return due, totals

    async def look_at_due(self, now_ms: int) -> None:
        """Close the instances whose end + G the clock passed, drop those older than the retention, confirm or
        send again what a state says it sent (its first write marks the revisions not sent, a second, after
        their flush, marks them sent).

        The agent's lock is held for a chunk of DUE_CHUNK groups at a time, batches come in between (every state
        of a chunk is confirmed before the lock is given back): the first look after a backlog of days has
        millions of instances to close, and holding the lock for all of it kept every batch out for minutes (the
        stall watch killed the process in `make bench-state --answers 3000000`).  A batch in between that revises
        a group of the list is no harm (the look loads the group's state when it gets to it); the KPI totals are
        then this look's, made good by the next."""
        async with self.lock:
            assigned = self.consumption.assigned(self.topic)
            since = now_ms - KPI_WINDOW_MS
            store = getattr(self.table, "data", None)
            if isinstance(store, DiskStore):
                due, totals = await self._due_from_index(store, assigned, now_ms, since)
            else:
                due, totals = self._due_by_scan(assigned, now_ms, since)
        started = time.monotonic()
        cutoff = now_ms - self.retention_ms
        for at in range(0, len(due), DUE_CHUNK):
            async with self.lock:
                await self._look_at_chunk(due[at : at + DUE_CHUNK], now_ms, since, cutoff, totals)
        if due:
            LOG.info("looked at %d due journey groups in %.1f s", len(due), time.monotonic() - started)
        self.metrics.set_journey_kpis(totals)

    async def _look_at_chunk(
        self, due: list[str], now_ms: int, since: int, cutoff: int, totals: dict[str, JourneyCounts]
    ) -> None:
        """Look at one chunk of due groups (under the agent's lock); the closed instances' counters go to
        ``totals``."""
        updates: dict[str, tuple[GroupState, list[Revision]]] = {}
        held = self.consumption.assigned(self.topic)
        for key in due:
            partition = int(key.split("|", 1)[0])
            if partition not in held:
                continue  # revoked since the list was made: the next owner looks at it
            state, revisions = self._revise(group_of_key(key), self._load(partition, key), now_ms, OUTSIDE_A_BATCH)
            forgotten = state.forget_before(cutoff, self.gap_ms)
            if forgotten:
                self.metrics.expired.labels("journey-instances").inc(forgotten)
                state = state.without_closed_before(cutoff, self.gap_ms)
            updates[key] = (state, revisions)
            for end, counts in state.closed:
                if end >= since:
                    totals[key.split("|", 2)[1]] += counts
        sending = {key: self._update(state, revisions) for key, (state, revisions) in updates.items() if revisions}
        if sending:
            await self._send(sending)
        await self._store(
            {key: self._value(state.confirmed()._replace(offset=-1)) for key, (state, _) in updates.items()}
        )
