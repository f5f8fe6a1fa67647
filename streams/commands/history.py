"""``cxpulse import``: a survey platform's export (CSV or .xlsx) as contract events (streams/history.py)."""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from schemas.codec import catalog_for
from sinks.clickhouse import KEEP_DAYS
from sinks.store_access import open_writer
from streams.backfill import BackfillStats, backfill_history, cutoff_of, kept_from
from streams.commands.base import (
    app,
    fail,
    open_for_writing,
    progress_of,
    rows_progress,
    settings_of,
    stop_on_signals,
    worker_clock,
)
from streams.config import Settings
from streams.core.windows import iso_utc
from streams.errors import CxPulseError
from streams.history import ImportError_, by_reason, import_export, load_mapping
from streams.produce import produce_file
from streams.render import err


@app.command("import")
def import_(
    export: Annotated[Path, typer.Argument(help="The survey export: CSV (any delimiter, encoding, BOM) or .xlsx.")],
    mapping: Annotated[
        Path, typer.Option("--map", help="The mapping file (YAML): columns, time zone, questions (docs/usage.md).")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the events here as JSON lines (-: standard output).")
    ] = None,
    to_kafka: Annotated[
        bool, typer.Option("--to-kafka", help="Send the events to the feedback topic, as `cxpulse produce` does.")
    ] = False,
    backfill_: Annotated[
        bool,
        typer.Option(
            "--backfill", help="Write the events older than the stream's retention into the store (cxpulse backfill)."
        ),
    ] = False,
    refusals: Annotated[
        Path | None,
        typer.Option(help="Where the refused rows go, one JSON line each (default: EXPORT.refusals.jsonl beside it)."),
    ] = None,
) -> None:
    """Turn a survey platform's export into contract events: one event per answered question of each response,
    event_id = response id and question column (importing the same export again sends nothing new).

    A row that cannot be read is refused: one JSON line each (row number as the spreadsheet shows it, column,
    reason, detail) in the refusals file, a summary by reason, exit code 3. Without -o and --to-kafka the events go
    to standard output.
    """
    started = time.monotonic()
    try:
        spec = load_mapping(mapping)
        converted = import_export(export, spec)
    except ImportError_ as exc:
        fail(f"import: {exc}")
    refused_to = refusals or export.with_name(export.name + ".refusals.jsonl")
    with ExitStack() as stack:
        if output is not None or not (to_kafka or backfill_):
            sink = open_for_writing(stack, output or Path("-"), "--output")
            for event in converted.events:
                sink.write(json.dumps(event, ensure_ascii=False) + "\n")
        if converted.refusals:
            lines = open_for_writing(stack, refused_to, "--refusals")
            for refusal in converted.refusals:
                lines.write(json.dumps(refusal.json(), ensure_ascii=False) + "\n")
        elif refusals is None:
            refused_to.unlink(missing_ok=True)  # an old run's refusals would mislead
    sent = ""
    if to_kafka:
        sent = "; " + _send(converted.events)
    if backfill_:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "events.jsonl"
            path.write_text("".join(json.dumps(event, ensure_ascii=False) + "\n" for event in converted.events))
            _backfill(settings_of(), path)
    line = (
        f"import: {converted.rows:,} responses of {export.name} -> {len(converted.events):,} events "
        f"(blank answers: {converted.blank_answers:,}) in {time.monotonic() - started:.1f} s{sent}"
    )
    err.print(line, highlight=False, markup=False, soft_wrap=True)
    if converted.refusals:
        reasons = ", ".join(f"{reason} {count}" for reason, count in by_reason(converted.refusals).items())
        err.print(
            f"import: refused {len(converted.refusals):,} ({reasons}); one line each in {refused_to}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


def _send(events: list[dict[str, object]]) -> str:
    """The events to the feedback topic (validated: the contract refuses what a worker would dead-letter)."""
    settings = settings_of()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        path.write_text("".join(json.dumps(event, ensure_ascii=False) + "\n" for event in events))
        try:
            stats = produce_file(
                path, settings.kafka, settings.feedback_topic, catalog_for(settings), validate=True,
                clock=worker_clock(settings), stopping=stop_on_signals().is_set,
            )  # fmt: skip
        except CxPulseError as exc:
            fail(f"import: sending to {settings.feedback_topic}: {exc}")
    if stats.interrupted:
        fail(
            f"import: interrupted: {stats.sent:,} events sent to {settings.feedback_topic}, {stats.delivered:,} of "
            "them delivered (importing again is safe: the worker counts each event_id once)",
            130,
        )
    if stats.failed:
        fail(f"import: {len(stats.failed)} events were not delivered; first: {stats.failed[0]}")
    note = f"sent {stats.delivered:,} to {settings.feedback_topic}"
    if stats.too_old:
        note += (
            f" ({stats.too_old:,} older than the worker's retention, CXPULSE_RETENTION_SECONDS: it will dead-letter "
            "them as too_old)"
        )
    return note


@app.command()
def backfill(
    events: Annotated[Path, typer.Argument(help="JSON lines or Avro container file of FeedbackEvents.")],
) -> None:
    """Write history older than the stream's retention straight into the store, with replay's code: pane
    results, answers (with their themes) and journey instances. Answers inside the retention are left out (send
    them through Kafka: `cxpulse produce`); a pane the stream already wrote is left as it is. Running it again
    changes nothing; nothing goes to Kafka, so no alert wakes. Beside a running worker that holds the embedded
    store, the history goes through that worker."""
    settings = settings_of()
    stats = _backfill(settings, events)
    if stats.dead:
        raise typer.Exit(3)


def _backfill(settings: Settings, events: Path) -> BackfillStats:
    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    stats = BackfillStats(cutoff_ms=cutoff_of(settings, now_ms), kept_from_ms=kept_from(settings, now_ms))
    with ExitStack() as stack:
        try:
            client, where = open_writer(settings)
            err.print(f"backfill: into {where}", highlight=False, markup=False, soft_wrap=True)
            backfill_history(
                client, events, settings, stats, progress_of(stack, events, "backfill"),
                rows_progress(stack, "writing to the store"),
            )  # fmt: skip
        except CxPulseError as exc:
            fail(f"backfill: {exc}")
    err.print(
        f"backfill: {stats.read:,} answers read in {time.monotonic() - started:.1f} s; before "
        f"{iso_utc(stats.cutoff_ms)} (the stream's retention, CXPULSE_RETENTION_SECONDS): {stats.panes:,} pane "
        f"results, {stats.answers:,} answers, {stats.journeys:,} journey instances written (version 0)"
        + (
            f"; {stats.stream_panes:,} panes the stream had written left as they are (and their "
            f"{stats.stream_answers:,} answers)"
            if stats.stream_panes
            else ""
        )
        + (f"; {stats.duplicates:,} duplicates" if stats.duplicates else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if stats.newer:
        err.print(
            f"backfill: {stats.newer:,} answers at or after {iso_utc(stats.cutoff_ms)} left out: the stream counts "
            "those; send them with `cxpulse produce FILE` (or `cxpulse import ... --to-kafka`)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if stats.expired:
        err.print(
            f"backfill: {stats.expired:,} answers before {iso_utc(stats.kept_from_ms)} left out: the store keeps "
            f"{KEEP_DAYS} days (every table's TTL; ClickHouse would drop them at its next merge)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if stats.dead:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.dead.items()))
        err.print(f"backfill: refused {sum(stats.dead.values()):,} ({reasons}): `cxpulse replay FILE --dead-letter -` "
                  "says why each", highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    return stats
