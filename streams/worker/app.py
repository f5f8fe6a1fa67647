"""The Faust side of the worker: the ``merge`` agent and its tables, fed by the hot path's partials.

``merge`` consumes ``<app>-partials`` (committed records only, streams.worker.faust_compat), keyed tables:

- ``panes``: per (partials partition, channel, journey, pane), the counters of every source partition
  (streams.worker.merge absorbs each batch's delta once);
- ``positions``: per (partials partition, source partition), how far the chain of source ranges was followed.

Every pane a batch of partials changed is written once and its WindowResults (Avro, Confluent wire format)
go to ``cx.metrics.panes``; the result producer is flushed before the batch is acked, and Faust flushes the
changelog writes before it commits, so a crash repeats work and never loses it.  Timers: a chain that stopped
short of what the hot path committed is read back (streams.worker.repair); panes older than the retention are
dropped (a tombstone each); readiness.

Downstream Faust agents (the ClickHouse writer, the Prometheus view, the effort detector) consume
``cx.metrics.panes`` the same way.

Run by ``cxpulse worker`` as ``python -m streams.worker.app METRICS_PORT LOGLEVEL``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import faust
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from faust.types import EventT, StreamT
from prometheus_client import CollectorRegistry

from schemas.codec import WINDOW_RESULT, WINDOW_RESULT_RAW, SchemaCatalog, encode_confluent
from sinks.alerts import attach_effort_detector
from sinks.followups import attach_followup_webhook
from sinks.prometheus import Snapshot, attach_kpi_view
from streams.config import Settings, load_settings
from streams.errors import EXIT_PERMANENT, ConfigurationError
from streams.kafka import admin_client
from streams.kafka import producer as new_producer
from streams.outage import OutageLog
from streams.topics import internal_topics, partition_count
from streams.windows import WindowResult, result_record
from streams.worker import faust_compat
from streams.worker.health import FailureStreak, ProcessHealth, serve
from streams.worker.hotpath import catalog_for
from streams.worker.ingest import segment_partition
from streams.worker.merge import MergeStep, parse_pane_key, position_key
from streams.worker.metrics import WorkerMetrics
from streams.worker.records import decode_partials, decode_through, position_from_table
from streams.worker.repair import PartitionReader, Record

LOG = logging.getLogger("cxpulse.merge")
PROCESS = "merge"
BATCH_MESSAGES = 50  # partial messages per merge batch (each is a whole hot-path batch for this partition)
BATCH_WITHIN_SECONDS = 0.05  # a merge batch waits at most this long to fill
SESSION_TIMEOUT_SECONDS = 10.0  # a merge process killed with -9 keeps its partitions this long
TAIL_CHECK_SECONDS = 5.0  # how often chains are compared with the hot path's committed offsets
TAIL_DEFER_CHECKS = 6  # a busy merge still behind the partition's end is given this many checks before a read-back
READY_CHECK_SECONDS = 0.5
FLUSH_TIMEOUT_SECONDS = 60.0


class Merge:
    """The merge agent's work for one partials partition at a time: apply, read back, write, emit."""

    def __init__(
        self,
        settings: Settings,
        panes: Any,
        positions: Any,
        results: Producer,
        reader: PartitionReader,
        metrics: WorkerMetrics,
        catalog: SchemaCatalog,
        undelivered: list[int],
        results_partitions: int,
    ) -> None:
        self.settings = settings
        self.panes = panes
        self.positions = positions
        self.results = results
        self.reader = reader
        self.metrics = metrics
        self.pane_ms = settings.pane_seconds * 1000
        self.schema_id = catalog.id_for(WINDOW_RESULT_RAW)
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.undelivered = undelivered  # messages of the results producer that Kafka refused since the last flush
        self.results_partitions = results_partitions
        self.expired_before = -(2**62)  # panes ending at or before this were dropped by the expiry timer
        self.seen: dict[int, int] = {}  # partials partition -> the highest offset merged
        self.active_at = 0.0  # monotonic time of the last merged batch
        self.through: dict[int, int] = {}  # source partition -> Kafka timestamp the hot path processed it through

    def watermark(self) -> int | None:
        """Event time up to which every answer has been merged and its results emitted: the lowest ``through`` of
        the source partitions the hot paths reported (None before the first report).  The effort detector
        evaluates panes up to it, so a backlog (a worker back after downtime) is evaluated in event time."""
        return min(self.through.values()) if self.through else None

    async def partition(self, partition: int, records: Sequence[Record]) -> None:
        """Apply the partial messages of one partials partition (under its lock), then emit and flush."""
        async with self.locks[partition]:
            started = time.perf_counter()
            step = MergeStep(partition, self.pane_ms, self.panes, self.positions, ignore_before=self.expired_before)
            pending = deque(sorted(records))
            read_back_before = -1  # messages below this offset were already read back once
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
                start = step.read_back_from(batch) if record.offset > read_back_before else None
                if start is not None:
                    missing = await self.reader.read(partition, start, record.offset)
                    read_back_before = record.offset
                    missing = [m for m in missing if m.offset not in {r.offset for r in pending}]
                    self._log_read_back(partition, start, record.offset, missing)
                    pending.appendleft(record)
                    pending.extendleft(reversed(missing))
                    continue
                step.apply(batch, record.offset)
            self.seen[partition] = max(self.seen.get(partition, -1), max(r.offset for r in records))
            self.active_at = time.monotonic()
            self.metrics.chain_breaks.inc(step.breaks)
            results = step.finish()
            await self.emit(results, max(r.timestamp_ms for r in records))
            step.advance()
            for record in records:  # emitted and flushed: the effort detector may rely on what they say
                for source, through in (record.through or {}).items():
                    self.through[source] = max(self.through.get(source, 0), through)
            self.metrics.records.labels(self.reader.topic).inc(len(records))
            self.metrics.batch_seconds.labels("merge").observe(time.perf_counter() - started)

    def _log_read_back(self, partition: int, start: int, end: int, missing: Sequence[Record]) -> None:
        self.metrics.repaired.inc(len(missing))
        LOG.warning(
            "read back %d partial messages of %s[%d] offsets %d..%d that the consumer skipped",
            len(missing),
            self.reader.topic,
            partition,
            start,
            end,
        )

    async def emit(self, results: Sequence[WindowResult], newest_ms: int = 0) -> None:
        """Send WindowResults to the results topic, then wait until Kafka has them all, and every table changelog
        write of the batch with them (the tables write through the same producer).  Their Kafka timestamp is the
        newest input event's (``newest_ms``, carried on the partials), so a sink can tell event-to-sink latency."""
        topic = self.settings.results_topic
        for result in results:
            key = f"{result.channel}|{result.journey}|{result.metric}|{result.window_start}".encode()
            value = encode_confluent(result_record(result), WINDOW_RESULT, self.schema_id)
            while True:
                try:
                    partition = segment_partition(result.channel, result.journey, self.results_partitions)
                    self.results.produce(topic, value, key, partition=partition, timestamp=max(0, newest_ms))
                    break
                except BufferError:
                    await asyncio.to_thread(self.results.poll, 0.1)
        left = await asyncio.to_thread(self.results.flush, FLUSH_TIMEOUT_SECONDS)
        failed, self.undelivered[0] = self.undelivered[0], 0
        if left or failed:
            raise RuntimeError(
                f"{left} messages still queued and {failed} failed: results to {topic} or table changelogs"
            )
        self.metrics.results.inc(len(results))


class HotpathOffsets:
    """The offsets the hot path's group has committed on the feedback topic (source partition -> next offset).

    After a failure the next read uses a new AdminClient: after a broker restart a client can keep asking a group
    coordinator it cached from before and time out forever (seen in the rolling-restart test; the consumer side
    of the same librdkafka behaviour is confluentinc/librdkafka#5511)."""

    def __init__(self, settings: Settings) -> None:
        self.kafka = settings.kafka
        self.group = f"{settings.app_id}-hotpath"
        self.topic = settings.feedback_topic
        self.admin: AdminClient | None = None

    def read(self) -> dict[int, int]:
        if self.admin is None:
            self.admin = admin_client(self.kafka)
        try:
            futures = self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(self.group)], require_stable=True, request_timeout=10
            )
            out: dict[int, int] = {}
            for future in futures.values():
                for tp in cast(Any, future.result(timeout=12)).topic_partitions or []:
                    if tp.topic == self.topic and tp.offset >= 0:
                        out[tp.partition] = tp.offset
            return out
        except Exception:
            self.admin = None
            raise


def faust_app(settings: Settings, app_id: str, folder: str, **extra: Any) -> faust.App:
    """A Faust app of the worker (merge, sink): at least once, read_committed, no web server, the broker settings
    the worker's processes share; its local state in ``<data dir>/<folder>``."""
    (settings.data_dir / folder).mkdir(parents=True, exist_ok=True)
    kafka = settings.kafka
    app = faust.App(
        app_id,
        broker=kafka.faust_brokers(),
        broker_credentials=kafka.faust_credentials(),
        store="memory://",
        datadir=str(settings.data_dir / folder),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_SECONDS,
        broker_heartbeat_interval=2.0,
        consumer_max_fetch_size=16 * 1024 * 1024,  # a partial message can be large (a whole hot-path batch)
        # on stop, commit what was acked and go: an unacked batch is delivered again after a restart and absorbed
        # once.  Waiting for it instead can hang a stop (consumer.wait_empty) for minutes.
        stream_wait_empty=False,
        **extra,
    )
    faust_compat.read_committed(app)
    return app


def create_app(settings: Settings, metrics: WorkerMetrics, catalog: SchemaCatalog | None = None) -> faust.App:
    """Build the Faust app with its topic, tables, agent and timers (not started)."""
    catalog = catalog or catalog_for(settings)
    app = faust_app(
        settings, settings.app_id, "worker", table_standby_replicas=0, Table=faust_compat.KeyPartitionedTable
    )
    partials_name = internal_topics(settings).partials
    partials = app.topic(partials_name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
    panes = app.Table("panes", default=None, partitions=settings.partitions, schema=schema)
    positions = app.Table("positions", default=None, partitions=settings.partitions, schema=schema)
    # one librdkafka producer for results and table changelogs, flushed before a batch is acked
    undelivered = [0]

    def delivered(error: KafkaError | None, message: Any) -> None:
        if error is not None:
            undelivered[0] += 1
            LOG.error("a message to %s was not delivered: %s", message.topic(), error.str())

    results = new_producer(settings.kafka, **{"linger.ms": 5, "compression.type": "lz4", "on_delivery": delivered})
    for table in (panes, positions):
        cast(faust_compat.KeyPartitionedTable, table).write_changelog_with(results)
    reader = PartitionReader(settings.kafka, partials_name)
    results_partitions = partition_count(settings.kafka, settings.results_topic)
    merge = Merge(settings, panes, positions, results, reader, metrics, catalog, undelivered, results_partitions)

    def flush() -> None:
        left = results.flush(FLUSH_TIMEOUT_SECONDS)
        failed, undelivered[0] = undelivered[0], 0
        if left or failed:
            raise RuntimeError(f"{left} messages still queued and {failed} failed")

    # the sinks on cx.metrics.panes (results partitioned by segment: a worker holds whole segments)
    results_topic = app.topic(
        settings.results_topic, key_serializer="raw", value_serializer="raw", partitions=results_partitions
    )
    kpis, efforts = Snapshot(), Snapshot()
    metrics.snapshots.extend([kpis, efforts])  # served beside the registry, rendered fast (exposition.py)
    attach_kpi_view(app, settings, results_topic, results_partitions, catalog, flush, kpis, metrics)
    attach_effort_detector(
        app, settings, results_topic, results_partitions, catalog, results, flush, efforts, metrics, merge.watermark
    )
    if settings.followup_webhook_url:
        followups = app.topic(
            settings.followups_topic,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partition_count(settings.kafka, settings.followups_topic),
        )
        attach_followup_webhook(app, settings, followups, metrics)
    for name in ("kpi-view", "effort-panes", "effort-state"):
        cast(faust_compat.KeyPartitionedTable, app.tables[name]).write_changelog_with(results)
    hotpath = HotpathOffsets(settings)

    @app.agent(partials)
    async def merge_partials(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)  # the concrete Stream has noack_take
        # noack_take, not take_events: take_events acks a batch in a `finally`, so a worker stopped in the middle
        # of a batch would commit offsets it never finished (the class of faust-streaming#315).
        async for events in batches.noack_take(BATCH_MESSAGES, within=BATCH_WITHIN_SECONDS):
            by_partition: dict[int, list[Record]] = defaultdict(list)
            for event in cast("list[EventT[Any]]", events):
                message = event.message
                by_partition[message.partition].append(
                    Record(
                        message.partition,
                        message.offset,
                        message.value or b"",
                        int(message.timestamp * 1000),
                        decode_through(message.headers),
                    )
                )
            for partition, records in by_partition.items():
                try:
                    await merge.partition(partition, records)
                except Exception:
                    # acked anyway: the chain did not advance, so the next message (or the tail check) reads
                    # these back.  An unacked batch would wedge Faust (consumer.wait_empty waits for it forever).
                    metrics.batch_errors.labels(partials_name).inc()
                    LOG.exception(
                        "merging %s[%d] failed; it is read back with the next check", partials_name, partition
                    )
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    behind: dict[int, dict[int, int]] = {}  # partials partition -> {source partition: end} short last time
    deferred: dict[int, int] = {}  # partials partition -> checks a read-back was put off for

    async def agent_still_on(partition: int) -> bool:
        """A merge that is busy and has not reached the partition's end yet will get there itself: a read-back now
        would read the whole lag twice (measured: backlog throughput fell 3x).  Put off a few checks at most, so a
        skipped stretch at the end of a partition is read back within TAIL_DEFER_CHECKS checks even then."""
        try:
            _, end = await reader.watermarks(partition)
        except Exception:  # noqa: BLE001 - the read-back will say what is wrong
            return False
        behind_end = end - merge.seen.get(partition, -1) > 2  # the last record, then a transaction marker
        busy = time.monotonic() - merge.active_at < TAIL_CHECK_SECONDS
        if behind_end and busy and deferred.get(partition, 0) < TAIL_DEFER_CHECKS:
            deferred[partition] = deferred.get(partition, 0) + 1
            return True
        deferred.pop(partition, None)
        return False

    tail_reads = FailureStreak(LOG, "tail check: reading the hot path's committed offsets")

    @app.timer(interval=TAIL_CHECK_SECONDS)  # type: ignore[untyped-decorator]
    async def follow_tails() -> None:
        """Read back what the hot path committed but merge never saw at the end of a partition (a skip in the
        middle is found by the next message; one at the end has no next message to reveal it)."""
        if faust_compat.rebalancing(app) or not faust_compat.recovered(app):
            return
        try:
            committed = await asyncio.to_thread(hotpath.read)
        except Exception as exc:  # noqa: BLE001 - the broker may be away a moment
            tail_reads.failed(exc)
            return
        tail_reads.succeeded()
        for tp in app.consumer.assignment():
            if tp.topic != partials_name:
                continue
            short = {}
            for source, end in committed.items():
                position = position_from_table(positions.get(position_key(tp.partition, source)))
                if position is None or position.end < end:
                    short[source] = position.end if position is not None else -1
            previous, behind[tp.partition] = behind.get(tp.partition), short
            if not short or short != previous:
                deferred.pop(tp.partition, None)
                continue  # caught up, or still moving: the agent is on it
            if await agent_still_on(tp.partition):
                continue
            starts = []
            for source in short:
                position = position_from_table(positions.get(position_key(tp.partition, source)))
                starts.append(0 if position is None else position.offset + 1)
            try:
                missing = await reader.read(tp.partition, min(starts))
                if missing:
                    merge._log_read_back(tp.partition, min(starts), missing[-1].offset + 1, missing)
                    await merge.partition(tp.partition, missing)
            except Exception:
                metrics.batch_errors.labels(partials_name).inc()
                LOG.exception(
                    "tail check of %s[%d] failed; retried in %s s", partials_name, tp.partition, TAIL_CHECK_SECONDS
                )

    retention_ms = settings.retention_seconds * 1000
    sweep_every_ms = max(merge.pane_ms, min(retention_ms // 100, 3_600_000))
    swept = {"at": 0}

    @app.timer(interval=max(1.0, min(TAIL_CHECK_SECONDS, sweep_every_ms / 1000)))  # type: ignore[untyped-decorator]
    async def expire_panes() -> None:
        """Bounded memory: drop panes that ended before now - retention (no accepted event can change them)."""
        now_ms = int(time.time() * 1000)
        if now_ms - swept["at"] < sweep_every_ms or faust_compat.rebalancing(app) or not faust_compat.recovered(app):
            return
        swept["at"] = now_ms
        cutoff = now_ms - retention_ms
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == partials_name}
        old: dict[int, list[str]] = defaultdict(list)
        for key in list(panes.keys()):
            partition, _, _, pane = parse_pane_key(key)
            if partition in assigned and pane + merge.pane_ms <= cutoff:
                old[partition].append(key)
        for partition, keys in old.items():
            async with merge.locks[partition]:
                merge.expired_before = max(merge.expired_before, cutoff)
                for key in keys:
                    if key in panes:
                        del panes[key]
                        metrics.expired.labels("panes").inc()
        if old:
            await asyncio.to_thread(results.flush, FLUSH_TIMEOUT_SECONDS)  # the tombstones

    @app.timer(interval=READY_CHECK_SECONDS)  # type: ignore[untyped-decorator]
    async def report_ready() -> None:
        """Gauges set here, on the event loop, never at scrape time: the metrics server's thread must not touch
        a table (its first use binds the table's service to the calling thread's event loop, and Faust then
        waits forever for a task on that loop when it stops: the SIGTERM hang of the first worker)."""
        ready = faust_compat.recovered(app) and not faust_compat.rebalancing(app)
        observe_partials()
        metrics.process_ready.labels(PROCESS).set(1.0 if metrics.health.ready(ready) else 0.0)
        metrics.state_keys.labels("panes").set(len(panes))

    def observe_partials() -> None:
        """merge's progress: per assigned partials partition, the highest offset merged and what waits behind it
        (the partials are transactional: the last offset is the commit marker of the last batch)."""
        progress = metrics.health.progress
        held = set()
        for tp in app.consumer.assignment():
            if tp.topic != partials_name or tp.partition not in merge.seen:
                continue
            try:
                end = app.consumer.highwater(tp)
            except Exception:  # noqa: BLE001, S112 - not fetched yet
                continue
            if end is not None and end >= 0:
                source = f"merge:{tp.partition}"
                held.add(source)
                progress.observe(source, merge.seen[tp.partition], max(0, end - merge.seen[tp.partition] - 2))
        for source in [s for s in progress.positions if s.startswith("merge:") and s not in held]:
            progress.forget(source)

    return app


def run_faust_process(
    name: str,
    process: str,
    argv: Sequence[str] | None,
    build: Callable[[Settings, WorkerMetrics], faust.App],
    check: Callable[[Settings], str | None] = lambda settings: None,
) -> int:
    """A Faust process of the worker: ``python -m MODULE METRICS_PORT LOGLEVEL``; settings from the environment
    (exit 2, EXIT_PERMANENT, when they are invalid or ``check`` names a problem), metrics on the loopback port."""
    args = list(sys.argv[1:] if argv is None else argv)
    port, loglevel = int(args[0]), args[1] if len(args) > 1 else "warn"
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"cxpulse {name}: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    problem = check(settings)
    if problem is not None:
        print(f"cxpulse {name}: {problem}", file=sys.stderr)
        return EXIT_PERMANENT
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.health = ProcessHealth(settings.stall_seconds, OutageLog.install(settings.kafka_bootstrap))
    metrics.process_stalled.labels(process).set_function(metrics.health.progress.stalled)
    if port:
        serve(port, "127.0.0.1", metrics.page, lambda: (metrics.health.ready(True), {}))
    app = build(settings, metrics)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # no spinner: at the default level Faust's spinner turns the root logger to DEBUG (~8% CPU), and it writes
    # cursor hide/show codes even into a log file (faust/utils/terminal/spinners.py)
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the Faust process: ``python -m streams.worker.app METRICS_PORT LOGLEVEL``."""
    return run_faust_process("worker", PROCESS, argv, create_app)


if __name__ == "__main__":
    sys.exit(main())
