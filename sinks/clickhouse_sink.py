"""The ClickHouse sink: ``cxpulse worker``'s ``sink`` process, or ``cxpulse sink`` alone (production scale-out),
in its own consumer group ``<app>-sink``.  Three inputs, one table each (:class:`Feed`):

- ``cx.metrics.panes``: every pane result revision into ``cxpulse.pane_results`` (ReplacingMergeTree on
  ``version``: a re-delivered or revised result replaces);
- ``<app>-answers``: the counted answers of every hot-path batch (rows as the hot path validated them, produced in
  the batch's transaction, so each counted answer is there exactly once) into ``cxpulse.answers``;
- ``cx.journeys`` (with ``CXPULSE_JOURNEYS``): every journey instance revision into ``cxpulse.journey_instances``
  (ReplacingMergeTree on ``version`` with ``deleted``: the newest revision of an instance wins).

A librdkafka (confluent-kafka) loop, as the hot path's, not Faust: the sink takes every revision of every pane
group and journey instance, and Faust's per-message path (a task and a future per message) was most of its CPU
(issue 35's profile: 165 / 467 us an answer, live / backlog).  Each feed's batch is what came within
``BATCH_WITHIN_SECONDS`` (or until its ``batch_size`` rows); of the revisions of one key in a batch only the last
is kept and written (the newest: versions grow in offset order, and the table would keep only it); each table gets one
column-oriented insert with a deterministic ``insert_deduplication_token`` (topic, and per partition the offsets
taken), so a retry writes nothing twice; the offsets are committed once every insert went in.  When ClickHouse
fails the inserts are retried with backoff (0.5 s doubling to 30 s) while the consumer is paused and keeps its
place in the group: nothing is dropped, nothing is buffered without bound; a stop meanwhile leaves the batch to be
read again.  Errors and lag are metrics (``cxpulse_sink_errors_total{sink="clickhouse"}``,
``cxpulse_sink_lag_messages{sink="clickhouse",partition}``, ``cxpulse_clickhouse_up``).

The embedded store can be opened by one process only, so this process also answers read-only SQL for
``cxpulse report`` / ``cxpulse drivers`` on a loopback port, written to ``<data dir>/clickhouse-endpoint.json``,
and takes ``cxpulse backfill``'s rows beside it (``/v1/backfill``: history's rows of the three tables, each pane
result and journey instance with version 0, so a backfill can never replace a row the stream wrote); that
endpoint runs on an event loop of its own thread, sharing the process's one client with the loop (a lock).

Built into a process by streams/processes/sink.py (``cxpulse worker``'s ``sink`` process, or ``cxpulse sink``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge

from sinks import clickhouse as store
from streams.agents.health import CallGuard
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record, headers_of
from streams.config import Settings
from streams.errors import CxPulseError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

LOG = logging.getLogger("cxpulse.sink")
SINK = "clickhouse"
PANES_BATCH = 5000  # results per insert at most
ANSWERS_BATCH = 60  # answer messages (a hot-path batch of one source partition each) per insert at most
# ... or this many bytes of them (~40,000 answers): an answers message holds up to 4 MB of one count batch, and a
# burst's whole answers were a dozen messages, never a full batch of 60 (make bench's live shape, 2026-12-07)
ANSWERS_BATCH_BYTES = 16 * 1024 * 1024
JOURNEYS_BATCH = 5000  # journey instance revisions per insert at most
# A table's batch waits at most this long to fill (a full batch goes at once).  Every insert is a part ClickHouse
# merges in the background: at a small contact center's rate one insert a second per table kept the embedded store's
# merges busy (issue 35's quiet run: the sink 27% of a core, 12% with 5 s and the hot path's fetch window).  A row
# is in the store this much later at worst: answers unless 60 hot-path batches (or 16 MB) come sooner, pane results
# and journey instances unless 5,000 distinct keys do (a batch holds each key's newest revision).  The tail of a
# burst does not wait it out: after a full batch, a feed's next batch goes as soon as the sink has taken all Kafka
# has of the feed (ClickHouseSink.due).
BATCH_WITHIN_SECONDS = 5.0
CONSUME_MESSAGES = 10_000  # messages per consume() call at most
CONSUME_SECONDS = 0.5  # a consume() call waits at most this long
HEALTH_SECONDS = 2.0  # lag, readiness and a look at a store that is away, this often
BACKOFF_MAX_SECONDS = 30.0
COMMIT_SECONDS = 30.0  # a commit that has not returned by then ends the process (restarted: the batch is read again)
MAX_QUERY_ROWS = 1_000_000
MAX_BACKFILL_BYTES = 64 * 1024 * 1024  # one request of `cxpulse backfill` (streams.backfill.CHUNK_ROWS rows)
COLUMNS = {
    "pane_results": store.PANE_COLUMNS,
    "answers": store.ANSWER_COLUMNS,
    "journey_instances": store.JOURNEY_COLUMNS,
}


class Store:
    """The process's one client (the embedded engine allows one per process anyway), used by the sink's loop and
    the endpoint's thread in turn."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Client | None = None
        self.lock = threading.Lock()

    def _open(self) -> Client:
        if self.client is None:
            client = store.connect(self.settings)
            applied = store.migrate(client)
            if applied:
                LOG.warning("ClickHouse schema: applied %s", ", ".join(applied))
            self.client = client
        return self.client

    def run_now(self, work: Callable[[Client], Any]) -> Any:
        with self.lock:
            return work(self._open())

    async def run(self, work: Callable[[Client], Any]) -> Any:
        """:meth:`run_now` off the calling event loop (the endpoint's)."""
        return await asyncio.to_thread(self.run_now, work)

    def reset(self) -> None:
        """Forget a client that failed (an HTTP server may come back; a new client is made then)."""
        if self.client is not None and store.chdb_path(self.settings.clickhouse_url) is None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None


class SinkMetrics:
    def __init__(self, base: WorkerMetrics) -> None:
        registry = base.registry
        self.base = base
        self.rows = Counter("cxpulse_sink_rows", "Rows written to ClickHouse, by table", ["table"], registry=registry)
        self.up = Gauge(
            "cxpulse_clickhouse_up", "1 while the last ClickHouse insert or check succeeded", registry=registry
        )
        self.store_up = True
        base.sink_errors.labels(SINK)  # a series from the start, at 0

    def set_up(self, up: bool) -> None:
        self.store_up = up
        self.up.set(1 if up else 0)


class Feed(NamedTuple):
    """One input of the sink: a topic into a table.  A record (value and headers) is read by ``columns_of`` as
    columns of the table's rows (a message of many rows: the answers) or by ``row_of`` as one row (a revision: a
    batch's rows become columns once, at the end; a row made into columns of one value each, then added to the
    batch's columns value by value, cost more than reading it); ``revisions``: its messages are keyed revisions,
    of which a batch writes only the last per key; ``transactional``: it is written in Kafka transactions (a
    commit marker ends the last one: no lag)."""

    topic: str
    table: str
    columns_of: Callable[[Record], list[list[Any]]] | None
    batch_size: int
    revisions: bool = False
    transactional: bool = False
    batch_bytes: int | None = None  # a batch of this many bytes of values is full too (None: rows alone)
    row_of: Callable[[Record], Sequence[Any]] | None = None  # instead of columns_of


class Write(NamedTuple):
    """One insert of a batch: a feed's rows (column by column), its token, and the offsets it covers."""

    feed: Feed
    data: list[list[Any]]
    dedup: str
    offsets: dict[int, int]  # partition -> the offset after the last taken


def record_of(message: Message) -> Record:
    timestamp = message.timestamp()[1]
    return Record(
        message.partition() or 0,
        message.offset() or 0,
        message.value() or b"",
        max(0, timestamp),
        headers_of(message.headers()),
        message.key(),
    )


class Taken:
    """What a batch took of one partition: the offset range and how many messages (the insert's token), and the
    records to write; of a revisions feed's keyed records only the newest of each key is kept, as it is taken (a
    backlog's pane results revise each group many times over: kept whole, a batch held and decoded them all)."""

    def __init__(self, first: int, revisions: bool) -> None:
        self.first = self.last = first
        self.count = 0
        self.bytes = 0  # of the values taken (of a revisions feed: of every revision, the replaced too)
        self.revisions = revisions
        self.records: list[Record] = []  # not revisions: every record, in offset order
        self.newest: dict[bytes | int, Record] = {}  # revisions: key (an unkeyed record: its offset) -> record

    def add(self, record: Record) -> None:
        self.last = record.offset
        self.count += 1
        self.bytes += len(record.value)
        if not self.revisions:
            self.records.append(record)
            return
        key: bytes | int = record.offset if record.key is None else record.key
        self.newest.pop(key, None)  # re-inserted: the dict stays in the order of each key's newest offset
        self.newest[key] = record

    def __len__(self) -> int:
        """The rows it will write (at most)."""
        return len(self.newest) if self.revisions else len(self.records)

    def rows(self) -> Iterable[Record]:
        """The records to write, in offset order."""
        return self.newest.values() if self.revisions else self.records


def prepare(feed: Feed, taken: dict[int, Taken], unreadable: Callable[[Record, Exception], None]) -> Write:
    """A feed's insert from what a batch took of it, partition by partition in offset order."""
    width = len(COLUMNS[feed.table])
    data: list[list[Any]] = [[] for _ in range(width)]
    rows: list[Sequence[Any]] = []  # a feed of rows: its rows, made columns at the end
    ranges = []
    offsets = {}
    for partition in sorted(taken):
        part = taken[partition]
        ranges.append((partition, part.first, part.last, part.count))
        offsets[partition] = part.last + 1
        for record in part.rows():
            try:
                if feed.row_of is not None:
                    row = feed.row_of(record)
                    if len(row) != width:
                        raise ValueError(f"a row of {len(row)} values, not {width}")
                    rows.append(row)
                    continue
                if feed.columns_of is None:
                    raise TypeError(f"the feed of {feed.topic} reads neither rows nor columns")
                block = feed.columns_of(record)
            except Exception as exc:  # noqa: BLE001 - a record that is not what the topic carries: counted
                unreadable(record, exc)
                continue
            for column, values in zip(data, block, strict=True):
                column.extend(values)
    if rows:
        data = [list(column) for column in zip(*rows, strict=True)]
    return Write(feed, data, store.token(feed.topic, *ranges), offsets)


class ClickHouseSink:
    """The sink's loop (see the module docstring): take, write when due, commit; lag and health between."""

    def __init__(
        self,
        feeds: Sequence[Feed],
        db: Store,
        counters: SinkMetrics,
        consumer: Consumer,
        guard: CallGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feeds = {feed.topic: feed for feed in feeds}
        self.db = db
        self.counters = counters
        self.metrics = counters.base
        self.consumer = consumer
        self.guard = guard or CallGuard("sink")
        self.clock = clock
        self.stopping = False
        self.taken: dict[str, dict[int, Taken]] = {feed.topic: {} for feed in feeds}
        # per feed: when its batch's first message was taken.  Each feed's batch fills and goes on its own: tied
        # to the others, the pane results went with every full batch of answers, a few revisions of each group
        # apiece (the backlog shape's sink: 7.5-26.5 CPU s from run to run, 2026-12-06)
        self.since: dict[str, float] = {}
        self.bursting: set[str] = set()  # the feeds whose last batch went full: a burst's tail goes once caught up
        self.applied: dict[tuple[str, int], int] = {}  # the next offset to write, per partition held
        self.changed = False  # partitions were revoked while a batch waited: prepare it again
        self.next_health = 0.0
        self.lag_series: set[int] = set()  # the partitions cxpulse_sink_lag_messages has a series for

    # --- the consumer's partitions ---------------------------------------------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        LOG.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing")

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """What was taken of a revoked partition is dropped (not committed: its next owner reads it again)."""
        dropped = False
        for tp in partitions:
            if self.taken.get(tp.topic, {}).pop(tp.partition, None) is not None:
                self.changed = dropped = True
                if not self.taken[tp.topic]:
                    self.since.pop(tp.topic, None)
            self.applied.pop((tp.topic, tp.partition), None)
            self.metrics.health.progress.forget(f"{SINK}:{tp.topic}[{tp.partition}]")
        if dropped and not self.since:
            self.metrics.health.progress.done()  # nothing in flight any more: not a stall

    def subscribe(self) -> None:
        self.consumer.subscribe(
            list(self.feeds), on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_revoke
        )

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.subscribe()
        self.guard.start()
        self.look_at_store()  # before the first batch (see look_at_store)
        try:
            while not self.stopping:
                self.step(self.consumer.consume(CONSUME_MESSAGES, CONSUME_SECONDS))
            self.write()  # what the last batch took, unless ClickHouse is away (then it is read again)
        finally:
            with self.guard("closing the consumer", COMMIT_SECONDS):
                self.consumer.close()

    def step(self, messages: Iterable[Message]) -> None:
        """Take what one consume() returned; write the batches that are due."""
        self.take(messages)
        due = self.due()
        if due:
            full = {topic for topic in due if self._full(topic)}
            if self.write(due):
                self.bursting = (self.bursting - set(due)) | full
        self.health()

    def take(self, messages: Iterable[Message]) -> int:
        """Add the messages to the batch; how many were added."""
        added = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if not error.retriable() and error.fatal():
                    raise KafkaException(error)
                LOG.debug("consumer: %s", error.str())  # transient (the outage log says when Kafka is away)
                continue
            topic = message.topic() or ""
            if topic not in self.taken:
                continue
            record = record_of(message)
            part = self.taken[topic].get(record.partition)
            if part is None:
                part = self.taken[topic][record.partition] = Taken(record.offset, self.feeds[topic].revisions)
            part.add(record)
            self.applied.setdefault((topic, record.partition), record.offset)  # where the lag counts from
            added += 1
            if topic not in self.since:
                self.since[topic] = self.clock()
                self.metrics.health.progress.begin()
        return added

    def due(self) -> list[str]:
        """The feeds whose batch is due: it waited BATCH_WITHIN_SECONDS, or is full (:meth:`_full`), or is the tail
        of a burst: the feed's last batch went full and it has taken all Kafka has (:meth:`_caught_up`).  Without
        the last, the rest of a burst (a backfill, a restart's catch-up, make bench's shapes) waited up to
        BATCH_WITHIN_SECONDS in the sink after the pipeline had made it.  At a steady rate it adds at most one
        insert per full batch; at a quiet rate no batch goes full, and nothing changes."""
        now = self.clock()
        return [
            topic
            for topic, since in self.since.items()
            if now - since >= BATCH_WITHIN_SECONDS
            or self._full(topic)
            or (topic in self.bursting and self._caught_up(topic))
        ]

    def _caught_up(self, topic: str) -> bool:
        """Every partition of the feed this sink holds has been taken to the end librdkafka last fetched (a
        transactional feed's end: past its commit marker), by the consumer's cached watermarks (no request).  A
        partition with nothing taken since it was assigned counts as caught up: the guess costs one insert at
        most (the feed is bursting no more after it)."""
        marker = 1 if self.feeds[topic].transactional else 0
        taken = self.taken[topic]
        for tp in self.consumer.assignment():
            if tp.topic != topic:
                continue
            part = taken.get(tp.partition)
            following = part.last + 1 if part is not None else self.applied.get((topic, tp.partition))
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if following is not None and high - marker > following:
                return False
        return True

    def _full(self, topic: str) -> bool:
        """A feed's batch holds its batch_size rows or, when it has one, its batch_bytes."""
        feed, parts = self.feeds[topic], self.taken[topic].values()
        if sum(len(part) for part in parts) >= feed.batch_size:
            return True
        return feed.batch_bytes is not None and sum(part.bytes for part in parts) >= feed.batch_bytes

    def _unreadable(self, feed: Feed) -> Callable[[Record, Exception], None]:
        def unreadable(record: Record, exc: Exception) -> None:
            self.metrics.sink_errors.labels(SINK).inc()
            LOG.error("%s[%d]@%d cannot be read (%s); skipped", feed.topic, record.partition, record.offset, exc)

        return unreadable

    def prepare(self, topics: Sequence[str]) -> list[Write]:
        return [
            prepare(self.feeds[topic], self.taken[topic], self._unreadable(self.feeds[topic]))
            for topic in topics
            if self.taken[topic]
        ]

    def write(self, topics: Sequence[str] | None = None) -> bool:
        """Insert what the batches of ``topics`` (default: every feed) took, table by table, retrying while
        ClickHouse fails (the consumer paused meanwhile, its place in the group kept), then commit their offsets.
        False when a stop came first (nothing committed: the batches are read again)."""
        topics = list(self.feeds) if topics is None else list(topics)
        writes = self.prepare(topics)
        self.changed = False
        backoff = 0.5
        done: set[str] = set()  # the tables whose insert went in (a retry sends only the others)
        while writes:
            try:
                for write in writes:
                    if write.feed.table not in done and write.data[0]:
                        self._insert(write)
                    done.add(write.feed.table)
                break
            except Exception as exc:  # noqa: BLE001 - any failure: retried, counted, logged
                self.metrics.sink_errors.labels(SINK).inc()
                self.counters.set_up(False)
                self.db.reset()
                where = ", ".join(f"{w.feed.topic}{sorted(w.offsets)}" for w in writes)
                LOG.warning(
                    "ClickHouse insert into %s failed (%s); retrying in %.1f s, %s paused",
                    write.feed.table, exc, backoff, where,
                )  # fmt: skip
                if not self.wait(backoff):
                    return False
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)
                if self.changed:  # partitions went meanwhile: the batch is what is still held
                    writes, self.changed, done = self.prepare(topics), False, set()
        self.commit(writes)
        for topic in topics:
            self.taken[topic].clear()
            self.since.pop(topic, None)
        if self.since:
            self.metrics.health.progress.advanced()  # another feed's batch is still filling
        else:
            self.metrics.health.progress.done()
        return True

    def _insert(self, write: Write) -> None:
        table = write.feed.table
        self.db.run_now(lambda client: store.insert_columns(client, table, write.data, COLUMNS[table], write.dedup))
        self.counters.rows.labels(table).inc(len(write.data[0]))
        self.counters.set_up(True)

    def wait(self, seconds: float) -> bool:
        """Wait with the consumer paused (its group membership and rebalances served); False on a stop."""
        held = self.consumer.assignment()
        self.consumer.pause(held)
        try:
            until = self.clock() + seconds
            while not self.stopping:
                left = until - self.clock()
                if left <= 0:  # never a timeout of 0 or less: librdkafka waits forever on a negative one
                    break
                # a partition assigned meanwhile is not paused: what it brings joins the batch
                if self.take(self.consumer.consume(CONSUME_MESSAGES, min(CONSUME_SECONDS, left))):
                    self.changed = True
                self.health()
            return not self.stopping
        finally:
            with contextlib.suppress(KafkaException):
                self.consumer.resume([tp for tp in held if tp in set(self.consumer.assignment())])

    def commit(self, writes: Sequence[Write]) -> None:
        offsets = [
            TopicPartition(write.feed.topic, partition, offset)
            for write in writes
            for partition, offset in write.offsets.items()
        ]
        if not offsets:
            return
        try:
            with self.guard("committing the sink's offsets", COMMIT_SECONDS):
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # a rebalance meanwhile: the next owner reads those rows again (no harm)
            LOG.warning("the sink's offsets were not committed (%s); those rows are written again", exc)
            return
        for tp in offsets:
            self.applied[(tp.topic, tp.partition)] = tp.offset

    # --- lag and health ------------------------------------------------------------------------------------

    def health(self) -> None:
        now = self.clock()
        if now < self.next_health:
            return
        self.next_health = now + HEALTH_SECONDS
        self.measure_lag()
        if not self.counters.store_up:  # waiting for the store is back-pressure, not a wedged process
            self.metrics.health.progress.done()
            self.look_at_store()
        self.metrics.process_ready.labels("sink").set(1.0 if self.metrics.health.ready(True) else 0.0)

    def look_at_store(self) -> None:
        """Open the store and ask it ``SELECT 1`` while no client is open: at the start of :meth:`run`, and every
        HEALTH_SECONDS while it is away.  At the start, so that the embedded engine's start and the migrations run
        while the input is being assigned, not in the first insert (in the busiest seconds of a burst: chdb's start
        and four migrations at 12 s into make bench's live shape, 2026-12-07), and so that
        ``cxpulse_clickhouse_up`` says whether the store answers before any row came (it read 0 on an idle worker
        until the first insert)."""
        if self.db.client is None:
            try:
                self.db.run_now(lambda client: client.command("SELECT 1"))
                self.counters.set_up(True)
            except Exception as exc:  # noqa: BLE001 - reported, retried at the next look
                self.counters.set_up(False)  # looked at again every HEALTH_SECONDS (health)
                LOG.debug("ClickHouse not available yet: %s", exc)  # the writes log their failures

    def measure_lag(self) -> None:
        """Per partition held: the end librdkafka last fetched minus the next offset to write (on a transactional
        input the commit marker after the last transaction is no lag), into the process's progress and
        ``cxpulse_sink_lag_messages{sink="clickhouse",partition}`` (summed over the topics)."""
        progress = self.metrics.health.progress
        by_partition: dict[int, int] = {}
        for tp in self.consumer.assignment():
            done = self.applied.get((tp.topic, tp.partition))  # None: nothing taken since it was assigned
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if done is None or high < 0:
                continue
            feed = self.feeds[tp.topic]
            lag = max(0, high - done - (1 if feed.transactional else 0))
            progress.observe(f"{SINK}:{tp.topic}[{tp.partition}]", done, lag)
            by_partition[tp.partition] = by_partition.get(tp.partition, 0) + lag
        for partition, lag in by_partition.items():
            self.metrics.sink_lag.labels(SINK, str(partition)).set(lag)
        for partition in self.lag_series - set(by_partition):  # no longer held here: its series goes
            with contextlib.suppress(KeyError):
                self.metrics.sink_lag.remove(SINK, str(partition))
        self.lag_series = set(by_partition)


async def serve_queries(settings: Settings, db: Store) -> None:
    """Read-only SQL over HTTP on loopback, for `cxpulse report` while this process holds the store, and
    `cxpulse backfill`'s rows (version 0 only); a random bearer token in the endpoint file (mode 0600) is
    required."""
    token = secrets.token_urlsafe(32)
    server = web.Application(client_max_size=MAX_BACKFILL_BYTES)
    server.router.add_post("/v1/query", lambda request: answer_query(request, db, token))
    server.router.add_post("/v1/backfill", lambda request: take_backfill(request, db, token))
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]  # the port the kernel chose
    store.write_endpoint(settings.data_dir, f"http://127.0.0.1:{port}/v1/query", token)
    LOG.info("read-only SQL on http://127.0.0.1:%d/v1/query", port)


def serve_queries_in_thread(settings: Settings, db: Store, bound: float = 30.0) -> threading.Thread:
    """:func:`serve_queries` on an event loop of its own thread (daemon: it ends with the process); returns once
    the endpoint file is written (CxPulseError after ``bound`` seconds, with the reason when it failed)."""
    started = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        try:
            await serve_queries(settings, db)
        except BaseException as exc:
            failure.append(exc)
            raise
        finally:
            started.set()
        await asyncio.Event().wait()  # until the process ends

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="store-endpoint", daemon=True)
    thread.start()
    if not started.wait(bound) or failure:
        raise CxPulseError(f"the store's query endpoint did not start: {failure[0] if failure else 'no answer'}")
    return thread


def read_only(sql: str) -> bool:
    """A single SELECT (or WITH ... SELECT) statement."""
    text = sql.strip().rstrip(";").strip()
    head = text.split(None, 1)[0].upper() if text else ""
    return head in ("SELECT", "WITH") and ";" not in text


def _run_read_only(client: Client, sql: str, parameters: dict[str, Any]) -> Any:
    """The query under ClickHouse's readonly=1, once its own parser showed it reads cxpulse tables only."""
    ast = client.query(f"EXPLAIN AST {sql}", parameters=parameters, settings=store.READ_ONLY_SETTINGS)
    refused = store.refused_tables([str(row[0]) for row in ast.result_rows])
    if refused:
        raise PermissionError(f"only the {store.DATABASE} tables are answered here, not {', '.join(refused)}")
    return client.query(sql, parameters=parameters, settings=store.READ_ONLY_SETTINGS)


def _authorised(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


UNAUTHORISED = {"error": "a bearer token is required (see clickhouse-endpoint.json)"}


def backfill_rows(table: Any, rows: Any) -> list[list[Any]]:
    """The rows of a backfill request for ``table``, checked (ValueError naming what is wrong): a table of
    COLUMNS, each row with its columns, every pane result and journey instance with version 0 (the stream's are
    at least 1: streams/backfill.py); the drivers' tuples as ClickHouse takes them."""
    if table not in COLUMNS:
        raise ValueError(f"table must be one of {', '.join(COLUMNS)}, not {table!r}")
    columns = COLUMNS[table]
    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == len(columns) for row in rows):
        raise ValueError(f"rows must be a list of rows of {len(columns)} values ({', '.join(columns)})")
    if "version" in columns:
        at = columns.index("version")
        if any(row[at] != 0 for row in rows):
            raise ValueError("a backfill writes version 0 only (a higher version is the stream's)")
    if table == "pane_results":
        drivers = columns.index("drivers")
        for row in rows:
            row[drivers] = [tuple(driver) for driver in row[drivers]]
    return rows


async def take_backfill(request: web.Request, db: Store, token: str) -> web.Response:
    """POST {"table": ..., "rows": [[...], ...], "token": DEDUP} with ``Authorization: Bearer <token>``: one insert
    of history's rows with that deduplication token (the same request again writes nothing) -> {"rows": N}."""
    if not _authorised(request, token):
        return web.json_response(UNAUTHORISED, status=401)
    try:
        body = await request.json()
        table, dedup = str(body["table"]), str(body["token"])
        rows = backfill_rows(table, body["rows"])
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError) else ""
        return web.json_response(
            {"error": reason or 'expected JSON {"table": ..., "rows": [[...]], "token": ...}'}, status=400
        )
    columns = COLUMNS[table]
    try:
        await db.run(lambda client: store.insert(client, table, rows, columns, dedup))
    except Exception as exc:  # noqa: BLE001 - the caller gets the reason
        return web.json_response({"error": str(exc).splitlines()[0][:500]}, status=422)
    LOG.info("backfill: %d rows into %s", len(rows), table)
    return web.json_response({"rows": len(rows)})


async def answer_query(request: web.Request, db: Store, token: str) -> web.Response:
    """POST {"sql": "SELECT ...", "parameters": {...}} with ``Authorization: Bearer <token>`` ->
    {"columns": [...], "rows": [[...], ...]}."""
    if not _authorised(request, token):
        return web.json_response(UNAUTHORISED, status=401)
    try:
        body = await request.json()
        sql, parameters = str(body["sql"]), dict(body.get("parameters") or {})
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected JSON {"sql": "SELECT ...", "parameters": {}}'}, status=400)
    if not read_only(sql):
        return web.json_response({"error": "only a single SELECT statement is answered here"}, status=400)
    try:
        result = await db.run(lambda client: _run_read_only(client, sql, parameters))
    except PermissionError as exc:
        return web.json_response({"error": str(exc)}, status=403)
    except Exception as exc:  # noqa: BLE001 - the caller gets the reason
        status = 403 if "READONLY" in str(exc) else 422
        return web.json_response({"error": str(exc).splitlines()[0][:500]}, status=status)
    rows = [list(row) for row in result.result_rows[:MAX_QUERY_ROWS]]
    return web.json_response(
        {"columns": list(result.column_names), "rows": rows}, dumps=lambda o: json.dumps(o, default=str)
    )
