"""The Prometheus view's pure parts: rolling-window KPI gauges per (metric, channel, journey, window).

sinks/kpi_view.py (the agent) keeps the latest version of every pane result and, every refresh, the running sums
of the rolling windows (:class:`RollingView`: exactly :func:`streams.core.windows.rolling_window` of the same panes,
docs/contract.md section 5); a scrape gets their page from a :class:`Snapshot`, written straight from the states
(:func:`window_text`, byte for byte prometheus_client's page of :func:`window_families`).

Gauges, all with labels metric, channel, journey, window (5m, 1h, 24h):

- ``cxpulse_kpi_value``: NPS/NLS -100..100, CSAT/CAS %, CES mean ease 1..7;
- ``cxpulse_kpi_moe95``: half-width of the 95% interval (absent when n < 2);
- ``cxpulse_kpi_responses``: n;
- ``cxpulse_kpi_component{component}``: n, promoters, passives, detractors, positive, high_effort, sum_x,
  sum_x2: sum the components of any set of series, then compute, and a rollup is exact (never average values);
  only for the windows of ``CXPULSE_KPI_COMPONENT_WINDOWS`` when that is set.

A segment with no answer in the longest window has no series.  Beyond ``CXPULSE_LABEL_CAP`` segments a worker
exports the largest ones and folds the rest into channel ``other``, journey ``other`` (counted in
``cxpulse_kpi_folded_segments``), so rollups stay exact and the series count bounded.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Mapping

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.agents.exposition import number, render
from streams.config import Settings
from streams.core.aggregate import ZERO, GroupKey, State, kpi, merge
from streams.core.comments import ANY
from streams.core.windows import SegmentKey, rolling_window, window_bounds

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


THEME_SEPARATOR = "|"  # the theme view's groups: (pane, channel, journey, "METRIC|theme")


def theme_key(pane: int, channel: str, journey: str, metric: str, theme: str) -> GroupKey:
    """A group of the theme view: a RollingView over the pane results' mentions, the state's n their count."""
    return (pane, channel, journey, f"{metric}{THEME_SEPARATOR}{theme}")


def theme_families(windows: Mapping[int, Mapping[SegmentKey, State]], cap: int) -> list[Metric]:
    """``cxpulse_theme_answers{channel,theme,window}``: per channel (all its journeys and metrics), the answers of
    the rolling window whose comment mentions each theme ("(any)": those with a comment), from the theme view's
    windows.  Labels stay bounded: the taxonomy's themes, and the ``cap`` channels with the most commented answers
    in the longest window (the rest folded into channel ``other``)."""
    counts: dict[tuple[int, str, str], int] = defaultdict(int)
    for window_s, totals in windows.items():
        for (channel, _, group), state in totals.items():
            counts[(window_s, channel, group.partition(THEME_SEPARATOR)[2])] += state.n
    longest = max(windows) if windows else 0
    sizes = {channel: n for (window_s, channel, theme), n in counts.items() if window_s == longest and theme == ANY}
    kept = {channel for channel, _ in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:cap]}
    folded: dict[tuple[str, str, str], int] = defaultdict(int)
    for (window_s, channel, theme), n in counts.items():
        folded[(window_label(window_s), channel if channel in kept else OTHER, theme)] += n
    family = GaugeMetricFamily(
        "cxpulse_theme_answers",
        "Answers in the rolling window whose comment mentions the theme ('(any)': answers with a comment), per "
        "channel over its journeys and metrics (docs/contract.md section 9)",
        labels=["channel", "theme", "window"],
    )
    for (label, channel, theme), n in sorted(folded.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])):
        if n > 0:
            family.add_metric([channel, theme, label], n)
    return [family]


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
    exactly :func:`streams.core.windows.rolling_window` of the same panes (tests/unit/sinks/test_prometheus.py)."""

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
    :meth:`exposition` is their text, rendered once per change (streams.agents.exposition)."""

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
