"""What ``cxpulse report`` and ``cxpulse drivers`` print: tables on a terminal, JSON lines or CSV in a pipe.

The consoles are shared by every command: ``out`` for results (whole tables when stdout is a pipe or a file),
``err`` for what a user reads beside them (the store read, hidden groups, warnings).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streams.core.aggregate import kpi, merge, times
from streams.core.comments import ANY
from streams.core.journey_kpis import journey_kpis
from streams.core.windows import iso_utc, result_json, window_result

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)  # a pipe or a file gets whole tables


def count(number: int, noun: str) -> str:
    """``1 partition``, ``2 partitions``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def report_record(row: Any, extra: Sequence[str]) -> dict[str, Any]:
    """A report row as a result record (docs/contract.md section 6), with the extra grouping dimensions."""
    record = result_json(
        window_result(
            row.window_start,
            row.window_end,
            row.dimensions["channel"],
            row.dimensions["journey"],
            row.metric,
            row.state,
            row.version,
        )
    )
    for name in extra:
        record[name] = row.dimensions[name]
    return record


def report_rows(rows: list[Any], dims: Sequence[str], window: str, fmt: str, min_n: int) -> None:
    """Print a report's rows as a table (groups under ``min_n`` answers left out, said on stderr), JSON lines or
    CSV."""
    if fmt == "table":
        (theme_table if "theme" in dims else report_table)(rows, dims, window, min_n)
        return
    extra = [d for d in dims if d not in ("channel", "journey")]
    records = [report_record(row, extra) for row in rows]
    if fmt == "jsonl":
        for record in records:
            out.print(json.dumps(record, separators=(",", ":")), highlight=False, markup=False, soft_wrap=True)
        return
    writer = csv.writer(sys.stdout)
    fields = ["window_start", "window_end", "channel", "journey", *extra, "metric", "n", "value", "moe95"]
    writer.writerow(fields)
    for record in records:
        writer.writerow(["" if record.get(f) is None else record.get(f) for f in fields])


def span_label(start_ms: int, end_ms: int) -> str:
    """``2026-12-05T13:04 → 13:14``: a window to the minute, to the second when it does not fall on minutes (the
    demo's 5-second panes), with the date again only where it changes."""
    cut = 16 if start_ms % 60_000 == 0 and end_ms % 60_000 == 0 else 19
    start, end = iso_utc(start_ms), iso_utc(end_ms)
    return f"{start[:cut]} → {end[11:cut] if end[:10] == start[:10] else end[:cut]}"


def report_table(rows: list[Any], dims: Sequence[str], window: str, min_n: int) -> None:
    table = Table(title=f"cxpulse report: {window} by {','.join(dims)}", title_justify="left")
    for column in ("window (UTC)", *dims, "metric"):
        table.add_column(column)
    for column in ("value", "±95%", "n"):
        table.add_column(column, justify="right")
    shown = [row for row in rows if row.state.n >= min_n]
    for row in shown:
        k = kpi(row.metric, row.state)
        cells = [
            span_label(row.window_start, row.window_end),
            *(escape(row.dimensions.get(d, "*")) for d in dims),
            row.metric,
        ]
        cells += [f"{k.value:.1f}" if row.metric != "CES" else f"{k.value:.2f}",
                  "" if k.moe95 is None else f"{k.moe95:.1f}" if row.metric != "CES" else f"{k.moe95:.2f}",
                  str(row.state.n)]  # fmt: skip
        table.add_row(*cells)
    if not rows:
        err.print("no results in ClickHouse for this window yet", highlight=False)
        return
    if shown:
        out.print(table)
    hidden = len(rows) - len(shown)
    if hidden:
        err.print(
            f"{count(hidden, 'group')} with fewer than {min_n} answers not shown (too few for a KPI; --min-n 1 "
            "shows every group)",
            highlight=False,
        )


def _kpi_cells(metric: str, state: Any) -> str:
    """``-12.5 ±8.1 (n 140)``: a KPI with its 95% interval and n, or ``n 0``."""
    if state.n <= 0:
        return "(n 0)"
    k = kpi(metric, state)
    digits = 2 if metric == "CES" else 1
    interval = "" if k.moe95 is None else f" ±{k.moe95:.{digits}f}"
    return f"{k.value:.{digits}f}{interval} (n {state.n})"


def theme_table(rows: list[Any], dims: Sequence[str], window: str, min_n: int) -> None:
    """``report --by theme``: per theme, the share of the commented answers that mention it, and the KPI of those
    who mention it against the commented answers that do not (their counters: "(any)" less the theme's)."""
    others = [d for d in dims if d != "theme"]
    table = Table(title=f"cxpulse report: {window} by {','.join(dims)}", title_justify="left")
    for column in ("window (UTC)", *others, "metric", "theme"):
        table.add_column(column)
    for column in ("mentioned by", "KPI mentioning ±95%", "KPI not mentioning ±95%"):
        table.add_column(column, justify="right")
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = (-row.window_end, row.window_start, *(row.dimensions[d] for d in others), row.metric)
        groups.setdefault(key, []).append(row)
    shown = hidden = 0
    for key in sorted(groups):
        commented = next((row.state for row in groups[key] if row.dimensions["theme"] == ANY), None)
        for row in sorted(groups[key], key=lambda r: (r.dimensions["theme"] != ANY, -r.state.n, r.dimensions["theme"])):
            if row.state.n < min_n:
                hidden += 1
                continue
            shown += 1
            mine = row.dimensions["theme"] == ANY
            share = "" if commented is None else f"{100.0 * row.state.n / commented.n:.1f}% of {commented.n}"
            rest = "" if mine or commented is None else _kpi_cells(row.metric, merge(commented, times(row.state, -1)))
            table.add_row(
                span_label(row.window_start, row.window_end),
                *(escape(row.dimensions[d]) for d in others),
                row.metric,
                escape(row.dimensions["theme"]) + (" (every comment)" if mine else ""),
                share,
                _kpi_cells(row.metric, row.state),
                rest,
            )
    if not rows:
        err.print("no commented answers in ClickHouse for this window yet", highlight=False)
        return
    if shown:
        out.print(table)
    if hidden:
        err.print(
            f"{count(hidden, 'theme')} mentioned by fewer than {min_n} answers not shown (--min-n 1 shows every one)",
            highlight=False,
        )


def drivers_jsonl(found: Any, dimensions: Sequence[str], top: int) -> None:
    """The ``top`` drivers of each dimension, one JSON object a line."""
    for dimension in dimensions:
        for driver in [d for d in found.drivers if d.dimension == dimension][:top]:
            out.print(json.dumps(driver._asdict(), separators=(",", ":")), highlight=False, markup=False)


def drivers_tables(found: Any, segment: str, window: str, versus: str, dimensions: Sequence[str], top: int) -> None:
    """The change of the segment's KPI, then a table of the ``top`` drivers of each dimension."""
    against = f"the previous {window}" if versus == "previous" else "the rest of the business"
    if found.kpi_now is None or found.kpi_before is None:
        short = f"the last {window}" if found.kpi_now is None else against
        hint = " (--vs rest compares with the rest of the business instead)" if versus == "previous" else ""
        err.print(
            f"{found.metric} {segment}: not enough answers in {short} to compare (n {found.n_now} in the last "
            f"{window}, {found.n_before} in {against}){hint}"
        )
        return
    out.print(
        f"{found.metric} {escape(segment)}, last {window}: {found.kpi_now:.2f} (n {found.n_now}) "
        f"against {against}: {found.kpi_before:.2f} (n {found.n_before}); change {found.change:+.2f}",
        highlight=False,
    )
    other = "before" if versus == "previous" else "rest"
    for dimension in dimensions:
        table = Table(title=f"by {dimension}", title_justify="left")
        for column, justify in (("value", "left"), ("n now", "right"), (f"n {other}", "right"), ("KPI now", "right"),
                                (f"KPI {other}", "right"), ("contribution", "right"), ("±95%", "right")):  # fmt: skip
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for driver in [d for d in found.drivers if d.dimension == dimension][:top]:
            table.add_row(
                escape(driver.name),
                str(driver.n_now),
                str(driver.n_before),
                "-" if driver.kpi_now is None else f"{driver.kpi_now:.2f}",
                "-" if driver.kpi_before is None else f"{driver.kpi_before:.2f}",
                f"{driver.contribution:+.2f}",
                "-" if driver.interval is None else f"{driver.interval:.2f}",
            )
        out.print(table)


# --- journeys (contract section 8) ----------------------------------------------------------------------------

JOURNEY_VALUES = (  # (key of journey_kpis, table heading, format)
    ("one_stop_rate", "one-stop %", "{:.1f}"),
    ("contacts_per_journey", "contacts/journey", "{:.2f}"),
    ("switches_per_journey", "switches/journey", "{:.2f}"),
    ("high_effort_rate", "high-effort %", "{:.1f}"),
    ("journey_nps", "journey NPS", "{:.1f}"),
    ("recovery_rate", "recovered %", "{:.1f}"),
)


def journey_record(row: Any) -> dict[str, Any]:
    """A ``report --journeys`` row as one JSON object: window, dimensions, the counters and the KPI values."""
    return {
        "window_start": iso_utc(row.window_start),
        "window_end": iso_utc(row.window_end),
        **row.dimensions,
        **row.counts._asdict(),
        **journey_kpis(row.counts),
    }


def journey_report_rows(rows: list[Any], dims: Sequence[str], window: str, fmt: str, min_n: int) -> None:
    """Print ``report --journeys`` as a table (groups under ``min_n`` journeys left out, said on stderr), JSON lines
    or CSV (every group)."""
    if fmt != "table":
        records = [journey_record(row) for row in rows]
        if fmt == "jsonl":
            for record in records:
                out.print(json.dumps(record, separators=(",", ":")), highlight=False, markup=False, soft_wrap=True)
            return
        writer = csv.writer(sys.stdout)
        fields = list(records[0]) if records else ["window_start", "window_end", "journey", "channel", "journeys"]
        writer.writerow(fields)
        for record in records:
            writer.writerow(["" if record.get(f) is None else record.get(f) for f in fields])
        return
    if not rows:
        err.print("no closed journey instances in ClickHouse for this window yet", highlight=False)
        return
    table = Table(title=f"cxpulse journeys: {window} by {','.join(dims)}", title_justify="left")
    for column in ("window (UTC)", *dims):
        table.add_column(column)
    for column in ("journeys", *(heading for _, heading, _ in JOURNEY_VALUES)):
        table.add_column(column, justify="right")
    shown = [row for row in rows if row.counts.journeys >= min_n]
    for row in shown:
        values = journey_kpis(row.counts)
        span = span_label(row.window_start, row.window_end)
        cells = [span, *(escape(row.dimensions[d]) for d in dims), str(row.counts.journeys)]
        cells += ["-" if values[key] is None else form.format(values[key]) for key, _, form in JOURNEY_VALUES]
        table.add_row(*cells)
    if shown:
        out.print(table)
    hidden = len(rows) - len(shown)
    if hidden:
        err.print(
            f"{count(hidden, 'group')} with fewer than {min_n} closed journeys not shown (--min-n 1 shows every group)",
            highlight=False,
        )


def customer_journeys(found: list[Any], customer: str, fmt: str) -> None:
    """One customer's journeys: each instance, then its answers in order with the running mean of their normalised
    values (the cumulative experience); ``jsonl``: one object per instance with its answers."""
    if fmt == "jsonl":
        for journey in found:
            record = dict(journey.instance or {"customer_id": customer, "pending": True})
            for name in ("start", "end"):
                if name in record:
                    record[name] = iso_utc(record[name])
            record["answers_in_order"] = [_answer_json(a.answer) for a in journey.answers]
            out.print(json.dumps(record, separators=(",", ":")), highlight=False, markup=False, soft_wrap=True)
        return
    for journey in found:
        out.print(_instance_line(journey), highlight=False)
        table = Table(title_justify="left", show_edge=False)
        for column in ("when (UTC)", "channel", "touchpoint", "contact", "metric"):
            table.add_column(column)
        for column in ("score", "x", "cumulative x"):
            table.add_column(column, justify="right")
        total = 0.0
        for number, stored in enumerate(journey.answers, 1):
            a = stored.answer
            total += a.x
            table.add_row(
                _when(a.occurred_at),
                escape(a.channel),
                escape(a.touchpoint or "-"),
                escape(a.interaction_id or "-"),
                a.metric,
                f"{a.score} ({a.scale_min}-{a.scale_max})",
                f"{a.x:.2f}",
                f"{total / number:.2f}",
            )
        out.print(table)


def _instance_line(journey: Any) -> str:
    i = journey.instance
    if i is None:
        return (
            f"{count(len(journey.answers), 'answer')} not in a stored journey instance yet (journeys reach the store "
            "after the answers)"
        )
    state = "closed" if i["closed"] else "open"
    switches = f"{i['channel_switches']} channel switch{'' if i['channel_switches'] == 1 else 'es'}"
    flags = [f"one-stop {'yes' if i['one_stop'] else 'no'}"]
    if i["recoverable"]:
        flags.append(f"recovered {'yes' if i['recovered'] else 'no'}")
    if i["last_nps"]:
        flags.append(f"last NPS {i['last_nps']}")
    if i["ces_n"]:
        flags.append(f"high-effort CES {i['ces_high_effort']} of {i['ces_n']}")
    return (
        f"[bold]{escape(i['journey'])}[/bold] {_when(i['start'])} → {_when(i['end'])} ({state}): "
        f"{count(i['answers'], 'answer')}, {count(i['contacts'], 'contact')}, {count(i['channels'], 'channel')}, "
        f"{switches}, first x {i['first_x']:.2f}, last x {i['last_x']:.2f}; " + ", ".join(flags)
    )


def _when(ms: int) -> str:
    """A time to the second, UTC, for a person: ``2026-12-02 13:12:38``."""
    return iso_utc(ms)[:19].replace("T", " ")


def _answer_json(a: Any) -> dict[str, Any]:
    return {
        "occurred_at": iso_utc(a.occurred_at),
        "event_id": a.event_id,
        "interaction_id": a.interaction_id,
        "channel": a.channel,
        "touchpoint": a.touchpoint,
        "metric": a.metric,
        "score": a.score,
        "scale_min": a.scale_min,
        "scale_max": a.scale_max,
        "x": a.x,
    }
