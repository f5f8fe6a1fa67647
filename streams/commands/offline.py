"""``cxpulse replay``: the pipeline over a file, no Kafka, no clock (streams.replay)."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from streams import render
from streams.commands.base import (
    app,
    fail,
    open_for_writing,
    parse_ms,
    progress_of,
    settings_of,
    warn_about_time,
    worker_clock,
)
from streams.config import effort_config
from streams.core.journeys import instance_json
from streams.core.validate import DeadLetter
from streams.core.windows import result_json
from streams.errors import CxPulseError
from streams.render import err
from streams.replay import dead_letter_json, replay_file


@app.command()
def replay(
    events: Annotated[Path, typer.Argument(help="JSON lines or Avro container file of FeedbackEvents.")],
    pane: Annotated[
        str | None, typer.Option(help="Pane length, e.g. 60s, 5m [env CXPULSE_PANE_SECONDS, default 60s].")
    ] = None,
    window: Annotated[
        str,
        typer.Option(help="'pane' for pane results, or a rolling window (5m, 1h, 24h) as of the latest event."),
    ] = "pane",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Results file (default stdout).")] = None,
    dead_letter: Annotated[
        Path | None, typer.Option("--dead-letter", help="Write dead letters here as JSON lines.")
    ] = None,
    alerts: Annotated[
        Path | None,
        typer.Option("--alerts", help="Write every effort-spike FIRING/RESOLVED alert here as JSON lines."),
    ] = None,
    journeys: Annotated[
        Path | None,
        typer.Option("--journeys", help="Write every customer journey instance here as JSON lines (contract 8)."),
    ] = None,
    journey_gap: Annotated[
        str | None,
        typer.Option(help="Journey gap G, e.g. 72h, 30m [env CXPULSE_JOURNEY_GAP_SECONDS, default 72h]."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Compute the window results of a file of events offline, exactly as the stream does.

    Prints one JSON object per group with n > 0 (docs/contract.md section 6). Invalid events are data, not
    failures: they go to --dead-letter and the exit code stays 0.
    """
    settings = settings_of()  # a bad CXPULSE_* value stops here (exit 2), before any work
    pane_ms = parse_ms(pane, "--pane") if pane is not None else settings.pane_seconds * 1000
    pane = pane or f"{settings.pane_seconds}s"
    window_ms = None if window == "pane" else parse_ms(window, "--window")
    gap_ms = parse_ms(journey_gap, "--journey-gap") if journey_gap is not None else None
    if gap_ms is None:
        gap_ms = settings.journey_gap_seconds * 1000
    elif journeys is None:
        fail("--journey-gap needs --journeys FILE", 2)
    detector = effort_config(settings)
    if window_ms is not None and window_ms % pane_ms:
        fail(f"--window {window} is not a whole number of --pane {pane}", 2)
    started = time.monotonic()
    with ExitStack() as stack:
        # every output opened before any work: a path that cannot be written fails at once, with nothing half-done
        sink = open_for_writing(stack, output, "--output") if output is not None else sys.stdout
        dead_file = open_for_writing(stack, dead_letter, "--dead-letter") if dead_letter is not None else None
        alert_file = open_for_writing(stack, alerts, "--alerts") if alerts is not None else None
        journey_file = open_for_writing(stack, journeys, "--journeys") if journeys is not None else None

        def on_dead(dead: DeadLetter) -> None:
            if dead_file is not None:
                dead_file.write(dead_letter_json(dead) + "\n")

        try:
            result = replay_file(
                events,
                pane_ms,
                on_dead,
                progress_of(stack, events, "replay"),
                worker_clock(settings),
                gap_ms if journey_file is not None else None,
            )
        except CxPulseError as exc:
            fail(f"replay: {exc}")
        except OSError as exc:
            fail(f"replay: {events}: {exc.strerror}")
        results = result.results(window_ms)
        for record in results:
            sink.write(json.dumps(result_json(record), separators=(",", ":")) + "\n")
        fired = result.alerts(detector) if alert_file is not None else []
        if alert_file is not None:
            alert_file.writelines(json.dumps(alert, separators=(",", ":")) + "\n" for alert in fired)
        instances = result.journey_instances()
        if journey_file is not None:
            journey_file.writelines(json.dumps(instance_json(i), separators=(",", ":")) + "\n" for i in instances)
    if not quiet:
        stats = result.stats
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.dead_letters.items())) or "none"
        err.print(
            f"replayed {stats.read} events in {time.monotonic() - started:.1f} s: {stats.counted} counted, "
            f"{stats.duplicates} duplicates, {sum(stats.dead_letters.values())} dead letters ({reasons}); "
            f"{render.count(len(results), 'result')}"
            + (f"; {render.count(len(fired), 'effort alert')}" if alerts is not None else "")
            + (
                f"; {render.count(len(instances), 'journey instance')} "
                f"({sum(i.closed for i in instances)} closed, gap {gap_ms / 1000:g} s)"
                if journeys is not None
                else ""
            ),
            highlight=False,
        )
        warn_about_time(stats.future, stats.too_old, settings, "counted")
