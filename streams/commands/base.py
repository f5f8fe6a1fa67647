"""What every command of ``cxpulse`` shares: the typer app, one-line errors (exit 1 for a failure, 2 for bad usage),
the settings (``CXPULSE_*``, flags override them), the common options, durations, progress bars, time warnings."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings, load_settings, parse_duration
from streams.core.validate import Clock, DeadLetter
from streams.errors import ConfigurationError
from streams.render import err, out
from streams.replay import Progress as ProgressFn
from streams.replay import dead_letter_json

app = typer.Typer(
    name="cxpulse",
    help="Streaming customer-experience metrics: rolling NPS, CES, CSAT, NLS and CAS per channel and journey.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: their "[env CXPULSE_...]" notes must show as written
)


PROGRESS_AFTER_SECONDS = 1.0  # a replay shows a progress bar once it has run this long (on a terminal)


def stop_on_signals() -> threading.Event:
    """Ctrl-C (SIGINT) and SIGTERM set the returned event instead of raising KeyboardInterrupt wherever Python
    is: raised inside a delivery report, a callback librdkafka's poll() runs, the exception is lost and poll()
    raises SystemError "returned NULL without setting an exception" (confluent-kafka-python#150; reproduced with
    2.16.1, and a `produce` interrupted in CI exited 1 with that traceback).  A command's loop checks the event."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    return stop


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]cxpulse:[/] {escape(message)}", highlight=False)  # user text is never markup
    raise typer.Exit(code)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"cxpulse {version('cxpulse')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Streaming customer-experience metrics: rolling NPS, CES, CSAT, NLS and CAS per channel and journey."""


def settings_of(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigurationError as exc:
        fail(str(exc), 2)


PortOpt = Annotated[int, typer.Option("--port", min=1, max=65534, help="Kafka listener port on 127.0.0.1.")]


ControllerOpt = Annotated[
    int | None,
    typer.Option("--controller-port", min=1, max=65535, help="KRaft controller port (default: port + 1)."),
]


DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Local state folder [env CXPULSE_DATA_DIR, default .cxpulse]."),
]


HeapOpt = Annotated[str, typer.Option("--heap", help="JVM heap of the broker.")]


def names_of(text: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip()) if text else ()


def refused_to_stdout(dead: DeadLetter) -> None:
    sys.stdout.write(dead_letter_json(dead) + "\n")


def parse_ms(text: str, option: str) -> int:
    try:
        return round(parse_duration(text) * 1000)
    except ValueError as exc:
        fail(f"{option}: {exc}", 2)


def worker_clock(settings: Settings) -> Clock:
    """The clock a worker started now would judge event times by (future tolerance, retention)."""
    return Clock(int(time.time() * 1000), DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000, settings.retention_seconds * 1000)


def warn_about_time(future: int, too_old: int, settings: Settings, done: str) -> None:
    """Say how many events a worker would dead-letter for their time (produce and replay take any time)."""
    if future:
        err.print(
            f"warning: {future} of the events {done} lie more than {DEFAULT_FUTURE_TOLERANCE_SECONDS // 60} minutes "
            "in the future of this machine's clock: a worker dead-letters them (future_timestamp); `cxpulse simulate "
            "--to-file` writes history that ends now",
            highlight=False,
        )
    if too_old:
        err.print(
            f"warning: {too_old} of the events {done} are older than the retention (CXPULSE_RETENTION_SECONDS="
            f"{settings.retention_seconds}): a worker dead-letters them (too_old)",
            highlight=False,
        )


def open_for_writing(stack: ExitStack, path: Path, option: str) -> Any:
    """``path`` opened for writing (``-``: standard output), or one line naming the problem (exit 1)."""
    if str(path) == "-":
        return sys.stdout
    try:
        return stack.enter_context(path.open("w"))
    except OSError as exc:
        fail(f"{option} {path}: {exc.strerror or exc}")


def progress_of(stack: ExitStack, path: Path, verb: str) -> ProgressFn | None:
    """A progress callback that shows a bar on a terminal once the work has taken a second."""
    if not err.is_terminal or str(path) == "-" or not path.is_file():
        return None
    total = path.stat().st_size
    started = time.monotonic()
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(f"{verb} {path.name}", total=total)
    shown = False

    def update(done: int) -> None:
        nonlocal shown
        if not shown and time.monotonic() - started >= PROGRESS_AFTER_SECONDS:
            stack.enter_context(bar)
            shown = True
        bar.update(task, completed=done)

    return update


def rows_progress(stack: ExitStack, verb: str) -> Callable[[int, int], None] | None:
    """A progress callback ``(rows done, rows in all)`` that shows a bar with the rate and time left on a terminal
    once the work has taken a second."""
    if not err.is_terminal:
        return None
    started = time.monotonic()
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows, {task.fields[rate]:,.0f}/s"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(verb, total=None, rate=0.0)
    shown = False

    def update(done: int, total: int) -> None:
        nonlocal shown
        elapsed = time.monotonic() - started
        if not shown and elapsed >= PROGRESS_AFTER_SECONDS:
            stack.enter_context(bar)
            shown = True
        bar.update(task, completed=done, total=total, rate=done / max(elapsed, 1e-6))

    return update
