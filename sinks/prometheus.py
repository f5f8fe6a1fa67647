"""The Prometheus view: live rolling-window KPI gauges per (metric, channel, journey, window).

A Faust agent consumes ``cx.metrics.panes`` (partitioned by segment, so a worker holds whole segments) and keeps
the latest version of every pane result of its partitions in the table ``kpi-view``.  On the event loop, every
``REFRESH_SECONDS``, :func:`kpi_families` merges the panes of each rolling window (METRICS.md section 5: the
W/P panes that end at the current pane boundary, processing clock) with the same streams/windows.py and
streams/aggregate.py code as replay, and the result is what a scrape returns (:class:`Snapshot`: values live
elsewhere are served by a custom collector, as client_python recommends; the table is never read at scrape time).

Gauges, all with labels metric, channel, journey, window (5m, 1h, 24h):

- ``cxpulse_kpi_value``: NPS/NLS -100..100, CSAT/CAS %, CES mean ease 1..7;
- ``cxpulse_kpi_moe95``: half-width of the 95% interval (absent when n < 2);
- ``cxpulse_kpi_responses``: n;
- ``cxpulse_kpi_component{component}``: n, promoters, passives, detractors, positive, high_effort, sum_x,
  sum_x2: sum the components of any set of series, then compute, and a rollup is exact (never average values).

A segment with no answer in the longest window has no series.  Beyond ``CXPULSE_LABEL_CAP`` segments a worker
exports the largest ones and folds the rest into channel ``other``, journey ``other`` (counted in
``cxpulse_kpi_folded_segments``), so rollups stay exact and the series count bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import faust
from faust.types import EventT, StreamT
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.codec import WINDOW_RESULT, SchemaCatalog, decode_confluent
from streams.aggregate import X2_SCALE, X_SCALE, GroupKey, State, kpi, merge
from streams.config import Settings
from streams.windows import rolling_window, window_bounds

LOG = logging.getLogger("cxpulse.prometheus")
REFRESH_SECONDS = 2.0  # gauges are recomputed this often (and a scrape sees the last computation)
OTHER = "other"
COMPONENTS = ("n", "promoters", "passives", "detractors", "positive", "high_effort", "sum_x", "sum_x2")
LABELS = ["metric", "channel", "journey", "window"]


def window_label(seconds: int) -> str:
    """5m, 1h, 24h, ... for a window length in seconds."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and not (unit == "d" and seconds < 7 * 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def state_of(record: Mapping[str, Any]) -> State:
    """The exact counters of a WindowResult record (sum_x and sum_x2 back to fixed point)."""
    return State(
        record["n"],
        record["promoters"],
        record["passives"],
        record["detractors"],
        record["positive"],
        record["high_effort"],
        round(record["sum_x"] * X_SCALE),
        round(record["sum_x2"] * X2_SCALE),
    )


def kpi_families(
    panes: Mapping[GroupKey, State], now_ms: int, windows_s: Iterable[int], pane_ms: int, cap: int
) -> tuple[list[Metric], int]:
    """The gauge families of every rolling window at ``now_ms``, and how many segments were folded into other."""
    windows = sorted(windows_s)
    longest = rolling_window(panes, now_ms, windows[-1] * 1000, pane_ms)
    sizes: dict[tuple[str, str], int] = defaultdict(int)
    for (channel, journey, _), state in longest.items():
        sizes[(channel, journey)] += state.n
    kept = {segment for segment, _ in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:cap]}
    folded = len(sizes) - len(kept)
    value = GaugeMetricFamily(
        "cxpulse_kpi_value", "KPI value of a rolling window (METRICS.md section 4)", labels=LABELS
    )
    moe = GaugeMetricFamily("cxpulse_kpi_moe95", "Half-width of the KPI's 95% interval (n >= 2)", labels=LABELS)
    responses = GaugeMetricFamily("cxpulse_kpi_responses", "Answers counted in the rolling window (n)", labels=LABELS)
    component = GaugeMetricFamily(
        "cxpulse_kpi_component",
        "Additive counters of the rolling window: sum them over series, then compute, for exact rollups",
        labels=[*LABELS, "component"],
    )
    for window_s in windows:
        states = rolling_window(panes, now_ms, window_s * 1000, pane_ms)
        grouped: dict[tuple[str, str, str], State] = {}
        for (channel, journey, metric), state in states.items():
            key = (channel, journey, metric) if (channel, journey) in kept else (OTHER, OTHER, metric)
            before = grouped.get(key)
            grouped[key] = state if before is None else merge(before, state)
        label = window_label(window_s)
        for (channel, journey, metric), state in sorted(grouped.items()):
            if state.n <= 0:
                continue
            labels = [metric, channel, journey, label]
            k = kpi(metric, state)
            value.add_metric(labels, k.value)
            if k.moe95 is not None:
                moe.add_metric(labels, k.moe95)
            responses.add_metric(labels, state.n)
            for name in COMPONENTS:
                number = state.sum_x if name == "sum_x" else state.sum_x2 if name == "sum_x2" else getattr(state, name)
                component.add_metric([*labels, name], number)
    end = GaugeMetricFamily(
        "cxpulse_kpi_window_end_seconds", "The pane boundary the rolling windows end at (processing clock)"
    )
    end.add_metric([], window_bounds(now_ms, pane_ms, pane_ms)[1] / 1000)
    folded_family = GaugeMetricFamily(
        "cxpulse_kpi_folded_segments", "Segments beyond CXPULSE_LABEL_CAP, exported as channel/journey other"
    )
    folded_family.add_metric([], folded)
    return [value, moe, responses, component, end, folded_family], folded


class Snapshot(Collector):
    """Serves the last computed families at scrape time (set on the event loop, read by the metrics thread)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def view_key(partition: int, channel: str, journey: str, metric: str, pane: int) -> str:
    return f"{partition}|{channel}|{journey}|{metric}|{pane}"


def attach_kpi_view(
    app: faust.App,
    settings: Settings,
    results: faust.TopicT,
    partitions: int,
    catalog: SchemaCatalog,
    flush: Callable[[], Any],
    snapshot: Snapshot,
) -> None:
    """Add the view's table, agent and timer to the worker's Faust app."""
    schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
    view = app.Table("kpi-view", default=None, partitions=partitions, schema=schema)
    pane_ms = settings.pane_seconds * 1000
    retention_ms = settings.retention_seconds * 1000
    results_name = results.get_topic_name()

    @app.agent(results)
    async def kpi_view(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)
        async for events in batches.noack_take(500, within=0.2):
            latest: dict[str, list[Any]] = {}
            for event in cast("list[EventT[Any]]", events):
                message = event.message
                try:
                    _, record = decode_confluent(message.value or b"", catalog, WINDOW_RESULT)
                except Exception:  # noqa: BLE001 - not a result: nothing to show
                    LOG.warning(
                        "%s[%d] offset %d is not a WindowResult", results_name, message.partition, message.offset
                    )
                    continue
                key = view_key(
                    message.partition, record["channel"], record["journey"], record["metric"], record["window_start"]
                )
                value = [record["version"], *state_of(record)]
                before = latest.get(key) or view.get(key)
                if before is None or before[0] < value[0]:
                    latest[key] = value
            for key, value in latest.items():
                view[key] = value
            if latest:
                await asyncio.to_thread(flush)  # the table's changelog, before the batch is acked
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    @app.timer(interval=REFRESH_SECONDS)  # type: ignore[untyped-decorator]
    async def refresh_kpis() -> None:
        now_ms = int(time.time() * 1000)
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == results_name}
        panes: dict[GroupKey, State] = {}
        for key, value in list(view.items()):
            partition, channel, journey, metric, pane = key.split("|")
            if int(partition) in assigned:
                panes[(int(pane), channel, journey, metric)] = State(*value[1:])
        snapshot.families, _ = kpi_families(panes, now_ms, settings.windows_seconds, pane_ms, settings.label_cap)
        cutoff = now_ms - retention_ms
        old = [k for k in list(view.keys()) if int(k.rsplit("|", 1)[1]) + pane_ms <= cutoff]
        for key in old:
            del view[key]
        if old:
            await asyncio.to_thread(flush)
