"""The effort-spike detector in the stream: a Faust agent on ``cx.metrics.panes`` (CES results) and a timer that
feeds every closed pane of every segment to streams/effort.py, the implementation replay uses too.

- table ``effort-panes``: per (results partition, channel, journey, pane) the latest CES counts and drivers;
- table ``effort-state``: per (results partition, channel, journey) the CUSUM S, whether it fires, and the last
  pane evaluated; a restarted worker goes on from there and evaluates the panes it missed, in order.

A pane is closed once its end has passed on the processing clock *and* its answers are merged and applied here
(EventClock: merge's watermark, from the hot path's ``through`` headers), so the panes of a backlog (a worker back
after downtime) are evaluated in event time, with their answers, as replay evaluates them; an answer arriving after
its pane was evaluated still counts in the pane's results and baselines, not in that evaluation.  FIRING and
RESOLVED go to ``cx.alerts`` (EffortAlert, Confluent wire format); the gauges ``cxpulse_effort_spike``,
``cxpulse_effort_cusum``, ``cxpulse_effort_zscore``, ``cxpulse_effort_baseline_share``,
``cxpulse_effort_short_share``, ``cxpulse_effort_short_responses`` and ``cxpulse_effort_baseline_responses`` per
(channel, journey) are served from a snapshot taken on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, cast

import faust
from confluent_kafka import Producer
from faust.types import EventT, StreamT
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from schemas.codec import (
    EFFORT_ALERT,
    EFFORT_ALERT_RAW,
    WINDOW_RESULT,
    SchemaCatalog,
    decode_confluent,
    encode_confluent,
)
from sinks.prometheus import Snapshot, measure_sink_lag
from streams.config import Settings, effort_config
from streams.effort import DetectorState, Evaluation, PaneEffort, alert_record, evaluate_range
from streams.worker.metrics import WorkerMetrics

LOG = logging.getLogger("cxpulse.alerts")
EVALUATE_SECONDS = 1.0  # how often closed panes are looked for
MAX_STEPS = 240  # panes evaluated per segment and tick (a catch-up after downtime is spread over ticks)
LABELS = ["channel", "journey"]
SINK = "effort"


def effort_families(evaluations: dict[tuple[str, str], Evaluation], threshold: float) -> list[Metric]:
    """The detector's gauges from the last evaluation of every segment, and its threshold H."""
    spike = GaugeMetricFamily("cxpulse_effort_spike", "1 while the segment's effort-spike alert fires", labels=LABELS)
    cusum = GaugeMetricFamily(
        "cxpulse_effort_cusum", "The CUSUM statistic S (fires at H, resolves at 0)", labels=LABELS
    )
    zscore = GaugeMetricFamily(
        "cxpulse_effort_zscore",
        "(p_short - p0) / sqrt(p0 (1 - p0) / n_short), the short window against the baseline",
        labels=LABELS,
    )
    p0 = GaugeMetricFamily("cxpulse_effort_baseline_share", "Baseline high-effort share p0", labels=LABELS)
    short = GaugeMetricFamily("cxpulse_effort_short_share", "High-effort share of the last 5 minutes", labels=LABELS)
    n_short = GaugeMetricFamily(
        "cxpulse_effort_short_responses", "CES answers in the last 5 minutes (n_s)", labels=LABELS
    )
    n_baseline = GaugeMetricFamily(
        "cxpulse_effort_baseline_responses", "CES answers in the baseline (n_B)", labels=LABELS
    )
    for (channel, journey), evaluation in sorted(evaluations.items()):
        labels = [channel, journey]
        spike.add_metric(labels, 1.0 if evaluation.firing else 0.0)
        cusum.add_metric(labels, evaluation.s)
        if evaluation.z is not None:
            zscore.add_metric(labels, evaluation.z)
        if evaluation.p0 is not None:
            p0.add_metric(labels, evaluation.p0)
        if evaluation.p_short is not None:
            short.add_metric(labels, evaluation.p_short)
        n_short.add_metric(labels, evaluation.n_short)
        n_baseline.add_metric(labels, evaluation.n_baseline)
    limit = GaugeMetricFamily(
        "cxpulse_effort_threshold", "The CUSUM threshold H (CXPULSE_EFFORT_THRESHOLD)", value=threshold
    )
    return [spike, cusum, zscore, p0, short, n_short, n_baseline, limit]


class EventClock:
    """When a pane counts as closed for the detector: its end has passed on the processing clock *and* every answer
    up to its end has been merged and its results applied here (docs/contract.md section 7: in event-time order, as in
    replay).  Live, the two agree within a batch; after downtime the data's own time leads, so the panes of the
    backlog are evaluated once their answers are in, not empty as they go by.

    Each tick remembers merge's watermark; at the next tick the results partitions' end offsets are noted beside it
    (merge flushed every result of that watermark before it moved it, so they are in by then), and the watermark
    becomes safe once this agent has applied up to those ends.  Under a steady load the agent reaches a fixed past
    end within a batch, so evaluation never waits for a moment without lag."""

    def __init__(self) -> None:
        self.previous: int | None = None  # merge's watermark at the last tick
        self.pending: deque[tuple[int, dict[int, int]]] = deque()  # (watermark, results ends that cover it)
        self.safe: int | None = None  # event time up to which results are known to be applied

    def now(self, processing_ms: int, merged: int | None, ends: dict[int, int], applied: dict[int, int]) -> int | None:
        """The time to close panes by (None: nothing merged yet since the start); ``ends`` and ``applied``: per
        results partition held, its end offset and the next offset this agent will apply."""
        if self.previous is not None:
            self.pending.append((self.previous, ends))
        self.previous = merged
        while self.pending and all(applied.get(p, -1) >= end for p, end in self.pending[0][1].items()):
            self.safe = max(self.safe or 0, self.pending.popleft()[0])
        return None if self.safe is None else min(processing_ms, self.safe)


def results_positions(
    app: faust.App, topic: str, applied: dict[int, int], start: dict[int, int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Per assigned partition of ``topic``: its end offset, and the next offset this agent will apply (for a
    partition it has taken nothing of since it was assigned: its end when first seen, where Faust resumed)."""
    ends: dict[int, int] = {}
    done: dict[int, int] = {}
    for tp in app.consumer.assignment():
        if tp.topic != topic:
            continue
        try:
            end = app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - not fetched yet
            continue
        if end is None or end < 0:
            continue
        ends[tp.partition] = end
        done[tp.partition] = applied[tp.partition] if tp.partition in applied else start.setdefault(tp.partition, end)
    return ends, done


def attach_effort_detector(
    app: faust.App,
    settings: Settings,
    results: faust.TopicT,
    partitions: int,
    catalog: SchemaCatalog,
    producer: Producer,
    flush: Callable[[], Any],
    snapshot: Snapshot,
    metrics: WorkerMetrics,
    watermark: Callable[[], int | None] = lambda: None,
) -> None:
    """Add the detector's tables, agent and timer to the worker's Faust app.  ``watermark``: event time up to which
    every answer is merged (streams.worker.app.Merge.watermark); panes are evaluated up to it, in event time."""
    schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
    panes = app.Table("effort-panes", default=None, partitions=partitions, schema=schema)
    states = app.Table("effort-state", default=None, partitions=partitions, schema=schema)
    config = effort_config(settings)
    pane_ms = settings.pane_seconds * 1000
    results_name = results.get_topic_name()
    alert_schema_id = catalog.id_for(EFFORT_ALERT_RAW)
    evaluations: dict[tuple[str, str], Evaluation] = {}
    applied: dict[int, int] = {}  # results partition -> the next offset to apply (for the sink lag)
    metrics.sink_errors.labels(SINK)  # a series from the start, at 0
    keep_ms = config.baseline_ms + config.guard_ms + 2 * pane_ms  # an evaluation reads this far back
    retention_ms = settings.retention_seconds * 1000
    clock = EventClock()
    started_at: dict[int, int] = {}  # results partition -> its end when first seen with nothing taken of it

    @app.agent(results)
    async def effort_panes(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)
        async for events in batches.noack_take(500, within=0.2):
            latest: dict[str, list[Any]] = {}
            for event in cast("list[EventT[Any]]", events):
                message = event.message
                applied[message.partition] = message.offset + 1
                if message.key and message.key.rsplit(b"|", 2)[-2:-1] != [b"CES"]:
                    continue  # keyed channel|journey|metric|window_start: 4 in 5 results are not CES
                try:
                    _, record = decode_confluent(message.value or b"", catalog, WINDOW_RESULT)
                except Exception:  # noqa: BLE001, S112 - not a result (the view logs it)
                    metrics.sink_errors.labels(SINK).inc()
                    continue
                if record["metric"] != "CES":
                    continue
                key = f"{message.partition}|{record['channel']}|{record['journey']}|{record['window_start']}"
                drivers = {d["name"]: [d["n"], d["high_effort"]] for d in record.get("drivers") or ()}
                value = [record["version"], record["n"], record["high_effort"], drivers]
                before = latest.get(key) or panes.get(key)
                if before is None or before[0] < value[0]:
                    latest[key] = value
            for key, value in latest.items():
                panes[key] = value
            if latest:
                await asyncio.to_thread(flush)
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    @app.timer(interval=EVALUATE_SECONDS)  # type: ignore[untyped-decorator]
    async def evaluate_closed_panes() -> None:
        ends, done = results_positions(app, results_name, applied, started_at)
        now_ms = clock.now(int(time.time() * 1000), watermark(), ends, done)
        if now_ms is None:
            return  # no answer merged yet since the start: nothing to evaluate in event time
        last_closed = now_ms - now_ms % pane_ms - pane_ms
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == results_name}
        by_segment: dict[tuple[int, str, str], dict[int, PaneEffort]] = defaultdict(dict)
        for key, value in list(panes.items()):
            partition, channel, journey, pane = key.split("|")
            if int(partition) not in assigned:
                continue
            if int(pane) < now_ms - retention_ms:  # no accepted answer can reach it any more
                del panes[key]
                continue
            drivers = {name: (int(n), int(high)) for name, (n, high) in value[3].items()}
            by_segment[(int(partition), channel, journey)][int(pane)] = PaneEffort(value[1], value[2], drivers)
        sent = steps_total = 0
        for (partition, channel, journey), segment in by_segment.items():
            key = f"{partition}|{channel}|{journey}"
            stored = states.get(key)
            state = DetectorState(stored["s"], stored["firing"], stored["evaluated"]) if stored else DetectorState()
            pane = state.evaluated + pane_ms if state.evaluated is not None else min(segment)
            pane = max(pane, last_closed - retention_ms)  # older panes are gone: nothing to evaluate them with
            until = min(last_closed, pane + (MAX_STEPS - 1) * pane_ms)  # a long catch-up goes on at the next tick
            steps = 0
            for evaluation in evaluate_range(config, state, segment, pane, until, pane_ms) if pane <= until else []:
                steps += 1
                evaluations[(channel, journey)] = evaluation
                if evaluation.change is not None:
                    record = alert_record(channel, journey, evaluation, pane_ms)
                    producer.produce(
                        settings.alerts_topic,
                        encode_confluent(record, EFFORT_ALERT, alert_schema_id),
                        f"{channel}|{journey}".encode(),
                    )
                    sent += 1
                    LOG.warning(
                        "effort spike %s: %s / %s, S %.2f, p_short %s, p0 %.3f, root cause %s",
                        evaluation.change, channel, journey, evaluation.s, evaluation.p_short, evaluation.p0,
                        [f"{d.kind}:{d.name} {d.high_effort}/{d.n}" for d in evaluation.root_cause],
                    )  # fmt: skip
            steps_total += steps
            if steps:
                states[key] = {"s": state.s, "firing": state.firing, "evaluated": state.evaluated}
            # panes that no later evaluation of this segment needs (older than the next one's baseline): dropped
            horizon = (state.evaluated if state.evaluated is not None else pane) + pane_ms - keep_ms
            for old in [p for p in segment if p < horizon]:
                del panes[f"{key}|{old}"]
        if sent or steps_total:
            await asyncio.to_thread(flush)  # alerts, and the state table's changelog
        snapshot.families = effort_families(evaluations, config.threshold)
        measure_sink_lag(app, metrics, SINK, results_name, applied)
