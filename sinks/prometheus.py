"""The Prometheus view: live rolling-window KPI gauges per (metric, channel, journey, window).

A Faust agent consumes ``cx.metrics.panes`` (partitioned by segment, so a worker holds whole segments) and keeps
the latest version of every pane result of its partitions in the table ``kpi-view``.  On the event loop, every
``REFRESH_SECONDS``, :func:`kpi_families` merges the panes of each rolling window (docs/contract.md section 5: the
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
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any, cast

import faust
from faust.types import EventT, StreamT
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.codec import WINDOW_RESULT, SchemaCatalog, decode_confluent
from streams.aggregate import X2_SCALE, X_SCALE, ZERO, GroupKey, State, kpi, merge
from streams.config import Settings
from streams.windows import SegmentKey, rolling_window, window_bounds
from streams.worker.exposition import number, render
from streams.worker.metrics import WorkerMetrics

LOG = logging.getLogger("cxpulse.prometheus")
REFRESH_SECONDS = 2.0  # gauges are recomputed this often (and a scrape sees the last computation)
OTHER = "other"
COMPONENTS = ("n", "promoters", "passives", "detractors", "positive", "high_effort", "sum_x", "sum_x2")
LABELS = ["metric", "channel", "journey", "window"]
SINK = "prometheus"


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
    windows = {w: rolling_window(panes, now_ms, w * 1000, pane_ms) for w in windows_s}
    return window_families(windows, window_bounds(now_ms, pane_ms, pane_ms)[1], cap)


def window_rows(
    windows: Mapping[int, Mapping[SegmentKey, State]], cap: int
) -> tuple[list[tuple[str, str, str, str, State]], int]:
    """(window label, channel, journey, metric, state) of every group with answers, the segments beyond the ``cap``
    largest (by answers in the longest window) folded into channel and journey ``other``; and how many were."""
    longest = windows[max(windows)]
    sizes: dict[tuple[str, str], int] = defaultdict(int)
    for (channel, journey, _), state in longest.items():
        sizes[(channel, journey)] += state.n
    kept = {segment for segment, _ in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:cap]}
    rows: list[tuple[str, str, str, str, State]] = []
    for window_s in sorted(windows):
        grouped: dict[tuple[str, str, str], State] = {}
        for (channel, journey, metric), state in windows[window_s].items():
            key = (channel, journey, metric) if (channel, journey) in kept else (OTHER, OTHER, metric)
            before = grouped.get(key)
            grouped[key] = state if before is None else merge(before, state)
        label = window_label(window_s)
        rows.extend((label, *key, state) for key, state in sorted(grouped.items()) if state.n > 0)
    return rows, len(sizes) - len(kept)


_HELP = {
    "value": "KPI value of a rolling window (docs/contract.md section 4)",
    "moe95": "Half-width of the KPI's 95% interval (n >= 2)",
    "responses": "Answers counted in the rolling window (n)",
    "component": "Additive counters of the rolling window: sum them over series, then compute, for exact rollups",
    "end": "The pane boundary the rolling windows end at (processing clock)",
    "folded": "Segments beyond CXPULSE_LABEL_CAP, exported as channel/journey other",
}


def _component(state: State, name: str) -> float:
    return state.sum_x if name == "sum_x" else state.sum_x2 if name == "sum_x2" else float(getattr(state, name))


def window_families(
    windows: Mapping[int, Mapping[SegmentKey, State]], end_ms: int, cap: int, components: Container[int] | None = None
) -> tuple[list[Metric], int]:
    """The gauge families of rolling windows (window seconds -> per (channel, journey, metric) state) that end at
    ``end_ms``, and how many segments were folded into other.  ``components``: the windows whose additive
    components are exported (None: all; CXPULSE_KPI_COMPONENT_WINDOWS), eight series per KPI, most of the page.
    :func:`window_text` writes the same page without building the families (what a scrape serves)."""
    rows, folded = window_rows(windows, cap)
    wanted = {window_label(w) for w in windows if components is None or w in components}
    value = GaugeMetricFamily("cxpulse_kpi_value", _HELP["value"], labels=LABELS)
    moe = GaugeMetricFamily("cxpulse_kpi_moe95", _HELP["moe95"], labels=LABELS)
    responses = GaugeMetricFamily("cxpulse_kpi_responses", _HELP["responses"], labels=LABELS)
    component = GaugeMetricFamily("cxpulse_kpi_component", _HELP["component"], labels=[*LABELS, "component"])
    for label, channel, journey, metric, state in rows:
        labels = [metric, channel, journey, label]
        k = kpi(metric, state)
        value.add_metric(labels, k.value)
        if k.moe95 is not None:
            moe.add_metric(labels, k.moe95)
        responses.add_metric(labels, state.n)
        if label in wanted:
            for name in COMPONENTS:
                component.add_metric([*labels, name], _component(state, name))
    end = GaugeMetricFamily("cxpulse_kpi_window_end_seconds", _HELP["end"])
    end.add_metric([], end_ms / 1000)
    folded_family = GaugeMetricFamily("cxpulse_kpi_folded_segments", _HELP["folded"])
    folded_family.add_metric([], folded)
    return [value, moe, responses, component, end, folded_family], folded


def window_text(
    windows: Mapping[int, Mapping[SegmentKey, State]], end_ms: int, cap: int, components: Container[int] | None = None
) -> bytes:
    """:func:`window_families` as the text page, byte for byte, written straight from the states (at the label cap
    the families alone take half a second to build).  Labels are valid as they are: channel and journey match
    ``^[a-z0-9][a-z0-9_.-]*$``, the rest are fixed names."""
    rows, folded = window_rows(windows, cap)
    wanted = {window_label(w) for w in windows if components is None or w in components}
    value: list[str] = []
    moe: list[str] = []
    responses: list[str] = []
    component: list[str] = []
    for label, channel, journey, metric, state in rows:
        common = f'channel="{channel}",journey="{journey}",metric="{metric}"'
        labels = f'{{{common},window="{label}"}}'
        k = kpi(metric, state)
        value.append(f"cxpulse_kpi_value{labels} {number(k.value)}\n")
        if k.moe95 is not None:
            moe.append(f"cxpulse_kpi_moe95{labels} {number(k.moe95)}\n")
        responses.append(f"cxpulse_kpi_responses{labels} {number(state.n)}\n")
        if label in wanted:
            component.extend(
                f'cxpulse_kpi_component{{channel="{channel}",component="{name}",journey="{journey}",'
                f'metric="{metric}",window="{label}"}} {number(_component(state, name))}\n'
                for name in COMPONENTS
            )
    parts = []
    for name, key, samples in (
        ("cxpulse_kpi_value", "value", value),
        ("cxpulse_kpi_moe95", "moe95", moe),
        ("cxpulse_kpi_responses", "responses", responses),
        ("cxpulse_kpi_component", "component", component),
        (
            "cxpulse_kpi_window_end_seconds",
            "end",
            [f"cxpulse_kpi_window_end_seconds {number(end_ms / 1000)}\n"],
        ),
        ("cxpulse_kpi_folded_segments", "folded", [f"cxpulse_kpi_folded_segments {number(folded)}\n"]),
    ):
        parts.append(f"# HELP {name} {_HELP[key]}\n# TYPE {name} gauge\n")
        parts.extend(samples)
    return "".join(parts).encode()


def component_windows(settings: Settings) -> set[int] | None:
    """The windows whose additive components are exported (None: all of them)."""
    return None if settings.kpi_component_windows is None else set(settings.kpi_component_windows)


def _shift(total: State | None, new: State, old: State) -> State | None:
    """total + new - old, field by field (integer counters: exact); None when nothing is left."""
    base = total or ZERO
    out = State._make(t + a - b for t, a, b in zip(base, new, old, strict=True))
    return out if out.n else None


class RollingView:
    """Rolling windows kept as running sums, so a refresh costs the panes that changed, not the whole table.

    A pane that changes adds its difference to every window holding it; when the pane boundary moves, the panes
    that enter a window are added and those that leave it subtracted.  The counters are integers, so the sums are
    exactly :func:`streams.windows.rolling_window` of the same panes (tests/unit/sinks/test_prometheus.py)."""

    def __init__(self, windows_s: Iterable[int], pane_ms: int) -> None:
        self.windows_ms = {w: w * 1000 for w in windows_s}
        self.pane_ms = pane_ms
        self.panes: dict[GroupKey, State] = {}
        self.by_pane: dict[int, set[SegmentKey]] = defaultdict(set)
        self.end: int | None = None  # the pane boundary the windows end at
        self.totals: dict[int, dict[SegmentKey, State]] = {w: {} for w in self.windows_ms}

    def put(self, key: GroupKey, state: State) -> None:
        """The pane group ``key`` now holds ``state``."""
        old = self.panes.get(key, ZERO)
        self.panes[key] = state
        self.by_pane[key[0]].add(key[1:])
        self._apply(key, state, old)

    def drop_before(self, cutoff_ms: int) -> list[GroupKey]:
        """Forget the panes that start before ``cutoff_ms``; return their keys."""
        dropped = []
        for pane in [p for p in self.by_pane if p < cutoff_ms]:
            for segment in self.by_pane.pop(pane):
                key = (pane, *segment)
                self._apply(key, ZERO, self.panes.pop(key))
                dropped.append(key)
        return dropped

    def advance(self, now_ms: int) -> None:
        """Move the windows to the pane boundary at or before ``now_ms``."""
        end = window_bounds(now_ms, self.pane_ms, self.pane_ms)[1]
        if self.end is not None and self.end <= end <= self.end + min(self.windows_ms.values()):
            for window_s, window_ms in self.windows_ms.items():
                for pane in range(self.end, end, self.pane_ms):
                    self._move(window_s, pane, +1)
                for pane in range(self.end - window_ms, end - window_ms, self.pane_ms):
                    self._move(window_s, pane, -1)
        elif self.end != end:  # the first call, a long pause or a clock set back: sum afresh
            self.totals = {w: rolling_window(self.panes, now_ms, ms, self.pane_ms) for w, ms in self.windows_ms.items()}
        self.end = end

    def _move(self, window_s: int, pane: int, sign: int) -> None:
        totals = self.totals[window_s]
        for segment in self.by_pane.get(pane, ()):
            state = self.panes[(pane, *segment)]
            new, old = (state, ZERO) if sign > 0 else (ZERO, state)
            shifted = _shift(totals.get(segment), new, old)
            if shifted is None:
                totals.pop(segment, None)
            else:
                totals[segment] = shifted

    def _apply(self, key: GroupKey, new: State, old: State) -> None:
        if self.end is None:
            return
        segment = key[1:]
        for window_s, window_ms in self.windows_ms.items():
            if self.end - window_ms <= key[0] < self.end:
                totals = self.totals[window_s]
                shifted = _shift(totals.get(segment), new, old)
                if shifted is None:
                    totals.pop(segment, None)
                else:
                    totals[segment] = shifted


class Snapshot(Collector):
    """The last computed families, served at scrape time (set on the event loop, read by the metrics thread).

    Set either as families (``families = [...]``) or as a function that builds them (:meth:`set_lazy`: at the
    label cap the KPI view's families are 82,500 samples, built only when a scrape asks, once per refresh).
    :meth:`exposition` is their text, rendered once per change (streams.worker.exposition)."""

    def __init__(self) -> None:
        self._make: Callable[[], list[Metric]] = list
        self._built: tuple[Callable[[], list[Metric]], list[Metric], bytes | None] | None = None
        self._lock = threading.Lock()
        self._text: Callable[[], bytes] | None = None
        self._written: tuple[Callable[[], bytes], bytes] | None = None

    @property
    def families(self) -> list[Metric]:
        return self._current()[1]

    @families.setter
    def families(self, families: list[Metric]) -> None:
        self.set_lazy(lambda: families)

    def set_lazy(self, make: Callable[[], list[Metric]], text: Callable[[], bytes] | None = None) -> None:
        """``make`` builds the families; ``text``, when given, writes their page without building them."""
        self._text = text
        self._make = make

    def _current(self) -> tuple[Callable[[], list[Metric]], list[Metric], bytes | None]:
        with self._lock:
            make = self._make
            if self._built is None or self._built[0] is not make:
                self._built = (make, make(), None)
            return self._built

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def exposition(self) -> bytes:
        writer = self._text
        if writer is not None:
            with self._lock:
                if self._written is not None and self._written[0] is writer:
                    return self._written[1]
            page = writer()
            with self._lock:
                self._written = (writer, page)
            return page
        make, families, text = self._current()
        if text is None:
            text = render(families)
            with self._lock:
                if self._built is not None and self._built[0] is make:
                    self._built = (make, families, text)
        return text


def measure_sink_lag(
    app: faust.App,
    metrics: WorkerMetrics,
    sink: str,
    topic: str,
    applied: dict[int, int],
    *,
    transactional: bool = False,
) -> None:
    """``cxpulse_sink_lag_messages`` of a sink agent: the end offset of each of its partitions (as Faust's consumer
    last saw it) minus the next offset the agent will apply.  On a ``transactional`` topic the last offset is the
    commit marker that ends the last transaction, not a message: not counted (it kept an idle sink at 1).
    Partitions no longer assigned lose their series.  The process's progress sees each partition too."""
    progress = metrics.health.progress
    assigned = {tp.partition: tp for tp in app.consumer.assignment() if tp.topic == topic}
    for partition in [p for p in applied if p not in assigned]:
        del applied[partition]
        progress.forget(f"{sink}:{topic}[{partition}]")
        with contextlib.suppress(KeyError):
            metrics.sink_lag.remove(sink, str(partition))
    for partition, tp in assigned.items():
        try:
            end = app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - not fetched yet
            continue
        if end is not None and end >= 0:
            done = applied.get(partition)
            if done is None:  # nothing applied since the assignment: Faust's committed offset says where it stands
                continue
            lag = max(0, end - done - (1 if transactional else 0))
            metrics.sink_lag.labels(sink, str(partition)).set(lag)
            progress.observe(f"{sink}:{topic}[{partition}]", done, lag)


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
    metrics: WorkerMetrics,
) -> None:
    """Add the view's table, agent and timer to the worker's Faust app."""
    schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
    view = app.Table("kpi-view", default=None, partitions=partitions, schema=schema)
    pane_ms = settings.pane_seconds * 1000
    keep_ms = max(settings.windows_seconds) * 1000 + pane_ms  # older panes are in no window
    results_name = results.get_topic_name()
    metrics.sink_errors.labels(SINK)  # a series from the start, at 0 (a rate of it is 0, not missing)
    index = RollingView(settings.windows_seconds, pane_ms)
    indexed: set[int] | None = None  # the partitions the index was built for (rebuilt from the table on a change)
    where: dict[GroupKey, int] = {}  # pane group -> its results partition
    applied: dict[int, int] = {}  # results partition -> the next offset to apply (for the sink lag)
    stamps: list[int] = []  # Kafka timestamps of the results applied since the last refresh (for the latency)

    def key_of(table_key: str) -> tuple[int, GroupKey]:
        partition, channel, journey, metric, pane = table_key.split("|")
        return int(partition), (int(pane), channel, journey, metric)

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
                    metrics.sink_errors.labels(SINK).inc()
                    LOG.warning(
                        "%s[%d] offset %d is not a WindowResult", results_name, message.partition, message.offset
                    )
                    continue
                key = view_key(
                    message.partition, record["channel"], record["journey"], record["metric"], record["window_start"]
                )
                value = [record["version"], *state_of(record)]
                applied[message.partition] = message.offset + 1
                stamps.append(int(message.timestamp * 1000))
                before = latest.get(key) or view.get(key)
                if before is None or before[0] < value[0]:
                    latest[key] = value
            for key, value in latest.items():
                view[key] = value
                partition, group = key_of(key)
                if indexed is not None and partition in indexed:
                    index.put(group, State(*value[1:]))
                    where[group] = partition
            if latest:
                await asyncio.to_thread(flush)  # the table's changelog, before the batch is acked
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    @app.timer(interval=REFRESH_SECONDS)  # type: ignore[untyped-decorator]
    async def refresh_kpis() -> None:
        nonlocal index, indexed
        now_ms = int(time.time() * 1000)
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == results_name}
        if assigned != indexed:  # start, recovery or rebalance: index what the table holds for these partitions
            index = RollingView(settings.windows_seconds, pane_ms)
            where.clear()
            for key, value in list(view.items()):
                partition, group = key_of(key)
                if partition in assigned:
                    index.put(group, State(*value[1:]))
                    where[group] = partition
            indexed = assigned
        index.advance(now_ms)
        totals = {window: dict(states) for window, states in index.totals.items()}  # the view moves on: a copy
        end, cap, components = cast(int, index.end), settings.label_cap, component_windows(settings)
        snapshot.set_lazy(  # built, or written straight as text, when a scrape asks
            lambda: window_families(totals, end, cap, components)[0],
            lambda: window_text(totals, end, cap, components),
        )
        shown_ms = int(time.time() * 1000)
        for stamp in stamps:
            if stamp > 0:
                metrics.event_to_gauge.observe(max(0, shown_ms - stamp) / 1000)
        stamps.clear()
        measure_sink_lag(app, metrics, SINK, results_name, applied)
        old = index.drop_before(now_ms - keep_ms)
        for group in old:
            key = view_key(where.pop(group), group[1], group[2], group[3], group[0])
            if key in view:
                del view[key]
        if old:
            await asyncio.to_thread(flush)
