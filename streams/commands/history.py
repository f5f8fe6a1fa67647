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
from streams.commands.base import app, fail, open_for_writing, settings_of, worker_clock
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
        if output is not None or not to_kafka:
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
    line = (
        f"import: {converted.rows:,} responses of {export.name} -> {len(converted.events):,} events "
        f"({converted.blank_answers:,} questions left blank) in {time.monotonic() - started:.1f} s{sent}"
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
                clock=worker_clock(settings),
            )  # fmt: skip
        except CxPulseError as exc:
            fail(f"import: sending to {settings.feedback_topic}: {exc}")
    if stats.failed:
        fail(f"import: {len(stats.failed)} events were not delivered; first: {stats.failed[0]}")
    note = f"sent {stats.delivered:,} to {settings.feedback_topic}"
    if stats.too_old:
        note += (
            f" ({stats.too_old:,} older than the worker's retention, CXPULSE_RETENTION_SECONDS: it will dead-letter "
            "them as too_old)"
        )
    return note
