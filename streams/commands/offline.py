"""``cxpulse replay``: the pipeline over a file, no Kafka, no clock (streams.replay)."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, NamedTuple

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
from streams.config import Settings, effort_config
from streams.core.journeys import instance_json
from streams.core.validate import DeadLetter
from streams.core.windows import result_json
from streams.errors import CxPulseError
from streams.render import err
from streams.replay import Replay, dead_letter_json, replay_file
from streams.themes import theme_matcher

EventsOpt = Annotated[
    Path, typer.Argument(help="JSON lines or Avro container file of FeedbackEvents (- for standard input).")
]
PaneOpt = Annotated[str | None, typer.Option(help="Pane length, e.g. 60s, 5m [env CXPULSE_PANE_SECONDS, default 60s].")]
WindowOpt = Annotated[
    str,
    typer.Option(help="'pane' for pane results, or a rolling window (5m, 1h, 24h) as of the latest event."),
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Results file (default, or -: standard output).")
]
DeadLetterOpt = Annotated[
    Path | None, typer.Option("--dead-letter", help="Write dead letters here as JSON lines (-: standard output).")
]
AlertsOpt = Annotated[
    Path | None,
    typer.Option(
        "--alerts", help="Write every effort-spike FIRING/RESOLVED alert here as JSON lines (-: standard output)."
    ),
]
JourneysOpt = Annotated[
    Path | None,
    typer.Option(
        "--journeys", help="Write every customer journey instance here as JSON lines (contract 8; -: standard output)."
    ),
]
JourneyGapOpt = Annotated[
    str | None,
    typer.Option(help="Journey gap G, e.g. 72h, 30m [env CXPULSE_JOURNEY_GAP_SECONDS, default 72h]."),
]
ThemesOpt = Annotated[
    Path | None,
    typer.Option(
        "--themes",
        help="Write the theme results here as JSON lines: per pane (or --window), channel, journey, metric and theme "
        "what its answers count, '(any)' for every commented answer (contract 9; -: standard output).",
    ),
]
AnswersOpt = Annotated[
    Path | None,
    typer.Option(
        "--answers",
        help="Write every counted answer here as the store keeps it (normalised, its comment redacted, its themes) "
        "as JSON lines (-: standard output).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")]


@app.command()
def replay(
    events: EventsOpt,
    pane: PaneOpt = None,
    window: WindowOpt = "pane",
    output: OutputOpt = None,
    dead_letter: DeadLetterOpt = None,
    alerts: AlertsOpt = None,
    journeys: JourneysOpt = None,
    journey_gap: JourneyGapOpt = None,
    themes: ThemesOpt = None,
    answers: AnswersOpt = None,
    quiet: QuietOpt = False,
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
        theme_file = open_for_writing(stack, themes, "--themes") if themes is not None else None
        answer_file = open_for_writing(stack, answers, "--answers") if answers is not None else None

        files = _Files(dead_file, answer_file)
        result = _replay(events, pane_ms, stack, files, settings, gap_ms if journey_file is not None else None)
        results = result.results(window_ms)
        for record in results:
            sink.write(json.dumps(result_json(record), separators=(",", ":")) + "\n")
        if theme_file is not None:
            theme_file.writelines(_line(r) for r in result.theme_results(window_ms))
        fired = result.alerts(detector) if alert_file is not None else []
        if alert_file is not None:
            alert_file.writelines(json.dumps(alert, separators=(",", ":")) + "\n" for alert in fired)
        instances = result.journey_instances()
        if journey_file is not None:
            journey_file.writelines(json.dumps(instance_json(i), separators=(",", ":")) + "\n" for i in instances)
    if not quiet:
        _summary(result, time.monotonic() - started, len(results), fired if alerts else None, instances if journeys
                 else None, gap_ms)  # fmt: skip
        warn_about_time(result.stats.future, result.stats.too_old, settings, "counted")


class _Files(NamedTuple):
    """Where replay writes as it goes (None: not asked for)."""

    dead_letters: Any
    answers: Any


def _line(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


def _replay(
    events: Path, pane_ms: int, stack: ExitStack, files: _Files, settings: Settings, gap_ms: int | None
) -> Replay:
    """The file replayed, its dead letters and answers written as they are found; one line and exit 1 when it
    cannot be read (or its theme taxonomy cannot be used)."""

    def on_dead(dead: DeadLetter) -> None:
        if files.dead_letters is not None:
            files.dead_letters.write(dead_letter_json(dead) + "\n")

    def on_answer(answer: dict[str, Any]) -> None:
        files.answers.write(_line(answer))

    try:
        return replay_file(
            events,
            pane_ms,
            on_dead,
            progress_of(stack, events, "replay"),
            worker_clock(settings),
            gap_ms,
            comments=settings.comments,
            matcher=theme_matcher(settings),
            on_answer=on_answer if files.answers is not None else None,
        )
    except CxPulseError as exc:
        fail(f"replay: {exc}")
    except OSError as exc:
        fail(f"replay: {events}: {exc.strerror}")


def _summary(result: Replay, seconds: float, results: int, fired: list[Any] | None, instances: list[Any] | None,
             gap_ms: int) -> None:  # fmt: skip
    """The replay's one line on stderr: what was read, counted, refused, written."""
    stats = result.stats
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.dead_letters.items())) or "none"
    line = (
        f"replayed {stats.read} events in {seconds:.1f} s: {stats.counted} counted, {stats.duplicates} duplicates, "
        f"{sum(stats.dead_letters.values())} dead letters ({reasons}); {render.count(results, 'result')}"
    )
    if fired is not None:
        line += f"; {render.count(len(fired), 'effort alert')}"
    if instances is not None:
        closed = sum(i.closed for i in instances)
        line += f"; {render.count(len(instances), 'journey instance')} ({closed} closed, gap {gap_ms / 1000:g} s)"
    err.print(line, highlight=False)
