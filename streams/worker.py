"""``cxpulse worker``: the Faust app that turns ``cx.feedback`` into pane results on ``cx.metrics.panes``.

Two agents, with the aggregation core of streams.aggregate doing every computation:

1. ``ingest`` consumes raw feedback in batches (``noack_take``).  Per source partition p it completes the
   batch with any offset the consumer skipped (streams.gaps), decodes, validates (invalid ->
   ``cx.feedback.dlq`` partition p, with reason and source headers, once), de-duplicates by event_id (table
   ``seen-ids``) and aggregates into pane partials per (p, channel|journey, pane).  Each partial is kept in the
   changelog-backed table ``source-panes`` together with the last source offset it has absorbed, and its
   full state (not a delta) travels to the internal ``<app>-partials`` topic keyed by channel|journey.
2. ``merge`` owns channel|journey keys: it keeps, per (partials partition q, channel|journey, pane), the latest
   partial of every source partition in the table ``panes`` and emits the merged WindowResult of every metric
   it touched.

Timers: offsets Faust committed without handing them to an agent (streams.gaps), state expiry by the retention,
readiness for /metrics.  Table ``positions`` holds, per input partition, the next expected offset and the DLQ
checkpoint.

Why the numbers stay exact under at-least-once delivery (Faust flushes every send and changelog write
before it commits an offset, so a crash can only repeat work; skipped offsets are read back):

- a repeated event is recognised by its offset: ``source-panes`` keys absorb only offsets above their
  watermark, and ``seen-ids`` remembers the offset an id was first counted at, so re-reading that same
  message is not mistaken for a duplicate while a later copy is;
- partials carry the full state of (p, key, pane) with the watermark as version, so ``merge`` keeps the
  highest version per source partition: a resent or reordered partial changes nothing;
- a dead letter is not sent again for an offset below ``positions`` or found on the DLQ after its checkpoint.

Re-sends of one answer are caught when they land in the same source partition (producers key by customer,
so a re-sent answer does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import Any, cast

import faust
from faust.streams import _current_event  # noqa: PLC2701 - see ingest()
from faust.types import EventT, StreamT

from schemas.codec import (
    WINDOW_RESULT,
    WINDOW_RESULT_RAW,
    LocalCatalog,
    SchemaCatalog,
    decode_feedback,
    encode_confluent,
)
from streams.aggregate import State, aggregate_panes, merge, merge_all
from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings
from streams.errors import DecodeError
from streams.gaps import OffsetReader, Record, complete, missing_ranges
from streams.validate import Clock, Feedback, validate_batch
from streams.windows import WindowResult, window_result
from streams.worker_metrics import WorkerMetrics

LOG = logging.getLogger("cxpulse.worker")
BATCH_MAX = 2000  # events per take_events batch
BATCH_WITHIN_SECONDS = 0.25  # wait at most this long to fill a batch
SESSION_TIMEOUT_SECONDS = 10.0  # Kafka group session: how long a dead worker's partitions stay unserved
HEARTBEAT_SECONDS = 2.0
READY_CHECK_SECONDS = 0.5  # how often cxpulse_worker_ready is refreshed
GAP_CHECK_SECONDS = 5.0  # how often the offsets Faust committed are checked against the ones processed

Partial = dict[str, list[int]]  # metric -> State as a list of 8 ints


class _PartitionContext:
    """Stands in for the current event when the gap timer writes tables: Faust takes a table write's changelog
    partition from ``current_event().message`` (faust/tables/base.py partition_for_key)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


class SeenIds:
    """The ids counted per source partition, each with the offset it was first counted at.

    The table ``seen-ids`` holds one entry per processed batch (key ``p|first offset``, value the batch's new ids
    and the latest occurred_at among them), so a batch costs one changelog message instead of one per event.
    Lookups go through an in-memory index per partition, rebuilt from the table after every rebalance (the
    consumer generation changes, and the table was recovered for the partitions now held).
    """

    def __init__(self, table: Any, app: faust.App) -> None:
        self._table = table
        self._app = app
        self._index: dict[int, tuple[int, dict[str, int]]] = {}

    def of(self, partition: int) -> dict[str, int]:
        generation = self._app.consumer_generation_id
        current = self._index.get(partition)
        if current is not None and current[0] == generation:
            return current[1]
        index: dict[str, int] = {}
        prefix = f"{partition}|"
        for key, value in list(self._table.items()):
            if key.startswith(prefix):
                for event_id, offset in value["ids"].items():
                    index[event_id] = min(offset, index.get(event_id, offset))
        self._index[partition] = (generation, index)
        return index

    def forget(self, partition: int, ids: dict[str, int]) -> None:
        current = self._index.get(partition)
        if current is not None:
            for event_id, offset in ids.items():
                if current[1].get(event_id) == offset:
                    del current[1][event_id]

    def __len__(self) -> int:
        return sum(len(index) for _, index in list(self._index.values()))


def segment_key(channel: str, journey: str) -> str:
    """The key partials travel under: channel|journey (neither may contain '|', see the label pattern)."""
    return f"{channel}|{journey}"


def _states_to_json(states: dict[str, State]) -> Partial:
    return {metric: list(state) for metric, state in states.items()}


def _states_from_json(raw: Partial) -> dict[str, State]:
    return {metric: State(*values) for metric, values in raw.items()}


def absorb(partial: list[Any] | None, events: Sequence[tuple[int, Feedback]], pane_ms: int) -> list[Any]:
    """Absorb the events above this partial's watermark into its states; return [watermark, states].

    ``events`` are (offset, event) of one source partition, one segment and one pane, in offset order.
    """
    watermark, raw = (partial[0], partial[1]) if partial is not None else (-1, {})
    fresh = [event for offset, event in events if offset > watermark]
    last = max(offset for offset, _ in events)
    if not fresh:
        return [max(watermark, last), raw]
    states = _states_from_json(raw)
    for (_, _, _, metric), state in aggregate_panes(fresh, pane_ms).items():
        current = states.get(metric)
        states[metric] = state if current is None else merge(current, state)
    return [max(watermark, last), _states_to_json(states)]


def merged_results(
    channel: str, journey: str, pane: int, pane_ms: int, by_source: dict[str, list[Any]], metrics: Iterable[str]
) -> list[WindowResult]:
    """The WindowResults of one (segment, pane) from the latest partial of every source partition.

    ``version`` is the sum of (watermark + 1) over the source partitions: it grows with every revision.
    """
    version = sum(watermark + 1 for watermark, _ in by_source.values())
    out = []
    for metric in sorted(metrics):
        state = merge_all(State(*raw[metric]) for _, raw in by_source.values() if metric in raw)
        if state.n > 0:
            out.append(window_result(pane, pane + pane_ms, channel, journey, metric, state, version))
    return out


def result_record(result: WindowResult) -> dict[str, Any]:
    """The Avro record of a WindowResult."""
    return result._asdict()


def create_app(
    settings: Settings, catalog: SchemaCatalog | None = None, metrics: WorkerMetrics | None = None
) -> faust.App:
    """Build the Faust app with its topics, tables, agents and timers (not started)."""
    catalog = catalog or LocalCatalog()
    metrics = metrics or WorkerMetrics()
    result_schema_id = catalog.id_for(WINDOW_RESULT_RAW)
    pane_ms = settings.pane_seconds * 1000
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        # a worker killed with -9 keeps its partitions until the session times out: keep that short
        broker_session_timeout=SESSION_TIMEOUT_SECONDS,
        broker_heartbeat_interval=HEARTBEAT_SECONDS,
    )
    feedback = app.topic(
        settings.feedback_topic,
        key_type=bytes,
        value_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
        partitions=settings.partitions,
    )
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    partials = app.topic(
        f"{settings.app_id}-partials",
        key_serializer="raw",
        value_serializer="json",
        partitions=settings.partitions,
        internal=True,
    )
    results = app.topic(settings.results_topic, key_serializer="raw", value_serializer="raw")
    json_schema: faust.Schema[Any, Any] = faust.Schema(
        key_serializer="json", value_serializer="json"
    )  # str keys survive recovery
    source_panes = app.Table("source-panes", default=None, partitions=settings.partitions, schema=json_schema)
    seen_ids = app.Table("seen-ids", default=None, partitions=settings.partitions, schema=json_schema)
    panes = app.Table("panes", default=None, partitions=settings.partitions, schema=json_schema)
    future_ms = DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000
    retention_ms = settings.retention_seconds * 1000

    positions = app.Table("positions", default=None, partitions=settings.partitions, schema=json_schema)
    reader = OffsetReader(settings.kafka_bootstrap, metrics.gap_records)
    seen = SeenIds(seen_ids, app)
    metrics.watch({"source-panes": source_panes, "seen-ids": seen_ids, "panes": panes, "positions": positions})
    metrics.remembered_ids.set_function(seen.__len__)
    partials_topic = partials.get_topic_name()

    locks: dict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)
    # dead letters: source partition -> (consumer generation, source offsets already on the DLQ past the
    # checkpoint, DLQ end offset when that was read)
    lettered: dict[int, tuple[int, set[int], int]] = {}
    sending: dict[int, list[Awaitable[Any]]] = defaultdict(list)  # dead letters of the batch in progress
    dlq_partitions: list[int] = []

    async def dlq_partition(partition: int) -> int:
        if not dlq_partitions:
            dlq_partitions.append(await reader.partition_count(settings.dlq_topic))
        return partition % dlq_partitions[0]

    async def recall_dead_letters(partition: int, checkpoint: int | None) -> None:
        """Once per partition and consumer generation: which source offsets a previous run of this partition
        dead-lettered after its last checkpoint (it may have crashed before it could record them)."""
        generation = app.consumer_generation_id
        if lettered.get(partition, (None,))[0] == generation:
            return
        target = await dlq_partition(partition)
        low, high = await reader.watermarks(settings.dlq_topic, target)
        start = low if checkpoint is None else max(low, checkpoint)
        done = set()
        for record in await reader.scan(settings.dlq_topic, target, start, high):
            headers = dict(record.headers)
            if (
                headers.get("source_topic") == settings.feedback_topic.encode()
                and headers.get("source_partition") == str(partition).encode()
            ):
                done.add(int(headers.get("source_offset", b"-1")))
        lettered[partition] = (generation, done, high)

    async def run_partition(
        topic: str,
        partition: int,
        events: Sequence[EventT[Any]],
        process: Callable[[int, Sequence[Record], int], Awaitable[None]],
        upto: int | None = None,
    ) -> None:
        """Process one partition's part of a batch in offset order, every offset the consumer skipped read back
        first (and, for the gap timer, every offset below ``upto``); then, once its dead letters are delivered,
        record the next expected offset and the dead-letter checkpoint in ``positions``."""
        async with locks[(topic, partition)]:
            try:
                await _run_partition(topic, partition, events, process, upto)
            except Exception:
                # letters this attempt sent are waited for and found again by the next attempt's recall, so the
                # re-processing of these offsets does not send them twice
                for future in sending.pop(partition, []):
                    with contextlib.suppress(Exception):
                        await future
                lettered.pop(partition, None)
                raise

    async def _run_partition(
        topic: str,
        partition: int,
        events: Sequence[EventT[Any]],
        process: Callable[[int, Sequence[Record], int], Awaitable[None]],
        upto: int | None,
    ) -> None:
        records = sorted(
            {
                e.message.offset: Record(topic, partition, e.message.offset, e.message.key, e.message.value)
                for e in events
            }.values()
        )
        key = f"{topic}|{partition}"
        expected, checkpoint = positions.get(key) or (None, None)
        if expected is None:
            expected = await reader.low_watermark(topic, partition)
        offsets = [r.offset for r in records]
        ranges = missing_ranges(offsets + ([upto] if upto is not None else []), expected)
        if ranges:
            records = complete(records, await reader.read(topic, partition, ranges))
        if not records:
            if upto is not None and upto > expected:  # nothing left to read there (deleted by retention)
                positions[key] = [upto, checkpoint]
            return
        if topic == settings.feedback_topic:
            await recall_dead_letters(partition, checkpoint)
        metrics.records.labels(topic).inc(len(records))
        await process(partition, records, expected)
        delivered = [await future for future in sending.pop(partition, [])]
        next_offset = max(expected, records[-1].offset + 1, upto or 0)
        if topic == settings.feedback_topic:
            _, recalled, recalled_at = lettered[partition]
            # the checkpoint may move past letters of an earlier run only once their offsets are behind us
            if all(offset < next_offset for offset in recalled):
                ends = [metadata.offset + 1 for metadata in delivered] + [recalled_at, checkpoint or 0]
                checkpoint = max(ends)
        positions[key] = [next_offset, checkpoint]

    async def dead_letter(record: Record, expected: int, reason: str, detail: str, schema_id: int | None) -> None:
        """Send an invalid event to the DLQ, unless an earlier run already did (each invalid event once)."""
        if record.offset < expected or record.offset in lettered[record.partition][1]:
            return  # re-read: its dead letter went out before the checkpoint, or after it (found by recall)
        headers = {
            "reason": reason.encode(),
            "detail": detail.encode()[:1000],
            "source_topic": record.topic.encode(),
            "source_partition": str(record.partition).encode(),
            "source_offset": str(record.offset).encode(),
        }
        if schema_id is not None:
            headers["schema_id"] = str(schema_id).encode()
        future = await dlq.send(
            key=record.key,
            value=record.value,
            partition=await dlq_partition(record.partition),
            headers=headers,
            force=True,
        )
        sending[record.partition].append(future)
        metrics.dead_letters.labels(reason).inc()

    async def ingest_partition(partition: int, records: Sequence[Record], expected: int) -> None:
        decoded: list[tuple[Record, int | None, dict[str, Any]]] = []
        for record in records:
            try:
                schema_id, fields = decode_feedback(record.value or b"", catalog)
            except DecodeError as exc:
                await dead_letter(record, expected, "undecodable", str(exc), None)
                continue
            decoded.append((record, schema_id, fields))
        clock = Clock(int(time.time() * 1000), future_ms, retention_ms)
        valid, rejected = validate_batch([fields for _, _, fields in decoded], clock)
        for rejection in rejected:
            record, schema_id, _ = decoded[rejection.at]
            await dead_letter(record, expected, rejection.reason, rejection.detail, schema_id)
        rejected_at = {r.at for r in rejected}
        offsets = [record.offset for i, (record, _, _) in enumerate(decoded) if i not in rejected_at]
        groups: dict[tuple[str, str, int], list[tuple[int, Feedback]]] = defaultdict(list)
        index = seen.of(partition)
        fresh: dict[str, int] = {}
        until = late = 0
        for offset, feedback_event in zip(offsets, valid, strict=True):
            first = index.get(feedback_event.event_id)
            if first is None:
                index[feedback_event.event_id] = fresh[feedback_event.event_id] = offset
                until = max(until, feedback_event.occurred_at)
            elif first != offset:
                metrics.duplicates.inc()
                continue  # a later copy of an answer already counted
            pane = feedback_event.occurred_at - feedback_event.occurred_at % pane_ms
            if pane + pane_ms <= clock.now_ms and offset >= expected:
                late += 1  # its pane had closed on the processing clock: it revises a result already out
            groups[(feedback_event.channel, feedback_event.journey, pane)].append((offset, feedback_event))
        metrics.late_events.inc(late)
        if fresh:  # one changelog message per batch, not per event
            seen_ids[f"{partition}|{min(fresh.values())}"] = {"ids": fresh, "until": until}
        for (channel, journey, pane), members in groups.items():
            table_key = f"{partition}|{channel}|{journey}|{pane}"
            updated = absorb(source_panes.get(table_key), members, pane_ms)
            source_panes[table_key] = updated
            # sent even when nothing was new: a re-read batch re-sends what an interrupted run may not have
            await partials.send(
                key=segment_key(channel, journey).encode(),
                value={"p": partition, "pane": pane, "version": updated[0], "states": updated[1]},
                force=True,
            )

    def by_partition(events: Iterable[EventT[Any]]) -> dict[int, list[EventT[Any]]]:
        grouped: dict[int, list[EventT[Any]]] = defaultdict(list)
        for event in events:
            grouped[event.message.partition].append(event)
        return grouped

    async def guarded(
        topic: str,
        partition: int,
        events: Sequence[EventT[Any]],
        process: Callable[[int, Sequence[Record], int], Awaitable[None]],
    ) -> None:
        """Run a partition's part of a batch; a failure is logged and counted, and the batch is still acked.

        Acking a failed batch loses nothing: ``positions`` did not advance, so the next batch of the partition
        (or the gap timer) reads those offsets back and processes them again.  Not acking would wedge the
        worker: Faust waits for every unacked message before it can rebalance or stop (consumer.wait_empty),
        and an agent that raised would never ack them (seen here: SIGTERM ignored for minutes).
        """
        try:
            await run_partition(topic, partition, events, process)
        except Exception:
            metrics.batch_errors.labels(topic).inc()
            LOG.exception("processing %s[%d] failed; its offsets are read again with the next batch", topic, partition)

    @app.agent(feedback)
    async def ingest(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)  # the concrete Stream has noack_take
        # noack_take, not take_events: take_events acks a batch in a `finally`, so a worker stopped in the
        # middle of a batch commits offsets of events it never finished (the class of faust-streaming#315).
        # Here a batch is acked only once it is processed; an interrupted one is read again.
        async for events in batches.noack_take(BATCH_MAX, within=BATCH_WITHIN_SECONDS):
            for partition, members in by_partition(cast("list[EventT[Any]]", events)).items():
                # Faust writes a table's changelog to the partition of the *current* event (the context variable
                # read by faust.streams.current_event, see faust/tables/base.py on_key_set); a batch spans
                # partitions, so we set it per partition.  Only the context variable of this task: the stream's
                # own current_event attribute feeds the batch buffer and must not be touched.
                _current_event.set(weakref.ref(members[-1]))
                await guarded(settings.feedback_topic, partition, members, ingest_partition)
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    async def merge_partition(partition: int, records: Sequence[Record], expected: int) -> None:  # noqa: ARG001
        """Apply a batch of partials, then write each touched pane once and emit its results once (the newest
        state of the batch: a batch often holds several partials of one pane, one per source partition)."""
        touched: dict[str, tuple[str, str, int, dict[str, list[Any]], set[str]]] = {}
        for record in records:
            channel, journey = (record.key or b"").decode().split("|", 1)
            value: dict[str, Any] = json.loads(record.value or b"{}")
            pane = value["pane"]
            table_key = f"{partition}|{channel}|{journey}|{pane}"
            if table_key not in touched:
                touched[table_key] = (channel, journey, pane, dict(panes.get(table_key) or {}), set())
            by_source, metrics_touched = touched[table_key][3], touched[table_key][4]
            source = str(value["p"])
            previous = by_source.get(source)
            if previous is not None and previous[0] > value["version"]:
                continue  # an older partial arriving late: nothing new
            # an equal version is a re-send: its results are emitted again (readers keep the highest version)
            by_source[source] = [value["version"], value["states"]]
            metrics_touched.update(value["states"])
        for table_key, (channel, journey, pane, by_source, metrics_touched) in touched.items():
            if not metrics_touched:
                continue
            panes[table_key] = by_source
            for result in merged_results(channel, journey, pane, pane_ms, by_source, metrics_touched):
                await results.send(
                    key=f"{result.channel}|{result.journey}|{result.metric}|{result.window_start}".encode(),
                    value=encode_confluent(result_record(result), WINDOW_RESULT, result_schema_id),
                    force=True,
                )

    @app.agent(partials)
    async def merge_partials(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)
        async for events in batches.noack_take(BATCH_MAX, within=BATCH_WITHIN_SECONDS):  # acked when done, as above
            for partition, members in by_partition(cast("list[EventT[Any]]", events)).items():
                _current_event.set(weakref.ref(members[-1]))
                await guarded(partials_topic, partition, members, merge_partition)
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    processors = {settings.feedback_topic: ingest_partition, partials_topic: merge_partition}

    @app.timer(interval=GAP_CHECK_SECONDS)  # type: ignore[untyped-decorator]
    async def fill_tail_gaps() -> None:
        """Offsets the consumer committed without handing them to an agent, at the end of a partition (a gap in
        the middle is filled by the next batch; one at the end has no next batch to reveal it)."""
        if app.rebalancing or not cast(Any, app.tables).recovery.completed.is_set():
            return
        committed: dict[Any, int] = getattr(app.consumer, "_committed_offset", {})  # faust's own record of commits
        for tp in app.consumer.assignment():
            process = processors.get(tp.topic)
            done, _ = positions.get(f"{tp.topic}|{tp.partition}") or (None, None)
            upto = committed.get(tp)
            if process is None or upto is None or (done is not None and upto <= done):
                continue
            context = _PartitionContext(tp.topic, tp.partition)  # held: the context variable is a weak reference
            _current_event.set(weakref.ref(context))  # type: ignore[arg-type]
            try:
                await run_partition(tp.topic, tp.partition, [], process, upto=upto)
            except Exception:  # the broker may be away a moment: a timer error must not stop the worker
                metrics.batch_errors.labels(tp.topic).inc()
                LOG.exception("gap check of %s[%d] failed; retried in %s s", tp.topic, tp.partition, GAP_CHECK_SECONDS)

    @app.timer(interval=READY_CHECK_SECONDS)  # type: ignore[untyped-decorator]
    async def report_ready() -> None:
        recovered = cast(Any, app.tables).recovery.completed.is_set()
        metrics.ready.set(1.0 if recovered and not app.rebalancing and app.consumer.assignment() else 0.0)

    sweep_every_ms = max(pane_ms, min(retention_ms // 100, 3_600_000))
    swept_up_to = {"cutoff": -1}

    def expired_keys(now_ms: int) -> dict[tuple[str, int], list[tuple[Any, str]]]:
        """Keys no event can change any more, by the (input topic, partition) whose changelog holds them.

        An event with occurred_at before now - retention is rejected as too_old, so a pane that ended before that
        and an id that occurred before it can be forgotten (METRICS.md: retention of pane state)."""
        cutoff = now_ms - retention_ms
        found: dict[tuple[str, int], list[tuple[Any, str]]] = defaultdict(list)
        for table, topic in ((source_panes, settings.feedback_topic), (panes, partials_topic)):
            for key in list(table.keys()):
                partition, _, _, pane = key.split("|")
                if int(pane) + pane_ms <= cutoff:
                    found[(topic, int(partition))].append((table, key))
        for key, value in list(seen_ids.items()):
            if value["until"] < cutoff:
                found[(settings.feedback_topic, int(key.split("|", 1)[0]))].append((seen_ids, key))
        return found

    @app.timer(interval=max(1.0, min(GAP_CHECK_SECONDS, sweep_every_ms / 1000)))  # type: ignore[untyped-decorator]
    async def expire_state() -> None:
        """Bounded memory: drop table keys older than the retention (a tombstone to the changelog each)."""
        now_ms = int(time.time() * 1000)
        if app.rebalancing or now_ms - swept_up_to["cutoff"] < sweep_every_ms:
            return
        if not cast(Any, app.tables).recovery.completed.is_set():
            return
        swept_up_to["cutoff"] = now_ms
        assigned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
        for (topic, partition), keys in expired_keys(now_ms).items():
            if (topic, partition) not in assigned:
                continue
            async with locks[(topic, partition)]:
                context = _PartitionContext(topic, partition)
                _current_event.set(weakref.ref(context))  # type: ignore[arg-type]
                for table, key in keys:
                    if key in table:
                        if table is seen_ids:
                            seen.forget(partition, table[key]["ids"])
                        del table[key]
                        metrics.expired.labels(table.name).inc()

    return app
