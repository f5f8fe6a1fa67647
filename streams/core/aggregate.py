"""The aggregation core (docs/contract.md sections 3 and 4): per-response categories, the additive counter state of a
group, its merge, and the KPI values computed from it.

The one implementation of every formula, used by the stream agents, ``cxpulse replay`` and the tests.

``sum_x`` and ``sum_x2`` are kept as exact fixed-point integers (``sx`` in units of 1/X_SCALE, ``sx2`` in
units of 1/X2_SCALE), so merging is exactly associative and commutative: a stream that merges partials in
any order, and a replay that adds events one file at a time, arrive at the same bits.  For every scale with
``hi - lo`` <= 10 (all default scales) and many more (0-100, ...) the fixed-point value is exact; otherwise it
is rounded to the nearest 1/X_SCALE per response (< 2e-10).  Floats appear only at the edge (``sum_x``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import reduce
from itertools import repeat
from operator import add, mul
from typing import NamedTuple, TypeVar

from streams.core.comments import ANY
from streams.core.validate import Feedback, normalise_label_or_none

X_SCALE = 2520 * 10**6  # 2520 = lcm(1..10): x = k/d is exact for every d <= 10
X2_SCALE = 2520**2 * 10**3  # x^2 = k^2/d^2 is exact for every d <= 10


class State(NamedTuple):
    """Additive counters of one group: a commutative monoid under :func:`merge` with identity ``ZERO``."""

    n: int = 0
    promoters: int = 0
    passives: int = 0
    detractors: int = 0
    positive: int = 0
    high_effort: int = 0
    sx: int = 0  # sum of x, in units of 1 / X_SCALE
    sx2: int = 0  # sum of x^2, in units of 1 / X2_SCALE

    @property
    def sum_x(self) -> float:
        return self.sx / X_SCALE

    @property
    def sum_x2(self) -> float:
        return self.sx2 / X2_SCALE


ZERO = State()


def merge(a: State, b: State) -> State:
    """The state of the union of two disjoint sets of responses."""
    return State._make(map(add, a, b))  # field by field; map over the tuples runs in C


def merge_all(states: Iterable[State]) -> State:
    """Merge any number of states (ZERO for none)."""
    return reduce(merge, states, ZERO)


def times(state: State, k: int) -> State:
    """The state of k copies of the responses in ``state``."""
    return State._make(map(mul, state, repeat(k)))


def _round_div(num: int, den: int) -> int:
    """num / den rounded half up, in integers (num, den >= 0)."""
    return (2 * num + den) // (2 * den)


_contributions: dict[tuple[str, int, int, int], State] = {}


def contribution(metric: str, score: int, lo: int, hi: int) -> State:
    """The state of a single response (docs/contract.md section 3); cached, there are few distinct answers."""
    key = (metric, score, lo, hi)
    cached = _contributions.get(key)
    if cached is not None:
        return cached
    d = hi - lo
    k = score - lo
    promoter = passive = detractor = positive = high_effort = 0
    if metric in ("NPS", "NLS"):
        promoter = int(score >= 9)
        passive = int(7 <= score <= 8)
        detractor = int(score <= 6)
    elif metric in ("CSAT", "CAS"):
        positive = int(4 * k >= 3 * d)
    elif metric == "CES":
        high_effort = int(2 * k < d)
    state = State(
        1,
        promoter,
        passive,
        detractor,
        positive,
        high_effort,
        _round_div(k * X_SCALE, d),
        _round_div(k * k * X2_SCALE, d * d),
    )
    _contributions[key] = state
    return state


GroupKey = tuple[int, str, str, str]  # (pane_start_ms, channel, journey, metric)


def aggregate_panes(events: Iterable[Feedback], pane_ms: int) -> dict[GroupKey, State]:
    """Aggregate a batch of valid events into pane partials per (pane_start, channel, journey, metric).

    Counts identical answers first (C-speed ``Counter``), then turns each distinct answer into counters
    once: the cost per event is one tuple and one hash, whatever the number of counters.
    """
    tally = Counter(
        (
            e.occurred_at - e.occurred_at % pane_ms,
            e.channel,
            e.journey,
            e.metric,
            e.score,
            e.scale_min,
            e.scale_max,
        )
        for e in events
    )
    partials: dict[GroupKey, State] = {}
    for (pane, channel, journey, metric, score, lo, hi), count in tally.items():
        key = (pane, channel, journey, metric)
        add = times(contribution(metric, score, lo, hi), count)
        current = partials.get(key)
        partials[key] = add if current is None else merge(current, add)
    return partials


ThemeKey = tuple[int, str, str, str, str]  # (pane_start_ms, channel, journey, metric, theme)


def aggregate_theme_panes(events: Iterable[Feedback], pane_ms: int) -> dict[ThemeKey, State]:
    """The theme results' pane partials (docs/contract.md section 9): per (pane_start, channel, journey, metric,
    theme), the counters of the answers whose comment mentions the theme ("(any)": every answer with a comment).
    Answers without themes cost one attribute read."""
    tally = Counter(
        (e.occurred_at - e.occurred_at % pane_ms, e.channel, e.journey, e.metric, theme, e.score, e.scale_min,
         e.scale_max)
        for e in events
        if e.themes
        for theme in e.themes
    )  # fmt: skip
    partials: dict[ThemeKey, State] = {}
    for (pane, channel, journey, metric, theme, score, lo, hi), count in tally.items():
        key = (pane, channel, journey, metric, theme)
        add = times(contribution(metric, score, lo, hi), count)
        current = partials.get(key)
        partials[key] = add if current is None else merge(current, add)
    return partials


Mentions = dict[str, int]  # theme -> answers whose comment mentions it ("(any)": answers with a comment)


def aggregate_mentions(events: Iterable[Feedback], pane_ms: int) -> dict[GroupKey, Mentions]:
    """Per (pane_start, channel, journey, metric): how many answers mention each theme, the ``n`` of the theme
    results (docs/contract.md section 9) that the pane results carry for the live gauges."""
    tally = Counter(  # by the answer's whole set of themes first: one key an answer, not one a theme
        (e.occurred_at - e.occurred_at % pane_ms, e.channel, e.journey, e.metric, e.themes) for e in events if e.themes
    )
    out: dict[GroupKey, Mentions] = {}
    for (pane, channel, journey, metric, themes), n in tally.items():
        counts = out.setdefault((pane, channel, journey, metric), {})
        for theme in themes:
            counts[theme] = counts.get(theme, 0) + n
    return out


def merge_mentions(a: Mapping[str, int], b: Mapping[str, int]) -> Mentions:
    """The mentions of the union of two sets of answers."""
    out = dict(a)
    for theme, n in b.items():
        out[theme] = out.get(theme, 0) + n
    return out


K = TypeVar("K", GroupKey, ThemeKey)


def merge_into(target: dict[K, State], partials: Mapping[K, State]) -> set[K]:
    """Merge pane partials (of groups, or of theme groups) into a table of pane states in place; return the keys
    that changed."""
    for key, state in partials.items():
        current = target.get(key)
        target[key] = state if current is None else merge(current, state)
    return set(partials)


# --- CES drivers: the "why" of an effort spike (docs/contract.md section 7) ----------------------------------------

DRIVER_CAP = 32  # distinct touchpoints, and distinct reason codes, kept per pane group; the rest fold into "other"
OTHER = "other"
TOUCHPOINT = "TOUCHPOINT"
REASON_CODE = "REASON_CODE"
THEME = "THEME"
SegmentPane = tuple[int, str, str]  # (pane_start_ms, channel, journey)
Drivers = dict[str, tuple[int, int]]  # "TOUCHPOINT:ivr" / "REASON_CODE:hold_time" / "THEME:waiting" -> (n, high)


def aggregate_drivers(events: Iterable[Feedback], pane_ms: int) -> dict[SegmentPane, Drivers]:
    """Per (pane, channel, journey): the CES answers by touchpoint, by reason code and by theme of their comment
    (docs/contract.md section 9; "(any)" left out), (n, high effort) each.

    Names are normalised like labels (one that is not a valid label counts as ``other``); an answer without a
    touchpoint counts under no touchpoint, one with several reason codes (themes) under each."""
    tally: Counter[tuple[int, str, str, str, bool]] = Counter()
    for e in events:
        if e.metric != "CES":
            continue
        high = contribution("CES", e.score, e.scale_min, e.scale_max).high_effort == 1
        pane = e.occurred_at - e.occurred_at % pane_ms
        if e.touchpoint:
            tally[(pane, e.channel, e.journey, f"{TOUCHPOINT}:{_driver_name(e.touchpoint)}", high)] += 1
        for code in e.reason_codes:
            tally[(pane, e.channel, e.journey, f"{REASON_CODE}:{_driver_name(code)}", high)] += 1
        for theme in e.themes:
            if theme != ANY:  # taxonomy names are labels already
                tally[(pane, e.channel, e.journey, f"{THEME}:{theme}", high)] += 1
    out: dict[SegmentPane, Drivers] = {}
    for (pane, channel, journey, name, high), count in tally.items():
        drivers = out.setdefault((pane, channel, journey), {})
        n, h = drivers.get(name, (0, 0))
        drivers[name] = (n + count, h + (count if high else 0))
    return {key: cap_drivers(drivers) for key, drivers in out.items()}


def _driver_name(raw: str) -> str:
    return normalise_label_or_none(raw) or OTHER


def merge_drivers(a: Drivers, b: Drivers) -> Drivers:
    """The drivers of the union of two sets of answers, capped (:func:`cap_drivers`)."""
    out = dict(a)
    for name, (n, h) in b.items():
        before = out.get(name)
        out[name] = (n, h) if before is None else (before[0] + n, before[1] + h)
    return cap_drivers(out)


def cap_drivers(drivers: Drivers) -> Drivers:
    """Keep, per kind, the DRIVER_CAP alphabetically first names and fold the others into ``KIND:other``.

    Keeping the first names of the union only needs the first names of each part, so capping commutes with
    merging: any split of the answers, stream or replay, keeps the same names and the same counts."""
    by_kind: dict[str, list[str]] = {}
    for name in drivers:
        kind, _, label = name.partition(":")
        if label != OTHER:
            by_kind.setdefault(kind, []).append(name)
    fold = [name for names in by_kind.values() if len(names) > DRIVER_CAP for name in sorted(names)[DRIVER_CAP:]]
    if not fold:
        return drivers
    out = dict(drivers)
    for name in fold:
        n, h = out.pop(name)
        other = f"{name.partition(':')[0]}:{OTHER}"
        before = out.get(other, (0, 0))
        out[other] = (before[0] + n, before[1] + h)
    return out


class Kpi(NamedTuple):
    """The values of a group's state (docs/contract.md section 4)."""

    value: float
    moe95: float | None
    mean_normalized: float
    high_effort_pct: float | None  # CES only


def kpi(metric: str, s: State) -> Kpi:
    """KPI value, 95% margin of error and normalised mean of a state with n > 0."""
    n = s.n
    if n <= 0:
        raise ValueError("KPI values need n > 0")
    sum_x = s.sum_x
    mean_normalized = 100.0 * sum_x / n
    moe: float | None = None
    high_effort_pct: float | None = None
    if metric in ("NPS", "NLS"):
        p = s.promoters / n
        q = s.detractors / n
        value = 100.0 * (s.promoters - s.detractors) / n
        if n >= 2:
            moe = 196.0 * math.sqrt(max(0.0, p + q - (p - q) ** 2) / n)
    elif metric in ("CSAT", "CAS"):
        r = s.positive / n
        value = 100.0 * s.positive / n
        if n >= 2:
            moe = 196.0 * math.sqrt(r * (1.0 - r) / n)
    elif metric == "CES":
        value = 1.0 + 6.0 * sum_x / n
        high_effort_pct = 100.0 * s.high_effort / n
        if n >= 2:
            # (sum_x2 - sum_x^2 / n) in exact integers first: no cancellation for near-constant answers
            centred = (s.sx2 * X_SCALE * X_SCALE * n - s.sx * s.sx * X2_SCALE) / (X2_SCALE * X_SCALE * X_SCALE * n)
            variance = max(0.0, centred / (n - 1))
            moe = 1.96 * 6.0 * math.sqrt(variance / n)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return Kpi(value, moe, mean_normalized, high_effort_pct)
