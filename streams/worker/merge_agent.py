"""The ``merge`` agent: the hot path's partials in, the pane table written, WindowResults out.

For each batch of one partials partition (under that partition's lock): decode the partial messages, read back
any that Faust's consumer skipped (a range that does not follow its predecessor: streams.worker.repair), absorb
them with streams.worker.merge.MergeStep, write every touched pane once, emit its results and flush (results and
table changelogs go through the process's one ResultsProducer), and only then advance the chain of ranges.

Its tick, every second:

- **tail check** (every ``TAIL_CHECK_SECONDS``): a skip at the end of a partition has no next message to reveal it,
  so each chain is compared with the offsets the hot path has committed; a chain that stayed short twice is read
  back, put off while merge is busy and has not reached the partition's end (streams.worker.tail_watch);
- **expiry** (every 1% of the retention, at most hourly, at least once a pane): panes that ended before
  now - retention are dropped (a tombstone each), so state and recovery stay bounded;
- the ``panes`` state gauge.

:meth:`MergeAgent.watermark` is the event time up to which every answer has been merged and its results emitted,
from the hot path's ``through`` headers; the effort detector closes panes by it (sinks/effort_detector.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from confluent_kafka import Consumer, TopicPartition

from schemas.codec import WINDOW_RESULT, WINDOW_RESULT_RAW, encode_confluent
from streams.agents.base import AgentContext, TableAgent, by_size
from streams.agents.health import FailureStreak
from streams.agents.keys import PaneKey, ResultKey, SourceKey, pane_bucket, segment_partition, table_partition
from streams.agents.local_tables import index_entry
from streams.agents.record import Record
from streams.agents.stores import keys_before
from streams.config import Settings
from streams.core.windows import WindowResult, result_record
from streams.errors import CxPulseError
from streams.kafka import consumer
from streams.worker.merge import MergeStep
from streams.worker.records import (
    ROUTED_SOURCE,
    Through,
    decode_partials,
    decode_through,
    lowest_through,
    position_from_table,
)
from streams.worker.repair import READ_BACK_BYTES, CommittedOffsets, TopicReader, filled, read_chunks
from streams.worker.tail_watch import (
    TAIL_CHECK_SECONDS,
    TRAILER,
    TailWatch,
)

LOG = logging.getLogger("cxpulse.merge")
BATCH_MESSAGES = 50  # partial messages per merge batch (each is a whole hot-path batch for this partition)
BATCH_WITHIN_SECONDS = 0.05  # a merge batch waits at most this long to fill
# partial messages merged, emitted and flushed at a time (at least one): the work of a merge runs on the event loop
# without a pause until its flush, and 50 messages of a backlog's hot-path batches (10,000 answers each, up to 8 MB)
# held it 9-25 s in `make bench-state --answers 3000000`: past the 10 s session timeout, so the group rebalanced
# and Faust's recovery read the changelogs again, until the worker's stall watch killed the process
MERGE_BATCH_BYTES = 2 * 1024 * 1024
ADMIN_TIMEOUT_SECONDS = 10.0


class GroupOffsets:
    """The offsets a consumer group has committed on one topic (partition -> next offset): the hot path's group on
    the routed topic (where its count step, which writes the partials, reads), a Faust process's on its input.

    Read with a Consumer's ``committed()`` (an OffsetFetch that asks for stable offsets, as the consumer is
    read_committed: KIP-447), never subscribed, so it never joins the group.  Not with the AdminClient's
    ``list_consumer_group_offsets``: when a broker restarts while such a request is out, librdkafka fails an
    assertion and aborts the process (``rd_kafka_enq_once_del_source_return: Assertion `eonce->refcnt > 0'``,
    confluentinc/librdkafka#3663, #4605); seen here as a merge killed by SIGSEGV or SIGABRT the moment Kafka came
    back from an outage, in the fault suite.

    After a failure the next read uses a new client: after a broker restart a client can keep asking a group
    coordinator it cached from before and time out forever (seen in the rolling-restart test; the consumer side
    of the same librdkafka behaviour is confluentinc/librdkafka#5511).  The old one is closed here, in the
    caller's thread (a client whose last reference goes in a librdkafka thread can end the process:
    confluentinc/confluent-kafka-python#1761, #2131)."""

    def __init__(self, settings: Settings, group: str, topic: str) -> None:
        self.kafka = settings.kafka
        self.group = group
        self.topic = topic
        self.client: Consumer | None = None
        self.partitions: list[TopicPartition] = []

    def read(self) -> dict[int, int]:
        if self.client is None:
            self.client = consumer(self.kafka, self.group, **{"isolation.level": "read_committed"})
            self.partitions = []
        try:
            if not self.partitions:
                metadata = self.client.list_topics(self.topic, timeout=ADMIN_TIMEOUT_SECONDS)
                found = metadata.topics.get(self.topic)
                if found is None or found.error is not None or not found.partitions:
                    raise CxPulseError(f"topic {self.topic}: no partitions known ({found and found.error})")
                self.partitions = [TopicPartition(self.topic, p) for p in sorted(found.partitions)]
            out: dict[int, int] = {}
            for tp in self.client.committed(self.partitions, timeout=ADMIN_TIMEOUT_SECONDS):
                if tp.error is not None:
                    raise CxPulseError(f"committed offset of {self.topic}[{tp.partition}]: {tp.error}")
                if tp.offset >= 0:
                    out[tp.partition] = tp.offset
            return out
        except Exception:  # retried at the next check, with a new client
            self.close()
            raise

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()


def pane_index(raw_key: bytes, raw_value: bytes) -> list[tuple[bytes, bytes]]:
    """The panes' index entry on disk: ``t:`` by pane start (the retention's expiry reads the expired ones)."""
    return [(index_entry(b"t:", pane_bucket(raw_key), raw_key), b"")]


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        LOG.error("tail check failed", exc_info=task.exception())


HotpathOffsets = GroupOffsets  # the tail check's source: the hot path's group on the feedback topic


def uncovered(start: int, end: int, covered: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The first stretch of offsets [start, end) that none of the ``covered`` stretches holds; None when they hold
    it all (or it is empty)."""
    at = start
    for low, high in sorted(covered):
        if low > at:
            break
        at = max(at, high)
    if at >= end:
        return None
    following = [low for low, _ in covered if at < low < end]
    return at, min(following, default=end)


class GroupWatch:
    """Whether the merge group as a whole moves while the hot path commits: the progress signal that does not
    depend on Faust's consumer.  A Faust consumer whose session expired during a broker outage can rejoin and
    then never fetch again, holding its partitions or none (faust-streaming#523, #175; seen here once in a
    25-second outage under load): its own lag, measured from what it fetched, then says nothing waits.  Here the
    hot path's committed offsets are the work and the merge group's committed offsets are the progress; work
    that came after the group last moved is waiting, and the process's stall bound (CXPULSE_STALL_SECONDS, then
    the supervisor's restart after CXPULSE_STALL_RESTART_SECONDS) applies to it."""

    def __init__(self) -> None:
        self.work: dict[int, int] | None = None
        self.done: dict[int, int] | None = None
        self.work_at = 0.0  # monotonic time the hot path's offsets last moved
        self.done_at = 0.0  # monotonic time the merge group's offsets last moved
        self.moves = 0  # how often the merge group's offsets moved (a position that only grows)

    def look(self, work: dict[int, int], done: dict[int, int], now: float) -> bool:
        """One look at both groups' committed offsets; True while work waits for the merge group."""
        if self.work is not None and work != self.work:
            self.work_at = now
        if self.done is not None and done != self.done:
            self.done_at = now
            self.moves += 1
        self.work, self.done = work, done
        return self.work_at > self.done_at


class ResultReader(Protocol):
    """An agent of the merge process that merge hands its results over to as it emits them (the KPI view, the
    effort detector), instead of each reading them back from the results topic."""

    name: str

    def take(self, partition: int, results: Sequence[Mapping[str, Any]], stamps: Sequence[int]) -> None:
        """One results partition's results of a batch (WindowResult records, in order) and their Kafka
        timestamps; table writes go through the process's producer, flushed with the batch."""


class MergeAgent(TableAgent):
    """The merge agent (see the module docstring).  ``panes`` and ``positions`` are its tables (any mapping)."""

    name = "merge"
    batch_size = BATCH_MESSAGES
    within_seconds = BATCH_WITHIN_SECONDS
    transactional_input = True
    exports_lag = False  # merge is no sink: its lag shows in the process's progress only

    def __init__(
        self,
        context: AgentContext,
        tables: tuple[MutableMapping[str, Any], MutableMapping[str, Any]],
        reader: TopicReader,
        results_partitions: int,
        hotpath: CommittedOffsets,
        own: CommittedOffsets,
    ) -> None:
        """``reader`` reads the partials back; ``hotpath`` is the hot path's committed offsets on the routed topic
        (the work), ``own`` the merge group's on the partials (the progress): streams/processes/agents.py builds
        them."""
        super().__init__(context)
        settings = context.settings
        self.topic = reader.topic
        self.panes, self.positions = tables
        self.reader = reader
        self.hotpath = hotpath
        self.own = own
        self.group_watch = GroupWatch()
        self.schema_id = context.catalog.id_for(WINDOW_RESULT_RAW)
        self.results_partitions = results_partitions
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.expired_before = -(2**62)  # panes ending at or before this were dropped by the expiry
        self.seen: dict[int, int] = {}  # partials partition -> the highest offset merged
        self.active_at = 0.0  # monotonic time of the last merged batch
        # (routed partition, feedback partition) -> Kafka timestamp counted through (records.Through)
        self.through: dict[tuple[int, int], int] = {}
        self.routed_partitions = 0
        self.behind: dict[int, dict[int, int]] = {}  # partials partition -> {source: end} short at the last check
        self.tails = TailWatch()
        self.tail_check: asyncio.Task[None] | None = None  # the tail check under way, if any
        self.swept_at = 0  # epoch ms of the last expiry
        retention_ms = settings.retention_seconds * 1000
        self.sweep_every_ms = max(self.pane_ms, min(retention_ms // 100, 3_600_000))
        self.tail_reads = FailureStreak(LOG, "tail check: reading the hot path's committed offsets")
        self.readers: list[ResultReader] = []  # handed every result as it is emitted (see emit)

    def watermark(self) -> int | None:
        """Event time up to which every answer has been merged and its results emitted: the lowest ``through`` the
        hot paths reported, over every feedback partition and routed partition (records.lowest_through; None
        before the first report)."""
        return lowest_through(Through(self.routed_partitions, self.through))

    # --- batches ------------------------------------------------------------------------------------------

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        """Apply the partial messages the consumer delivered for one partials partition: merge is active."""
        await self.merge(partition, records)
        self.active_at = time.monotonic()

    async def merge(self, partition: int, records: Sequence[Record]) -> None:
        """Apply the partial messages of one partials partition, MERGE_BATCH_BYTES of them at a time in offset
        order, each run under the partition's lock, emitted and flushed.  The tail check's read-backs come here
        directly (they are no sign that the consumer is busy with the partitions): a read-back of a backlog's
        tail can hold hundreds of megabytes."""
        for run in by_size(sorted(records), MERGE_BATCH_BYTES):
            await self._merge_run(partition, run)

    async def _merge_run(self, partition: int, records: Sequence[Record]) -> None:
        async with self.locks[partition]:
            started = time.perf_counter()
            step = MergeStep(partition, self.pane_ms, self.panes, self.positions, ignore_before=self.expired_before)
            await self._apply(step, partition, records)
            self.seen[partition] = max(self.seen.get(partition, -1), max(r.offset for r in records))
            self.metrics.chain_breaks.inc(step.breaks)
            await self.emit(step.finish(), max(r.timestamp_ms for r in records))
            step.advance()
            for record in records:  # emitted and flushed: the effort detector may rely on what they say
                found = decode_through(record.headers)
                if found is not None:
                    self.routed_partitions = found.partitions
                    for key, ms in found.at.items():
                        self.through[key] = max(self.through.get(key, 0), ms)
            self.metrics.records.labels(self.topic).inc(len(records))
            self.metrics.batch_seconds.labels("merge").observe(time.perf_counter() - started)
            self.metrics.health.progress.advanced()  # a run of a batch merged and flushed (a batch may be 400 MB)

    async def _apply(self, step: MergeStep, partition: int, records: Sequence[Record]) -> None:
        """Absorb the records in offset order; a record whose ranges do not follow the chain first gets the
        messages it reveals were skipped, read back READ_BACK_BYTES at a time, each chunk absorbed before the next
        is read.  A stretch is read back once per run (``covered``): a record that still does not link up after its
        stretch was read is counted as it is (a message Kafka no longer has), and a record that reveals an earlier
        gap of another source (a source whose first message was skipped) gets that stretch read too.  The event
        loop is given a turn after each message: a consumer's skip in a backlog was 47-72 messages of up to 8 MB
        each."""
        pending = deque(sorted(records))
        covered: list[tuple[int, int]] = []  # partials offsets [start, end) read back in this run
        while pending:
            record = pending.popleft()
            try:
                batch = decode_partials(record.value)
            except (ValueError, KeyError, TypeError) as exc:  # not written by a hot path: nothing to count
                self.metrics.chain_breaks.inc()
                LOG.error(
                    "partials[%d] offset %d is not a partial message (%s); skipped", partition, record.offset, exc
                )
                continue
            start = step.read_back_from(batch)
            gap = uncovered(start, record.offset, covered) if start is not None else None
            if gap is None:
                step.apply(batch, record.offset)
                await asyncio.sleep(0)
                continue
            missing = await self.reader.read(partition, gap[0], gap[1], READ_BACK_BYTES)
            upto = missing[-1].offset + 1 if missing and filled(missing, READ_BACK_BYTES) else gap[1]
            covered.append((gap[0], upto))
            waiting = {r.offset for r in pending}
            missing = [m for m in missing if m.offset not in waiting]
            self.log_read_back(partition, gap[0], upto, missing)
            pending.appendleft(record)
            pending.extendleft(reversed(missing))

    def log_read_back(self, partition: int, start: int, end: int, missing: Sequence[Record]) -> None:
        self.metrics.repaired.inc(len(missing))
        LOG.warning(
            "read back %d partial messages of %s[%d] offsets %d..%d that the consumer skipped",
            len(missing),
            self.topic,
            partition,
            start,
            end,
        )

    async def emit(self, results: Sequence[WindowResult], newest_ms: int = 0) -> None:
        """Send WindowResults to the results topic, hand them to the ``readers`` (their table writes go through
        the same producer), then wait until Kafka has them all, and every table changelog write of the batch with
        them.  Their Kafka timestamp is the newest input event's (``newest_ms``, carried on the partials), so a
        sink can tell event-to-sink latency."""
        topic = self.settings.results_topic
        stamp = max(0, newest_ms)
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for result in results:
            key = ResultKey(result.channel, result.journey, result.metric, result.window_start).encode()
            record = result_record(result)
            value = encode_confluent(record, WINDOW_RESULT, self.schema_id)
            partition = segment_partition(result.channel, result.journey, self.results_partitions)
            self.results.produce(topic, value, key, partition=partition, timestamp=stamp)
            if self.readers:
                by_partition[partition].append(record)
        for partition, records in by_partition.items():
            for reader in self.readers:
                try:
                    reader.take(partition, records, [stamp] * len(records))
                except Exception:  # as a reader's failed batch on the results topic: counted, logged, merge goes on
                    self.metrics.sink_errors.labels(reader.name).inc()
                    LOG.exception("%s: taking the results of %s[%d] failed", reader.name, topic, partition)
        await self.results.flush()
        self.metrics.results.inc(len(results))

    # --- ticks --------------------------------------------------------------------------------------------

    async def tick(self, now_ms: int) -> None:
        if self.tails.due(self.tail_check is None or self.tail_check.done()):
            # Beside the tick, not in it: reading the groups' offsets waits up to ADMIN_TIMEOUT_SECONDS twice while
            # Kafka is away, and a tick that long made Faust's timer warn "merge-tick is overlapping" every 10 s
            # of an outage (the outage itself is logged once when it starts and once when it ends).
            self.tail_check = asyncio.ensure_future(self.follow_tails())
            self.tail_check.add_done_callback(_log_failure)
        if now_ms - self.swept_at >= self.sweep_every_ms:
            await self.expire(now_ms)
        self.metrics.state_keys.labels("panes").set(len(self.panes))

    async def follow_tails(self) -> None:
        """Read back what the hot path committed but merge never saw at the end of a partition; whatever Faust's
        state, tell the process's progress whether the merge group keeps up with the hot path (GroupWatch)."""
        try:
            committed = await asyncio.to_thread(self.hotpath.read)
            merged = await asyncio.to_thread(self.own.read)
        except Exception as exc:  # noqa: BLE001 - the broker may be away a moment
            self.tail_reads.failed(exc)
            return
        self.tail_reads.succeeded()
        waiting = self.group_watch.look(committed, merged, time.monotonic())
        self.metrics.health.progress.observe("merge group", self.group_watch.moves, int(waiting))
        if not self.consumption.settled():
            return
        for partition in sorted(self.consumption.assigned(self.topic)):
            short = self._short(partition, committed)
            previous, self.behind[partition] = self.behind.get(partition), short
            if not short or short != previous:
                self.tails.moving(partition)
                continue  # caught up, or still moving: the agent is on it
            if await self._still_on(partition):
                continue
            await self._read_back_tail(partition, short)

    def _short(self, partition: int, committed: dict[int, int]) -> dict[int, int]:
        """The sources (routed partitions, as records.ROUTED_SOURCE + q) whose chain in ``partition`` ends before
        what the hot path committed on them."""
        short = {}
        for routed, end in committed.items():
            source = ROUTED_SOURCE + routed
            position = position_from_table(self.positions.get(SourceKey(partition, source).encode()))
            if position is None or position.end < end:
                short[source] = position.end if position is not None else -1
        return short

    async def _still_on(self, partition: int) -> bool:
        """A merge that is busy and has not reached the partition's end yet will get there itself: put off a few
        checks at most, so a skipped stretch at the end of a partition is read back even then."""
        try:
            _, end = await self.reader.watermarks(partition)
        except Exception:  # noqa: BLE001 - the read-back will say what is wrong
            return False
        behind_end = end - self.seen.get(partition, -1) > TRAILER
        busy = behind_end and time.monotonic() - self.active_at < TAIL_CHECK_SECONDS
        return self.tails.put_off(partition, end, self.consumption.delivered(self.topic, partition), busy)

    async def _read_back_tail(self, partition: int, short: dict[int, int]) -> None:
        starts = []
        for source in short:
            position = position_from_table(self.positions.get(SourceKey(partition, source).encode()))
            starts.append(0 if position is None else position.offset + 1)
        try:
            _, stable = await self.reader.watermarks(partition)  # to where it stands now, not chasing its end
            async for missing in read_chunks(self.reader, partition, min(starts), stable, READ_BACK_BYTES):
                self.log_read_back(partition, missing[0].offset, missing[-1].offset + 1, missing)
                await self.merge(partition, missing)
        except Exception:
            self.metrics.batch_errors.labels(self.topic).inc()
            LOG.exception("tail check of %s[%d] failed; retried in %s s", self.topic, partition, TAIL_CHECK_SECONDS)

    async def expire(self, now_ms: int) -> None:
        """Bounded state: drop panes that ended before now - retention (no accepted event can change them); on
        disk, their keys come from the copies' index by pane start, not from a scan of every key."""
        if not self.consumption.settled():
            return
        self.swept_at = now_ms
        cutoff = now_ms - self.settings.retention_seconds * 1000
        before = cutoff - self.pane_ms + 1  # pane + pane_ms <= cutoff
        assigned = self.consumption.assigned(self.topic)
        old: dict[int, list[str]] = defaultdict(list)
        for key in await keys_before(self.panes, assigned, before, lambda key: PaneKey.decode(key).pane):
            old[table_partition(key)].append(key)
        dropped = 0
        for partition, keys in sorted(old.items()):
            async with self.locks[partition]:
                self.expired_before = max(self.expired_before, cutoff)
                for key in keys:
                    if key in self.panes:
                        del self.panes[key]
                        self.metrics.expired.labels("panes").inc()
                        dropped += 1
        if dropped:
            await self.results.flush()  # the tombstones
