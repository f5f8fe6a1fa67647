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

from streams.aggregate import kpi
from streams.windows import iso_utc, result_json, window_result

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
        report_table(rows, dims, window, min_n)
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


def report_table(rows: list[Any], dims: Sequence[str], window: str, min_n: int) -> None:
    table = Table(title=f"cxpulse report: {window} by {','.join(dims)}", title_justify="left")
    for column in ("window (UTC)", *dims, "metric"):
        table.add_column(column)
    for column in ("value", "±95%", "n"):
        table.add_column(column, justify="right")
    shown = [row for row in rows if row.state.n >= min_n]
    for row in shown:
        k = kpi(row.metric, row.state)
        start, end = iso_utc(row.window_start), iso_utc(row.window_end)
        span = f"{start[:16]} → {end[11:16] if end[:10] == start[:10] else end[:16]}"  # a date where it changes
        cells = [span, *(escape(row.dimensions.get(d, "*")) for d in dims), row.metric]
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


def drivers_jsonl(found: Any, dimensions: Sequence[str], top: int) -> None:
    """The ``top`` drivers of each dimension, one JSON object a line."""
    for dimension in dimensions:
        for driver in [d for d in found.drivers if d.dimension == dimension][:top]:
            out.print(json.dumps(driver._asdict(), separators=(",", ":")), highlight=False, markup=False)


def drivers_tables(found: Any, segment: str, window: str, versus: str, dimensions: Sequence[str], top: int) -> None:
    """The change of the segment's KPI, then a table of the ``top`` drivers of each dimension."""
    against = f"the previous {window}" if versus == "previous" else "the rest of the business"
    if found.kpi_now is None or found.kpi_before is None:
        err.print(f"{found.metric} {segment}: not enough answers in the window or in {against}")
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
