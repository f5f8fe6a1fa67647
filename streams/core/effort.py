"""The effort-spike detector of docs/contract.md section 7, pure: a Bernoulli CUSUM on the high-effort share of one
(channel, journey), fed one closed pane at a time.  The one implementation, used by the stream's detector and
by ``cxpulse replay --alerts``.

For every closed pane: the baseline p0 = h_B / n_B over the ``baseline`` (24 h) that ends ``guard`` (30 min)
before the pane starts (skipped, S unchanged, when n_B < ``min_baseline``), clamped to [0.01, 0.98];
p1 = min(0.99, p0 + delta); S = min(2H, max(0, S + h ln(p1/p0) + (n - h) ln((1 - p1)/(1 - p0)))); the alert
fires when S reaches H and resolves when S is back at 0.  For people, each evaluation also reports the short
window (the 5 minutes ending with the pane): p_s, z = (p_s - p0) / sqrt(p0 (1 - p0) / n_s), and on a change of
state the root cause: the touchpoints and reason codes with the most high-effort answers beyond what their own
baseline share predicts (excess = h_s - n_s * h_B / n_B, the segment's p0 for a driver without baseline
answers), top 3 with their short-window counts; then the top 3 themes of the comments (section 9) whose part of the
high-effort share (high-effort answers that mention the theme, among all answers) rose most.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from streams.core.quotes import Quotes, quotes_in

DriverCounts = Mapping[str, tuple[int, int]]  # "TOUCHPOINT:ivr" / "REASON_CODE:hold_time" -> (n, high_effort)
THEME_PREFIX = "THEME:"  # the drivers that are themes of the comments ("THEME:waiting")


@dataclass(frozen=True)
class EffortConfig:
    """The detector's parameters (docs/contract.md section 7 defaults)."""

    delta: float = 0.10  # design shift of the high-effort share
    threshold: float = 10.0  # H
    guard_ms: int = 30 * 60_000  # the baseline ends this long before the evaluated pane starts
    baseline_ms: int = 24 * 3_600_000
    min_baseline: int = 200  # fewer CES answers in the baseline: the pane is skipped
    short_ms: int = 5 * 60_000  # the short window reported for people
    top: int = 3  # drivers in a root cause


class PaneEffort(NamedTuple):
    """The CES answers of one segment in one pane: how many, how many high-effort, and by driver."""

    n: int
    high: int
    drivers: DriverCounts = {}
    quotes: Quotes = ()  # the latest comments of its high-effort answers (streams.core.quotes)


@dataclass
class DetectorState:
    """What the detector remembers per segment between panes."""

    s: float = 0.0
    firing: bool = False
    evaluated: int | None = None  # start of the last pane evaluated


class Driver(NamedTuple):
    """A touchpoint, reason code or comment theme in a root cause, with its counts in the short window."""

    kind: str  # TOUCHPOINT, REASON_CODE or THEME
    name: str
    high_effort: int
    n: int


class Evaluation(NamedTuple):
    """One closed pane evaluated: the statistic after it, and the alert event when the state changed."""

    pane: int
    s: float
    firing: bool
    p0: float | None  # None when the baseline was too small (the pane was skipped)
    p_short: float | None
    z: float | None
    n_short: int
    n_baseline: int
    change: str | None  # FIRING, RESOLVED or None
    root_cause: tuple[Driver, ...]
    quotes: Quotes = ()  # FIRING: the latest comments of high-effort answers in the short window


ROOT_CAUSE_Z = 1.96  # a driver's rise must be this many standard deviations above its baseline share


def totals(panes: Mapping[int, PaneEffort], start: int, end: int, pane_ms: int) -> tuple[int, int]:
    """(n, high) over the panes that start in [start, end)."""
    n = high = 0
    for pane in range(start - start % pane_ms, end, pane_ms):
        counts = panes.get(pane)
        if counts is not None and pane >= start:
            n += counts.n
            high += counts.high
    return n, high


def driver_totals(panes: Mapping[int, PaneEffort], start: int, end: int, pane_ms: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pane in range(start - start % pane_ms, end, pane_ms):
        counts = panes.get(pane)
        if counts is None or pane < start:
            continue
        for name, (n, high) in counts.drivers.items():
            both = out.setdefault(name, [0, 0])
            both[0] += n
            both[1] += high
    return out


def root_cause(
    panes: Mapping[int, PaneEffort], config: EffortConfig, pane: int, pane_ms: int, p0: float
) -> tuple[Driver, ...]:
    """The drivers that carry a spike, each named only when its rise is significant on its own (one-sided,
    z >= ROOT_CAUSE_Z against the binomial spread at its baseline share), so a touchpoint that merely has answers
    in the window is not called a cause.  The same rule for the stream and replay: this one function.

    - touchpoints and reason codes (section 7): most high-effort answers in the short window beyond their own
      baseline high-effort share (h - n * share), top ``config.top``;
    - then themes of the comments (section 9): the theme's part of the high-effort share, the high-effort answers
      that mention it among all the segment's answers, against the baseline (h_T - n_s * h_T,B / n_B).  Those who
      complain about something are high-effort nearly always, before a spike as during it; what marks a spike's
      theme is that more of the answers are high-effort complaints about it; top ``config.top``."""
    end = pane + pane_ms
    short = driver_totals(panes, end - config.short_ms, end, pane_ms)
    base_end = pane - config.guard_ms
    baseline = driver_totals(panes, base_end - config.baseline_ms, base_end, pane_ms)
    n_short = totals(panes, end - config.short_ms, end, pane_ms)[0]
    n_base = totals(panes, base_end - config.baseline_ms, base_end, pane_ms)[0]
    ranked: dict[bool, list[tuple[float, str, int, int]]] = {False: [], True: []}  # by: is it a theme
    for name, (n, high) in short.items():
        base_n, base_high = baseline.get(name, (0, 0))
        theme = name.startswith(THEME_PREFIX)
        if theme:  # of all the answers: how many are high-effort and mention it, against the baseline
            trials, share = n_short, base_high / n_base if n_base else 0.0
        else:  # of the answers naming it: how many are high-effort, against its own baseline (p0 without one)
            trials, share = n, base_high / base_n if base_n else p0
        share = min(0.98, max(0.01, share))  # clamped as p0 is
        excess = high - trials * share
        if excess > 0 and excess >= ROOT_CAUSE_Z * math.sqrt(trials * share * (1 - share)):
            ranked[theme].append((-excess, name, high, n))
    out = []
    for found in ranked.values():  # the touchpoints and reason codes, then the themes
        for _, name, high, n in sorted(found)[: config.top]:
            kind, _, label = name.partition(":")
            out.append(Driver(kind, label, high, n))
    return tuple(out)


def evaluate(
    config: EffortConfig,
    state: DetectorState,
    panes: Mapping[int, PaneEffort],
    pane: int,
    pane_ms: int,
    baseline: tuple[int, int] | None = None,
    short: tuple[int, int] | None = None,
) -> Evaluation:
    """Feed the closed pane starting at ``pane`` to the CUSUM (``state`` is updated in place).

    ``panes`` holds the segment's CES counts by pane start; ``baseline`` and ``short`` may be given as (n, high)
    by a caller that keeps running sums (replay), else they are summed from ``panes``."""
    base_end = pane - config.guard_ms
    if baseline is None:
        baseline = totals(panes, base_end - config.baseline_ms, base_end, pane_ms)
    n_base, h_base = baseline
    end = pane + pane_ms
    if short is None:
        short = totals(panes, end - config.short_ms, end, pane_ms)
    n_short, h_short = short
    state.evaluated = pane
    p0: float | None = None
    change = None
    if n_base >= config.min_baseline:
        p0 = min(0.98, max(0.01, h_base / n_base))
        p1 = min(0.99, p0 + config.delta)
        counts = panes.get(pane, PaneEffort(0, 0))
        step = counts.high * math.log(p1 / p0) + (counts.n - counts.high) * math.log((1 - p1) / (1 - p0))
        state.s = min(2 * config.threshold, max(0.0, state.s + step))
        if not state.firing and state.s >= config.threshold:
            state.firing, change = True, "FIRING"
        elif state.firing and state.s <= 0.0:
            state.firing, change = False, "RESOLVED"
    p_short = h_short / n_short if n_short else None
    z = None
    if p_short is not None and p0 is not None:
        z = (p_short - p0) / math.sqrt(p0 * (1 - p0) / n_short)
    causes = root_cause(panes, config, pane, pane_ms, p0) if change is not None and p0 is not None else ()
    said: Quotes = ()
    if change == "FIRING":
        said = quotes_in({start: counts.quotes for start, counts in panes.items()}, end - config.short_ms, end)
    return Evaluation(pane, state.s, state.firing, p0, p_short, z, n_short, n_base, change, causes, said)


def alert_record(channel: str, journey: str, evaluation: Evaluation, pane_ms: int) -> dict[str, object]:
    """The EffortAlert record (schemas/effort_alert.avsc) of an evaluation that changed the state."""
    return {
        "state": evaluation.change,
        "channel": channel,
        "journey": journey,
        "cusum": evaluation.s,
        "p_short": evaluation.p_short,
        "p0": evaluation.p0,
        "z": evaluation.z,
        "n_short": evaluation.n_short,
        "n_baseline": evaluation.n_baseline,
        "root_cause": [
            {"kind": d.kind, "name": d.name, "high_effort": d.high_effort, "n": d.n} for d in evaluation.root_cause
        ],
        "comments": [quote.text for quote in evaluation.quotes],
        "at": evaluation.pane + pane_ms,
    }


def evaluate_range(
    config: EffortConfig, state: DetectorState, panes: Mapping[int, PaneEffort], first: int, last: int, pane_ms: int
) -> list[Evaluation]:
    """Feed the closed panes [first, last] to the CUSUM in order, with running baseline and short-window sums (a
    day of panes costs a day of steps, not a day times the baseline)."""
    window = _Running(panes)
    out = []
    for pane in range(first, last + pane_ms, pane_ms):
        base_end = pane - config.guard_ms
        end = pane + pane_ms
        out.append(
            evaluate(
                config,
                state,
                panes,
                pane,
                pane_ms,
                baseline=window.sum("b", base_end - config.baseline_ms, base_end, pane_ms),
                short=window.sum("s", end - config.short_ms, end, pane_ms),
            )
        )
    return out


def replay_alerts(
    segments: Mapping[tuple[str, str], Mapping[int, PaneEffort]],
    config: EffortConfig,
    pane_ms: int,
    first: int,
    last: int,
) -> Iterable[dict[str, object]]:
    """Every FIRING / RESOLVED of every segment, panes [first, last] closing in event-time order (replay)."""
    events: list[tuple[int, str, str, dict[str, object]]] = []
    for (channel, journey), panes in segments.items():
        for evaluation in evaluate_range(config, DetectorState(), panes, first, last, pane_ms):
            if evaluation.change is not None:
                events.append((evaluation.pane, channel, journey, alert_record(channel, journey, evaluation, pane_ms)))
    events.sort(key=lambda item: item[:3])
    return [record for _, _, _, record in events]


class _Running:
    """Sums of (n, high) over a window that only moves forward, one pane in and one pane out per step."""

    def __init__(self, panes: Mapping[int, PaneEffort]) -> None:
        self.panes = panes
        self.state: dict[str, tuple[int, int, int, int]] = {}  # name -> (start, end, n, high)

    def sum(self, name: str, start: int, end: int, pane_ms: int) -> tuple[int, int]:
        start -= start % pane_ms
        end -= end % pane_ms
        before = self.state.get(name)
        if before is None or start < before[0] or end < before[1]:
            n, high = totals(self.panes, start, end, pane_ms)
        else:
            old_start, old_end, n, high = before
            for pane in range(old_end, end, pane_ms):  # panes entering
                counts = self.panes.get(pane)
                if counts is not None:
                    n, high = n + counts.n, high + counts.high
            for pane in range(old_start, min(start, old_end), pane_ms):  # panes leaving
                counts = self.panes.get(pane)
                if counts is not None:
                    n, high = n - counts.n, high - counts.high
            if start > old_end:
                n, high = totals(self.panes, start, end, pane_ms)
        self.state[name] = (start, end, n, high)
        return n, high
