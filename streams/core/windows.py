"""Windows over pane states (docs/contract.md sections 5 and 6): panes, rolling windows, rollups and the window
result record.  Every window and rollup is a merge of pane states, never an average of values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from streams.core.aggregate import X2_SCALE, X_SCALE, GroupKey, State, kpi, merge
from streams.core.quotes import Quote, Quotes

ALL = "*"  # the channel or journey of a rollup over all of them

SegmentKey = tuple[str, str, str]  # (channel, journey, metric)


def pane_start(occurred_at_ms: int, pane_ms: int) -> int:
    """Start of the epoch-aligned pane holding this instant: floor(t / P) * P."""
    return occurred_at_ms - occurred_at_ms % pane_ms


def window_bounds(now_ms: int, window_ms: int, pane_ms: int) -> tuple[int, int]:
    """[start, end) of the rolling window of length W that ends at the current pane boundary."""
    end = pane_start(now_ms, pane_ms)
    return end - window_ms, end


def rolling_window(
    panes: Mapping[GroupKey, State], now_ms: int, window_ms: int, pane_ms: int
) -> dict[SegmentKey, State]:
    """Merge the W/P closed panes that end at the current pane boundary, per (channel, journey, metric)."""
    start, end = window_bounds(now_ms, window_ms, pane_ms)
    out: dict[SegmentKey, State] = {}
    for (pane, channel, journey, metric), state in panes.items():
        if start <= pane < end:
            key = (channel, journey, metric)
            current = out.get(key)
            out[key] = state if current is None else merge(current, state)
    return out


def rollup(states: Mapping[SegmentKey, State], by_channel: bool, by_journey: bool) -> dict[SegmentKey, State]:
    """Merge segment states into coarser ones; a dimension not kept becomes ``*`` (ALL)."""
    out: dict[SegmentKey, State] = {}
    for (channel, journey, metric), state in states.items():
        key = (channel if by_channel else ALL, journey if by_journey else ALL, metric)
        current = out.get(key)
        out[key] = state if current is None else merge(current, state)
    return out


class WindowResult(NamedTuple):
    """One record of docs/contract.md section 6 (timestamps in epoch milliseconds)."""

    window_start: int
    window_end: int
    channel: str
    journey: str
    metric: str
    n: int
    promoters: int
    passives: int
    detractors: int
    positive: int
    high_effort: int
    sum_x: float
    sum_x2: float
    value: float
    moe95: float | None
    mean_normalized: float
    version: int
    drivers: tuple[tuple[str, int, int], ...] = ()  # CES panes: (TOUCHPOINT:x | REASON_CODE:y, n, high), by name
    quotes: Quotes = ()  # CES panes: the latest comments of high-effort answers (streams.core.quotes)
    themes: tuple[tuple[str, int], ...] = ()  # pane results: (theme, answers mentioning it), by theme (section 9)


def window_result(
    window_start: int,
    window_end: int,
    channel: str,
    journey: str,
    metric: str,
    state: State,
    version: int,
    drivers: Mapping[str, tuple[int, int]] | None = None,
    quotes: Quotes = (),
    themes: Mapping[str, int] | None = None,
) -> WindowResult:
    """The result record of one group with n > 0 (``drivers`` and ``quotes`` only for CES panes, ``themes`` for
    panes)."""
    k = kpi(metric, state)
    return WindowResult(
        window_start,
        window_end,
        channel,
        journey,
        metric,
        state.n,
        state.promoters,
        state.passives,
        state.detractors,
        state.positive,
        state.high_effort,
        state.sum_x,
        state.sum_x2,
        k.value,
        k.moe95,
        k.mean_normalized,
        version,
        tuple((name, n, high) for name, (n, high) in sorted(drivers.items())) if drivers else (),
        quotes,
        tuple(sorted(themes.items())) if themes else (),
    )


def pane_results(
    panes: Mapping[GroupKey, State],
    pane_ms: int,
    version: int = 1,
    drivers: Mapping[tuple[int, str, str], Mapping[str, tuple[int, int]]] | None = None,
    quotes: Mapping[tuple[int, str, str], Quotes] | None = None,
    themes: Mapping[GroupKey, Mapping[str, int]] | None = None,
) -> list[WindowResult]:
    """Result records of every pane group with n > 0, ordered by pane, channel, journey, metric; CES ones with
    their drivers and quotes (``drivers``, ``quotes`` by (pane, channel, journey)), each with its theme mentions
    (``themes`` by group)."""
    drivers = drivers or {}
    quotes = quotes or {}
    themes = themes or {}
    return [
        window_result(
            pane,
            pane + pane_ms,
            channel,
            journey,
            metric,
            state,
            version,
            drivers.get((pane, channel, journey)) if metric == "CES" else None,
            quotes.get((pane, channel, journey), ()) if metric == "CES" else (),
            themes.get((pane, channel, journey, metric)),
        )
        for (pane, channel, journey, metric), state in sorted(panes.items())
        if state.n > 0
    ]


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with millisecond precision, e.g. 2026-11-23T12:00:00.000Z."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC) + timedelta(milliseconds=ms % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def result_record(result: WindowResult) -> dict[str, Any]:
    """The Avro record of a result (drivers as DriverCount records, quotes as Quote records)."""
    obj = result._asdict()
    obj["drivers"] = [{"name": name, "n": n, "high_effort": high} for name, n, high in result.drivers]
    obj["quotes"] = [quote._asdict() for quote in result.quotes]
    obj["themes"] = dict(result.themes)
    return obj


def result_from_record(record: Mapping[str, Any]) -> WindowResult:
    """A result back from its Avro record."""
    drivers = tuple((d["name"], d["n"], d["high_effort"]) for d in record.get("drivers") or ())
    quotes = tuple(Quote(_ms(q["occurred_at"]), q["event_id"], q["text"]) for q in record.get("quotes") or ())
    themes = tuple(sorted((str(theme), int(n)) for theme, n in (record.get("themes") or {}).items()))
    return WindowResult(**{**record, "drivers": drivers, "quotes": quotes, "themes": themes})


def _ms(value: Any) -> int:
    """Epoch ms of a timestamp-millis field (fastavro reads it as an aware datetime)."""
    return round(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def result_json(result: WindowResult) -> dict[str, Any]:
    """The JSON form of a result (replay output): window bounds as ISO-8601 UTC strings."""
    obj = result_record(result)
    obj["window_start"] = iso_utc(result.window_start)
    obj["window_end"] = iso_utc(result.window_end)
    return obj


def results_json(results: Iterable[WindowResult]) -> list[dict[str, Any]]:
    """The JSON form of many results."""
    return [result_json(r) for r in results]


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
