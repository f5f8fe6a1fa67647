"""The commands that run the pipeline: ``worker``, ``sink`` (their supervisor: streams.worker.supervisor) and
``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams import broker as local_broker
from streams.commands.base import (
    ControllerOpt,
    DataDirOpt,
    PortOpt,
    app,
    fail,
    parse_ms,
    settings_of,
)
from streams.errors import CxPulseError
from streams.render import err, out


@app.command()
def demo(
    port: PortOpt = 9092,
    controller_port: ControllerOpt = None,
    data_dir: DataDirOpt = None,
    until_ready: Annotated[
        bool,
        typer.Option("--until-ready", help="Stop once everything is up (a smoke check) instead of running."),
    ] = False,
    duration: Annotated[
        str | None, typer.Option(help="Stop after this long (e.g. 90s); default: until Ctrl-C.")
    ] = None,
) -> None:
    """The main job on the embedded default: local Kafka, the worker (KPI gauges, effort detector, ClickHouse
    sink), the simulator with an effort incident 30 s in, and a live dashboard of KPIs and alerts.

    A time-lapse: 5-second panes and a 60-second effort baseline, so that the alert fires within about a
    minute. Runs in the foreground until Ctrl-C (or --duration); stops every process it started.
    """
    from streams.demo import Demo

    stop_after = parse_ms(duration, "--duration") / 1000 if duration is not None else None
    settings = settings_of(data_dir=data_dir, kafka_bootstrap=f"127.0.0.1:{port}")
    try:
        Demo(settings, out, err).run(port, controller_port, until_ready, stop_after)
    except local_broker.Interrupted:  # Ctrl-C while the broker started
        raise typer.Exit(0) from None
    except CxPulseError as exc:
        fail(str(exc))


@app.command()
def worker(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    data_dir: DataDirOpt = None,
    loglevel: Annotated[str, typer.Option(help="Faust log level: crit, error, warn, info, debug.")] = "warn",
) -> None:
    """Run the stream worker: cx.feedback in, pane results on cx.metrics.panes, dead letters on the DLQ.

    Creates the topics it needs first (waiting for them while Kafka is not ready), then runs its processes: the hot
    path, merge, journeys (CXPULSE_JOURNEYS), the ClickHouse sink (CXPULSE_CLICKHOUSE_URL, the embedded store by
    default) and the HTTP ingest (CXPULSE_HTTP_PORT), their metrics summed on one endpoint. Runs in the foreground
    until Ctrl-C / SIGTERM.
    """
    _run_supervised("worker", bootstrap, data_dir, loglevel, roles=WORKER_ROLES)


WORKER_ROLES = ("hotpath", "merge", "sink", "http")  # sink: with CXPULSE_CLICKHOUSE_URL; http: CXPULSE_HTTP_PORT


def _run_supervised(
    command: str, bootstrap: str | None, data_dir: Path | None, loglevel: str, roles: tuple[str, ...]
) -> None:
    """`cxpulse worker` / `cxpulse sink`: the supervisor with the processes of ``roles``, one /metrics."""
    import logging

    from streams.themes import theme_matcher
    from streams.worker import supervisor as sv

    settings = settings_of(kafka_bootstrap=bootstrap, data_dir=data_dir)
    try:  # the theme taxonomy, as each hot-path slot will read it: a bad file is one line now, not a crash loop
        theme_matcher(settings)
    except CxPulseError as exc:
        fail(f"{command}: {exc}", 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    identity = sv.worker_identity(settings)
    boss = sv.Supervisor(settings, identity, loglevel, sv.child_env(settings), roles)
    try:  # first: a taken port is found without touching Kafka
        endpoint = sv.serve_metrics(boss, settings)
    except OSError as exc:
        fail(f"{command}: metrics port {settings.metrics_port} (CXPULSE_METRICS_PORT): {exc.strerror}")
    try:
        if "hotpath" in roles:
            sv.prepare_topics(settings)
        else:  # a lone sink creates nothing: it reads what the worker creates
            sv.await_sink_topics(settings)
    except CxPulseError as exc:
        fail(f"{command}: {exc}")
    err.print(
        f"cxpulse {command} {identity} ({settings.app_id}): {', '.join(c.name for c in boss.children)} on "
        f"{settings.kafka_bootstrap}; metrics {endpoint}",
        highlight=False,
    )
    sv.install_signals(boss)
    raise typer.Exit(boss.run())


@app.command()
def sink(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    data_dir: DataDirOpt = None,
    loglevel: Annotated[str, typer.Option(help="Faust log level: crit, error, warn, info, debug.")] = "warn",
) -> None:
    """Run the ClickHouse sink alone (production scale-out; `cxpulse worker` runs one itself).

    Writes every pane result of cx.metrics.panes and every counted answer to CXPULSE_CLICKHOUSE_URL, in
    batches, idempotently; pauses while ClickHouse is away. Runs until Ctrl-C / SIGTERM.
    """
    _run_supervised("sink", bootstrap, data_dir, loglevel, roles=("sink",))
