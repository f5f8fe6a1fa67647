"""Reading ClickHouse back: ``cxpulse report`` (KPIs per window and grouping) and ``cxpulse drivers`` (the "why"
behind a change of a KPI).

SQL only sums counters (exact: the fixed-point sx / sx2 columns); every KPI value, interval and decomposition is
computed from the sums with streams/core/aggregate.py's ``kpi``, the one implementation of docs/contract.md section 4.

- Groupings of channel and journey read ``cxpulse.pane_results`` (latest version of each pane: FINAL); groupings
  with touchpoint, agent, team or reason code read ``cxpulse.answers`` (the pane of an answer is
  floor(occurred_at / P) * P, as in the stream).
- A rolling window W is the merge of the W/P panes that end at the pane boundary at or before "now" (docs/contract.md
  section 5, processing clock); with ``since``, the consecutive windows of length W back to ``since`` (the latest
  first).  ``pane`` gives every pane (latest version).
- A dimension that is not grouped by is ``*`` (ALL), as in streams/core/windows.py's rollups.
- ``report --journeys`` sums the counters of the closed journey instances (``cxpulse.journey_instances``, newest
  non-deleted revision of each) by the rolling window that holds their end, per journey and/or first channel
  (docs/contract.md section 8); :func:`customer_journeys` gives one customer's instances with their answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sinks.store_access import Reader
from streams.core.aggregate import State, kpi, merge
from streams.core.journey_kpis import JourneyCounts
from streams.core.journeys import Answer
from streams.core.windows import ALL

PANE_DIMENSIONS = ("channel", "journey")
ANSWER_DIMENSIONS = ("channel", "journey", "touchpoint", "agent", "team", "reason_code", "theme")
COLUMN = {"agent": "agent_id", "reason_code": "reason"}
# the dimensions of which an answer holds several: it counts under each (report), its weight split among them (drivers)
LISTS = {"reason_code": "reason_codes", "theme": "themes"}
SUMS_PANES = (
    "sum(n), sum(promoters), sum(passives), sum(detractors), sum(positive), sum(high_effort), sum(sx), sum(sx2)"
)
SUMS_ANSWERS = (
    "count(), sum(promoter), sum(passive), sum(detractor), sum(positive), sum(high_effort), sum(sx), sum(sx2)"
)


class Row(NamedTuple):
    """One group of a report: its window, its dimensions (``*`` when rolled up), metric and exact counters."""

    window_start: int
    window_end: int
    dimensions: dict[str, str]
    metric: str
    state: State
    version: int


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return round(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)
    if isinstance(value, str):
        return round(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp() * 1000)
    return int(value)


def _or_none(column: str) -> str:
    return column if column in ("reason", "theme") else f"if({column} = '', 'none', {column})"


def store_values(reader: Reader, column: str) -> list[str]:
    """The values of ``channel``, ``journey`` or ``metric`` the store holds (for "what exists" hints)."""
    if column not in ("channel", "journey", "metric"):
        raise ValueError(f"no values of {column!r}")
    rows = reader.rows(f"SELECT DISTINCT {column} FROM cxpulse.pane_results ORDER BY {column}", {})
    return [str(row[0]) for row in rows]


def newest(reader: Reader, journeys: bool = False) -> int | None:
    """The end (epoch ms) of the newest pane result in the store, or of the newest journey instance with
    ``journeys``; None when it holds none."""
    sql = (
        "SELECT max(toUnixTimestamp64Milli(end_at)), count() FROM cxpulse.journey_instances"
        if journeys
        else "SELECT max(toUnixTimestamp64Milli(window_end)), count() FROM cxpulse.pane_results"
    )
    rows = reader.rows(sql, {})
    return _ms(rows[0][0]) if rows and int(rows[0][1]) else None


def check_dimensions(by: Sequence[str]) -> None:
    unknown = [d for d in by if d not in ANSWER_DIMENSIONS]
    if unknown or not by or len(set(by)) != len(by):
        raise ValueError(f"--by takes distinct names among {', '.join(ANSWER_DIMENSIONS)} (got {','.join(by)})")


def report(
    reader: Reader,
    *,
    pane_ms: int,
    window_ms: int | None,
    by: Sequence[str],
    metrics: Sequence[str],
    now_ms: int,
    since_ms: int | None,
) -> list[Row]:
    """The report's groups: panes (``window_ms`` None) or rolling windows ending at the pane boundary of ``now_ms``."""
    check_dimensions(by)
    end = now_ms - now_ms % pane_ms
    if window_ms is None:
        start = since_ms if since_ms is not None else 0
        bucket = "toUnixTimestamp64Milli(window_start)"
    else:
        count = 1 if since_ms is None else max(1, math.ceil((end - since_ms) / window_ms))
        start = end - count * window_ms
        bucket = f"intDiv({end} - 1 - toUnixTimestamp64Milli(window_start), {window_ms})"
    params: dict[str, Any] = {"start": start, "end": end if window_ms is not None else 2**62}
    metric_filter = ""
    if metrics:
        metric_filter = "AND metric IN {metrics:Array(String)}"
        params["metrics"] = list(metrics)
    source, sums, version, ends = _report_source(by, pane_ms)
    # an answer without a touchpoint, agent or team is grouped under "none" (as drivers shows it), not ""
    select_dims = ", ".join(d if d in PANE_DIMENSIONS else _or_none(COLUMN.get(d, d)) for d in by)
    sql = (
        f"SELECT {bucket} AS bucket, {select_dims}, metric, {sums}, {version}, {ends} FROM {source} "
        "WHERE toUnixTimestamp64Milli(window_start) >= {start:Int64} "
        "AND toUnixTimestamp64Milli(window_start) < {end:Int64} "
        f"{metric_filter} GROUP BY bucket, {select_dims}, metric ORDER BY bucket, {select_dims}, metric"
    )
    out = [r for r in (_report_row(row, by, window_ms, end) for row in reader.rows(sql, params)) if r is not None]
    out.sort(key=lambda r: (-r.window_end, tuple(r.dimensions.values()), r.metric))
    return out


def _report_source(by: Sequence[str], pane_ms: int) -> tuple[str, str, str, str]:
    """Where a report reads (the pane results, or the answers when it groups by one of their dimensions): the
    FROM clause, the sums, the version and the window end expressions."""
    if all(d in PANE_DIMENSIONS for d in by):
        ends = "max(toUnixTimestamp64Milli(window_end))"  # the pane length the results were written with
        return "cxpulse.pane_results FINAL", SUMS_PANES, "max(version)", ends
    pane = f"intDiv(toUnixTimestamp64Milli(occurred_at), {pane_ms}) * {pane_ms}"
    # an answer counts under each of its reason codes, and each theme of its comment: "(any)" for every answer with
    # one, the answers without one in no theme (contract section 9).  ClickHouse's `*` leaves out an ARRAY JOIN
    # alias: named.
    codes, themes = "reason_code" in by, "theme" in by
    source = (
        f"(SELECT *, {'reason, ' if codes else ''}{'theme, ' if themes else ''}{pane} AS pane_ms, "
        f"toDateTime64({pane} / 1000, 3, 'UTC') AS window_start FROM cxpulse.answers FINAL"
        + (" ARRAY JOIN if(empty(reason_codes), ['none'], reason_codes) AS reason" if codes else "")
        + (" ARRAY JOIN arrayConcat(['(any)'], themes) AS theme WHERE commented = 1" if themes else "")
        + ")"
    )
    return source, SUMS_ANSWERS, "0", f"max(toUnixTimestamp64Milli(window_start)) + {pane_ms}"


def _report_row(row: Sequence[Any], by: Sequence[str], window_ms: int | None, end: int) -> Row | None:
    """One result row of the report query as a Row (None: no answers)."""
    key, width = int(row[0]), len(by)
    state = State(*(int(v) for v in row[2 + width : 10 + width]))
    if state.n <= 0:
        return None
    if window_ms is None:  # a pane: its own end (written by the worker with the pane length of the time)
        window_start, window_end = key, int(row[-1])
    else:
        window_end = end - key * window_ms
        window_start = window_end - window_ms
    dimensions = {name: ALL for name in PANE_DIMENSIONS}
    dimensions.update({name: str(value) for name, value in zip(by, row[1 : 1 + width], strict=True)})
    return Row(window_start, window_end, dimensions, str(row[1 + width]), state, int(row[-2]))


# --- drivers: which touchpoints, reason codes, agents or teams explain a change -------------------------------


class Driver(NamedTuple):
    """One value of a dimension and its share of the change of the segment's KPI.

    ``contribution`` is its term of the exact decomposition (the terms of a dimension add up to ``change``):
    ``w_now * (k_now - K_before) - w_before * (k_before - K_before)``, w the value's share of answers, k its KPI,
    K the segment's KPI.  ``interval`` is the 95% half-width of that term from the two KPIs' intervals."""

    dimension: str
    name: str
    n_now: int
    n_before: int
    kpi_now: float | None
    kpi_before: float | None
    contribution: float
    interval: float | None


class Drivers(NamedTuple):
    metric: str
    kpi_now: float | None
    kpi_before: float | None
    n_now: int
    n_before: int
    change: float | None
    drivers: list[Driver]


SPLIT = 2520  # lcm(1..10): an answer's weight split evenly among up to 10 reason codes stays an integer


def decompose(
    metric: str, now: Mapping[str, State], before: Mapping[str, State], dimension: str, scale: int = 1
) -> tuple[list[Driver], float | None, float | None]:
    """The exact decomposition of the KPI change over the values of one dimension (see :class:`Driver`).

    For reason codes, of which an answer can hold several, each answer's weight is split evenly among its codes
    (``scale`` = SPLIT units an answer, so the counters stay integers and the shares still add up to one); the
    KPIs are ratios and do not change with the scale, the intervals are scaled back (approximately for CES)."""
    total_now = _total(now.values())
    total_before = _total(before.values())
    if total_now.n <= 0 or total_before.n <= 0:
        return [], _value(metric, total_now), _value(metric, total_before)
    k_before_total = kpi(metric, total_before).value
    out = []
    for name in sorted(set(now) | set(before)):
        a, b = now.get(name), before.get(name)
        w_now = a.n / total_now.n if a else 0.0
        w_before = b.n / total_before.n if b else 0.0
        ka = kpi(metric, a) if a and a.n else None
        kb = kpi(metric, b) if b and b.n else None
        term = (w_now * (ka.value - k_before_total) if ka else 0.0) - (
            w_before * (kb.value - k_before_total) if kb else 0.0
        )
        variance = 0.0
        known = True
        for weight, k in ((w_now, ka), (w_before, kb)):
            if k is None:
                continue
            if k.moe95 is None:
                known = False
            else:
                variance += (weight * k.moe95) ** 2
        out.append(
            Driver(
                dimension,
                name,
                round(a.n / scale) if a else 0,
                round(b.n / scale) if b else 0,
                ka.value if ka else None,
                kb.value if kb else None,
                term,
                math.sqrt(variance * scale) if known else None,
            )
        )
    out.sort(key=lambda d: (-abs(d.contribution), d.name))
    return out, kpi(metric, total_now).value, k_before_total


def _total(states: Iterable[State]) -> State:
    total = State()
    for state in states:
        total = merge(total, state)
    return total


def _value(metric: str, state: State) -> float | None:
    return kpi(metric, state).value if state.n > 0 else None


def drivers(
    reader: Reader,
    *,
    metric: str,
    channel: str,
    journey: str,
    window_ms: int,
    pane_ms: int,
    now_ms: int,
    versus: str,
    dimensions: Sequence[str],
) -> Drivers:
    """The drivers of ``metric`` in a segment over the window ending at the pane boundary of ``now_ms``, against
    the previous window (``versus="previous"``) or the rest of the business in the same window (``"rest"``).
    Channel or journey ``*`` means all of them."""
    end = now_ms - now_ms % pane_ms
    start = end - window_ms
    params: dict[str, Any] = {"metric": metric, "start": start, "end": end, "before": start - window_ms}
    side, scope = _drivers_sides(channel, journey, versus, params)
    found: list[Driver] = []
    totals: tuple[float | None, float | None] = (None, None)
    n_now = n_before = 0
    for dimension in dimensions:
        check_dimensions([dimension])
        sql, scale = _dimension_query(dimension, side, scope)
        now: dict[str, State] = {}
        before: dict[str, State] = {}
        for row in reader.rows(sql, params):
            state = State(*(int(v) for v in row[2:10]))
            if state.n > 0:
                (now if int(row[0]) else before)[str(row[1])] = state
        terms, k_now, k_before = decompose(metric, now, before, dimension, scale)
        found.extend(terms)
        totals = (k_now, k_before)
        if dimension not in LISTS:
            n_now, n_before = _total(now.values()).n, _total(before.values()).n
    change = totals[0] - totals[1] if totals[0] is not None and totals[1] is not None else None
    return Drivers(metric, totals[0], totals[1], n_now, n_before, change, found)


def _drivers_sides(channel: str, journey: str, versus: str, params: dict[str, Any]) -> tuple[str, str]:
    """The condition that puts an answer on the "now" side, and the answers compared at all (adds the segment's
    parameters to ``params``)."""
    segment = []
    for name, value in (("channel", channel), ("journey", journey)):
        if value != ALL:
            segment.append(f"{name} = {{{name}:String}}")
            params[name] = value
    inside = " AND ".join(segment) or "1"
    if versus == "previous":
        side = "toUnixTimestamp64Milli(occurred_at) >= {start:Int64}"
        return side, f"({inside}) AND toUnixTimestamp64Milli(occurred_at) >= {{before:Int64}}"
    if versus == "rest":
        if not segment:
            raise ValueError("--vs rest needs a channel or a journey (the rest of everything is nothing)")
        return inside, "toUnixTimestamp64Milli(occurred_at) >= {start:Int64}"
    raise ValueError(f"--vs is previous or rest, not {versus!r}")


def _dimension_query(dimension: str, side: str, scope: str) -> tuple[str, int]:
    """The query of one dimension's values on both sides, and the scale of its weights (reason codes and themes
    split an answer's weight among the answer's codes, or themes; an answer without any counts under ``none``)."""
    if dimension in LISTS:
        column = LISTS[dimension]
        value = f"arrayJoin(if(empty({column}), ['none'], {column}))"
        weight, scale = f"intDiv({SPLIT}, greatest(length({column}), 1))", SPLIT
    else:
        column = COLUMN.get(dimension, dimension)
        value, weight, scale = f"if({column} = '', 'none', {column})", "1", 1
    sql = (
        f"SELECT {side} AS now, {value} AS name, sum({weight}), sum(promoter * {weight}), "
        f"sum(passive * {weight}), sum(detractor * {weight}), sum(positive * {weight}), "
        f"sum(high_effort * {weight}), sum(sx * {weight}), sum(sx2 * {weight}) "
        f"FROM cxpulse.answers FINAL WHERE metric = {{metric:String}} AND {scope} "
        "AND toUnixTimestamp64Milli(occurred_at) < {end:Int64} GROUP BY now, name"
    )
    return sql, scale


# --- journeys: the KPIs of closed instances, and one customer's way -------------------------------------------

JOURNEY_DIMENSIONS = ("journey", "channel")  # channel: the instance's first channel
JOURNEY_COLUMN = {"journey": "journey", "channel": "first_channel"}
SUMS_JOURNEYS = (
    "count(), sum(one_stop), sum(contacts), sum(channel_switches), countIf(ces_high_effort >= 1), "
    "countIf(last_nps = 'promoter'), countIf(last_nps = 'passive'), countIf(last_nps = 'detractor'), "
    "sum(recoverable), sum(recovered)"
)
LIVE_INSTANCES = "cxpulse.journey_instances FINAL"  # the newest revision of each instance; deleted: see WHERE


class JourneyRow(NamedTuple):
    """One group of ``report --journeys``: its window, its dimensions (``*`` when rolled up) and the counters."""

    window_start: int
    window_end: int
    dimensions: dict[str, str]
    counts: JourneyCounts


def check_journey_dimensions(by: Sequence[str]) -> None:
    unknown = [d for d in by if d not in JOURNEY_DIMENSIONS]
    if unknown or not by or len(set(by)) != len(by):
        raise ValueError(f"--by with --journeys takes journey, channel or both (got {','.join(by)})")


def journey_report(
    reader: Reader, *, pane_ms: int, window_ms: int, by: Sequence[str], now_ms: int, since_ms: int | None
) -> list[JourneyRow]:
    """The journey KPIs' counters of the closed instances whose end falls in each rolling window of ``window_ms``
    ending at the pane boundary of ``now_ms`` (back to ``since_ms``: one window per W), the latest first."""
    check_journey_dimensions(by)
    end = now_ms - now_ms % pane_ms
    count = 1 if since_ms is None else max(1, math.ceil((end - since_ms) / window_ms))
    params: dict[str, Any] = {"start": end - count * window_ms, "end": end}
    dims = ", ".join(JOURNEY_COLUMN[d] for d in by)
    sql = (
        f"SELECT intDiv({end} - 1 - toUnixTimestamp64Milli(end_at), {window_ms}) AS bucket, {dims}, "
        f"{SUMS_JOURNEYS} FROM {LIVE_INSTANCES} "
        "WHERE closed = 1 AND deleted = 0 AND toUnixTimestamp64Milli(end_at) >= {start:Int64} "
        "AND toUnixTimestamp64Milli(end_at) < {end:Int64} "
        f"GROUP BY bucket, {dims} ORDER BY bucket, {dims}"
    )
    rows = []
    for row in reader.rows(sql, params):
        window_end = end - int(row[0]) * window_ms
        dimensions = {name: ALL for name in JOURNEY_DIMENSIONS}
        dimensions.update({name: str(value) for name, value in zip(by, row[1 : 1 + len(by)], strict=True)})
        counts = JourneyCounts(*(int(v) for v in row[1 + len(by) :]))
        rows.append(JourneyRow(window_end - window_ms, window_end, dimensions, counts))
    return rows


class StoredAnswer(NamedTuple):
    """One answer of a customer as the store holds it, with the journey it belongs to."""

    journey: str
    answer: Answer


class CustomerJourney(NamedTuple):
    """One instance of a customer (the newest non-deleted revision; None: answers the store holds that no stored
    instance covers yet, e.g. while the sink catches up) and its answers in order."""

    instance: dict[str, Any] | None
    answers: list[StoredAnswer]


INSTANCE_SELECT = (
    "customer_id, journey, toUnixTimestamp64Milli(start_at), toUnixTimestamp64Milli(end_at), first_channel, answers, "
    "contacts, channels, channel_switches, touchpoints, ces_n, ces_high_effort, first_x, last_x, last_nps, one_stop, "
    "recoverable, recovered, closed, version"
)
INSTANCE_FIELDS = (
    "customer_id", "journey", "start", "end", "first_channel", "answers", "contacts", "channels", "channel_switches",
    "touchpoints", "ces_n", "ces_high_effort", "first_x", "last_x", "last_nps", "one_stop", "recoverable",
    "recovered", "closed", "version",
)  # fmt: skip


def customer_journeys(reader: Reader, customer_ids: Sequence[str], journey: str | None = None) -> list[CustomerJourney]:
    """The journeys of a customer (any of ``customer_ids``: the id as given and its pseudonym), oldest first, each
    with its answers in the contract's order (occurred_at, event_id)."""
    params: dict[str, Any] = {"ids": list(customer_ids)}
    only = ""
    if journey is not None:
        only = "AND journey = {journey:String}"
        params["journey"] = journey
    instances = []
    for row in reader.rows(
        f"SELECT {INSTANCE_SELECT} FROM {LIVE_INSTANCES} WHERE customer_id IN {{ids:Array(String)}} AND deleted = 0 "
        f"{only} ORDER BY start_at, journey",
        params,
    ):
        record = dict(zip(INSTANCE_FIELDS, row, strict=True))
        for name in ("start", "end", "answers", "contacts", "channels", "channel_switches", "touchpoints", "ces_n",
                     "ces_high_effort", "version"):  # fmt: skip
            record[name] = int(record[name])
        for name in ("one_stop", "recoverable", "recovered", "closed"):
            record[name] = bool(int(record[name]))
        record["first_x"], record["last_x"] = float(record["first_x"]), float(record["last_x"])
        record["last_nps"] = record["last_nps"] or None
        instances.append(CustomerJourney(record, []))
    pending = CustomerJourney(None, [])
    for row in reader.rows(
        "SELECT journey, toUnixTimestamp64Milli(occurred_at), event_id, interaction_id, channel, touchpoint, metric, "
        "score, scale_min, scale_max FROM cxpulse.answers FINAL WHERE customer_id IN {ids:Array(String)} "
        f"{only} ORDER BY occurred_at, event_id",
        params,
    ):
        answer = Answer(int(row[1]), str(row[2]), _present(row[3]), str(row[4]), _present(row[5]), str(row[6]),
                        int(row[7]), int(row[8]), int(row[9]))  # fmt: skip
        home = next(
            (
                j
                for j in instances
                if j.instance is not None
                and j.instance["journey"] == row[0]
                and j.instance["start"] <= answer.occurred_at <= j.instance["end"]
            ),
            pending,
        )
        home.answers.append(StoredAnswer(str(row[0]), answer))
    return instances + ([pending] if pending.answers else [])


def _present(value: Any) -> str | None:
    """An interaction id or touchpoint as section 8 sees it: empty or blank is none."""
    text = str(value)
    return None if not text or text.isspace() else text
