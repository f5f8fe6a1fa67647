"""The commands that read the store (ClickHouse): ``report``, ``drivers``, ``journey`` (their queries:
streams.commands.queries)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, NoReturn

import typer

from schemas.codec import parse_timestamp_ms
from sinks import store_access as readers
from streams import render
from streams.commands.base import (
    app,
    fail,
    names_of,
    parse_ms,
    settings_of,
)
from streams.config import Settings, parse_duration
from streams.core.privacy import pseudonym
from streams.core.windows import iso_utc
from streams.errors import CxPulseError
from streams.render import err

METRIC_NAMES = ("NPS", "CES", "CSAT", "NLS", "CAS")
UntilOpt = Annotated[
    str | None,
    typer.Option(
        help="The end of the (last) window: a time (ISO-8601 with an offset, epoch ms) instead of now; a command "
        "that read data of an hour ago keeps working with it."
    ),
]


@app.command()
def report(
    window: Annotated[
        str | None, typer.Option(help="pane, or a rolling window such as 5m, 1h, 24h [1h; 24h with --journeys].")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="Group by: channel,journey | channel | journey | touchpoint | agent | team | reason_code | theme "
            "(what the comments mention: each theme's share of the commented answers, the KPI of those who mention "
            "it against those who do not) [channel,journey]; with --journeys: journey | channel (the first channel) "
            "| journey,channel [journey]."
        ),
    ] = None,
    journeys: Annotated[
        bool,
        typer.Option(
            "--journeys",
            help="Journey KPIs (contract 8) of the closed customer journeys that ended in each window: one-stop "
            "rate, contacts and channel switches per journey, high-effort rate, journey NPS, recovery rate.",
        ),
    ] = False,
    metric: Annotated[list[str] | None, typer.Option(help="Metric(s) to show (repeatable; default all).")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="How far back: a duration (24h) or a time (ISO-8601, epoch ms). Windows: one per W back."),
    ] = None,
    until: UntilOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, jsonl (docs/contract.md section 6 records) or csv.")
    ] = "table",
    min_n: Annotated[
        int, typer.Option(min=1, help="Groups with fewer answers are left out of the table (jsonl and csv keep all).")
    ] = 30,
) -> None:
    """KPIs from ClickHouse per window and grouping, with n and the 95% interval; with --journeys, the KPIs of
    customer journeys.

    Rolling windows end at the current pane boundary (as the live gauges); --window pane gives the latest
    version of every pane. Works while the worker runs (through its query endpoint when it holds the
    embedded store).
    """
    settings = settings_of()
    pane_ms = settings.pane_seconds * 1000
    window = window or ("24h" if journeys else "1h")
    window_ms = None if window == "pane" else parse_ms(window, "--window")
    if window_ms is not None and window_ms % pane_ms:
        fail(f"--window {window} is not a whole number of panes ({settings.pane_seconds} s)", 2)
    if fmt not in ("table", "jsonl", "csv"):
        fail(f"--format is table, jsonl or csv, not {fmt!r}", 2)
    dims = list(names_of(by or ("journey" if journeys else "channel,journey")))
    now_ms = _until_ms(until) if until is not None else int(time.time() * 1000)
    since_ms = _since_ms(since, now_ms) if since is not None else None
    span = Span(window, window_ms, pane_ms, now_ms, since_ms)
    if journeys:
        if metric:
            fail("--metric is not for --journeys: a journey's KPIs are over all its answers", 2)
        _journey_report(settings, span, dims, fmt, min_n)
    else:
        _kpi_report(settings, span, dims, [_metric(m) for m in metric or []], fmt, min_n)


class Span(NamedTuple):
    """What a report covers: the window (its text and length; None: every pane), the pane, now, and since when."""

    window: str
    window_ms: int | None
    pane_ms: int
    now_ms: int
    since_ms: int | None

    def bounds(self) -> dict[str, Any]:
        """The keyword arguments a query of streams.commands.queries takes for this span."""
        return {"pane_ms": self.pane_ms, "window_ms": self.window_ms, "now_ms": self.now_ms, "since_ms": self.since_ms}


def _kpi_report(settings: Settings, span: Span, dims: list[str], metrics: list[str], fmt: str, min_n: int) -> None:
    """`cxpulse report`: KPIs per window and grouping."""
    from streams.commands import queries as rp

    def query(reader: readers.Reader) -> list[Any]:
        return rp.report(reader, by=dims, metrics=metrics, **span.bounds())

    rows = _read_store(settings, span, fmt, "results", lambda: rp.check_dimensions(dims), query)
    render.report_rows(rows, dims, span.window, fmt, min_n)


def _journey_report(settings: Settings, span: Span, dims: list[str], fmt: str, min_n: int) -> None:
    """`cxpulse report --journeys`: journey KPIs per window that holds the journeys' ends."""
    from streams.commands import queries as rp

    if span.window_ms is None:
        fail("--window pane is not for --journeys: journeys are counted by the window that holds their end", 2)
    window_ms = span.window_ms

    def query(reader: readers.Reader) -> list[Any]:
        return rp.journey_report(reader, by=dims, **{**span.bounds(), "window_ms": window_ms})

    found = _read_store(settings, span, fmt, "closed journeys", lambda: rp.check_journey_dimensions(dims), query)
    render.journey_report_rows(found, dims, span.window, fmt, min_n)


def _read_store(
    settings: Settings,
    span: Span,
    fmt: str,
    what: str,
    check: Callable[[], None],
    query: Callable[[readers.Reader], list[Any]],
) -> list[Any]:
    """``check`` the options, then ``query`` the store: exit 2 on a wrong option (ValueError), 1 when the store
    cannot answer; an empty table says where the newest data is (``what``: the noun of the rows)."""
    try:
        check()
        reader = _reader(settings)
        rows = query(reader)
    except ValueError as exc:
        fail(f"report: {exc}", 2)
    except CxPulseError as exc:
        fail(f"report: {exc}")
    if not rows and fmt == "table":
        _nothing_in(reader, span, what)
    return rows


@app.command()
def journey(
    customer_id: Annotated[str, typer.Argument(help="The customer, as the platforms send it (or its pseudonym).")],
    only: Annotated[str | None, typer.Option("--journey", help="Only this journey (default: all).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or jsonl (one object per instance).")] = "table",
) -> None:
    """One customer's journeys from ClickHouse: each instance (contract 8), then its answers in order with channel,
    touchpoint, contact, metric and score, and the running mean of their normalised values.

    With CXPULSE_CUSTOMER_ID_KEY set, the store holds pseudonyms: the id given is looked up as its pseudonym too.
    Exit 1 when the store holds nothing of the customer.
    """
    from streams.commands import queries as rp

    settings = settings_of()
    if fmt not in ("table", "jsonl"):
        fail(f"--format is table or jsonl, not {fmt!r}", 2)
    ids = [customer_id]
    key = settings.customer_id_key.get_secret_value()
    if key:
        ids.append(pseudonym(key.encode(), customer_id))
    try:
        found = rp.customer_journeys(_reader(settings), ids, only)
    except CxPulseError as exc:
        fail(f"journey: {exc}")
    if not found:
        which = f" in journey {only!r}" if only else ""
        fail(f"journey: no answers of customer {customer_id!r}{which} in the store")
    render.customer_journeys(found, customer_id, fmt)


def _metric(text: str) -> str:
    """A metric name (any case), or exit 2 naming the five."""
    if text.upper() not in METRIC_NAMES:
        fail(f"--metric {text}: one of {', '.join(METRIC_NAMES)}", 2)
    return text.upper()


def _until_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return parse_timestamp_ms(text)
    except CxPulseError:
        fail(f"--until {text!r} is not a time (ISO-8601 with an offset, epoch ms)", 2)


def _nothing_in(reader: readers.Reader, span: Span, what: str) -> NoReturn:
    """Nothing in the window asked for: say when the newest stored data is, and the option that reaches it (the
    window moves with the clock; a command printed an hour ago still works with --until)."""
    from streams.commands import queries as rp

    newest = rp.newest(reader, journeys=what == "closed journeys")
    window = f"the {span.window} ending {iso_utc(span.now_ms)[:19]}Z" if span.window_ms else "the panes asked for"
    if newest is None:
        err.print(f"no {what} in ClickHouse yet (is a worker writing to this store?)", highlight=False)
    else:
        stamp = iso_utc(newest)[:19] + "Z"
        err.print(
            f"no {what} in {window}; the newest in ClickHouse ends {stamp}: add --until {stamp}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(0)


def _no_such_segment(rp: Any, reader: Any, channel: str, journey: str, metric: str, window: str) -> NoReturn:
    """No answer in the segment: say which channels or journeys exist when the name given is not one of them."""
    for option, value in (("channel", channel), ("journey", journey)):
        if value == "*":
            continue
        known = rp.store_values(reader, option)
        if value not in known:
            fail(f"drivers: no {option} {value!r} in the store; its {option}s: {', '.join(known) or 'none yet'}")
    fail(f"drivers: no {metric} answers of {channel}/{journey} in the last {window}")


def _reader(settings: Settings) -> readers.Reader:
    """The store's reader, then one line on stderr naming the store read (a store that cannot be opened: one line
    naming it and the cause, exit 1)."""
    try:
        reader = readers.open_reader(settings)
    except CxPulseError as exc:
        fail(str(exc))
    err.print(readers.describe_store(settings), highlight=False, markup=False, soft_wrap=True)
    return reader


def _since_ms(text: str, now_ms: int) -> int:
    if text.isdigit():
        return int(text)
    try:
        return now_ms - round(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        return parse_timestamp_ms(text)
    except CxPulseError:
        fail(f"--since {text!r} is neither a duration (24h) nor a time (ISO-8601 with offset, epoch ms)", 2)


@app.command()
def drivers(
    metric: Annotated[str, typer.Option(help="NPS, CES, CSAT, NLS or CAS.")] = "NPS",
    channel: Annotated[str, typer.Option(help="Channel of the segment (* = all).")] = "*",
    journey: Annotated[str, typer.Option(help="Journey of the segment (* = all).")] = "*",
    window: Annotated[str, typer.Option(help="The window that ends now (or at --until): 1h, 24h, 7d, ...")] = "24h",
    until: UntilOpt = None,
    vs: Annotated[
        str, typer.Option("--vs", help="previous (the window before) or rest (the rest of the business).")
    ] = "previous",
    by: Annotated[
        str,
        typer.Option(help="Dimensions to explain by (touchpoint, reason_code, agent, team, theme, channel, journey)."),
    ] = "touchpoint,reason_code,theme,agent,team",
    top: Annotated[int, typer.Option(min=1, help="Values shown per dimension.")] = 5,
    fmt: Annotated[str, typer.Option("--format", help="table or jsonl.")] = "table",
) -> None:
    """Why a KPI moved: which touchpoints, reason codes, comment themes, agents and teams explain the change of a
    segment's KPI against the previous window or the rest of the business, each with its share of the change, n
    and a 95% interval (docs/usage.md, "cxpulse drivers").
    """
    from streams.commands import queries as rp

    settings = settings_of()
    window_ms = parse_ms(window, "--window")
    if fmt not in ("table", "jsonl"):
        fail(f"--format is table or jsonl, not {fmt!r}", 2)
    metric = _metric(metric)
    try:
        reader = _reader(settings)
        found = rp.drivers(
            reader,
            metric=metric,
            channel=channel,
            journey=journey,
            window_ms=window_ms,
            pane_ms=settings.pane_seconds * 1000,
            now_ms=_until_ms(until) if until is not None else int(time.time() * 1000),
            versus=vs,
            dimensions=list(names_of(by)),
        )
    except ValueError as exc:
        fail(f"drivers: {exc}", 2)
    except CxPulseError as exc:
        fail(f"drivers: {exc}")
    if found.n_now == 0:
        _no_such_segment(rp, reader, channel, journey, found.metric, window)
    if fmt == "jsonl":
        render.drivers_jsonl(found, names_of(by), top)
    else:
        render.drivers_tables(found, f"{channel}/{journey}", window, vs, names_of(by), top)
