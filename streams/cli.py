"""The ``cxpulse`` command line: ``worker``, ``demo``, ``replay``, ``report``, ``acls`` and the other commands.

Settings come from ``CXPULSE_*`` environment variables (streams.config.Settings); flags override them.
Errors print one line to stderr and exit non-zero: 1 for a failure, 2 for bad usage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from schemas.codec import catalog_for, parse_timestamp_ms
from streams import broker as local_broker
from streams import render
from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings, effort_config, load_settings, parse_duration
from streams.core.journeys import instance_json
from streams.core.privacy import pseudonym
from streams.core.validate import Clock, DeadLetter
from streams.core.windows import result_json
from streams.errors import ConfigurationError, CxPulseError
from streams.produce import produce_file
from streams.render import err, out
from streams.replay import Progress as ProgressFn
from streams.replay import dead_letter_json, replay_file
from streams.topics import ensure_topics, topic_specs

app = typer.Typer(
    name="cxpulse",
    help="Streaming customer-experience metrics: rolling NPS, CES, CSAT, NLS and CAS per channel and journey.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: their "[env CXPULSE_...]" notes must show as written
)
PROGRESS_AFTER_SECONDS = 1.0  # a replay shows a progress bar once it has run this long (on a terminal)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]cxpulse:[/] {escape(message)}", highlight=False)  # user text is never markup
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"cxpulse {version('cxpulse')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Streaming customer-experience metrics: rolling NPS, CES, CSAT, NLS and CAS per channel and journey."""


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigurationError as exc:
        _fail(str(exc), 2)


def _start_local_broker(
    settings: Settings, port: int, controller_port: int | None, heap: str
) -> tuple[local_broker.BrokerSpec, subprocess.Popen[bytes], local_broker.Foreground, float]:
    """Resolve, start and wait for the local broker; exit with a one-line error when any step fails."""
    echo = lambda message: err.print(message, highlight=False)  # noqa: E731
    try:
        return local_broker.start_foreground(
            settings.data_dir, settings.kafka_lib_dir, port, controller_port, heap, echo
        )
    except local_broker.Interrupted:  # Ctrl-C while starting
        raise typer.Exit(0) from None
    except CxPulseError as exc:
        _fail(str(exc))


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


@app.command()
def broker(
    port: PortOpt = 9092,
    controller_port: ControllerOpt = None,
    data_dir: DataDirOpt = None,
    heap: HeapOpt = local_broker.DEFAULT_HEAP,
) -> None:
    """Run a single-node Apache Kafka (KRaft) on loopback in the foreground until Ctrl-C / SIGTERM.

    Formats the storage in DATA_DIR/kafka on first start; resolves the jars with Maven when missing.
    """
    settings = _settings(data_dir=data_dir)
    spec, proc, shutdown, took = _start_local_broker(settings, port, controller_port, heap)
    version = local_broker.kafka_version(spec.lib_dir)
    out.print(
        f"cxpulse broker: Kafka {version} ready on {spec.bootstrap} in {took:.1f} s "
        f"(java pid {proc.pid}; data {spec.kafka_dir}; log {spec.log_file})",
        highlight=False,
        soft_wrap=True,
    )
    sys.stdout.flush()
    try:
        shutdown.wait(spec.log_file)
    except CxPulseError as exc:
        _fail(str(exc))


@app.command()
def topics(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions [env CXPULSE_PARTITIONS].")] = None,
) -> None:
    """Create the pipeline's topics (those missing) with explicit partitions and configs."""
    if partitions is not None and partitions < 1:
        _fail(f"--partitions {partitions}: a topic needs at least 1 partition", 2)
    settings = _settings(kafka_bootstrap=bootstrap, partitions=partitions)
    try:
        created = ensure_topics(settings.kafka, topic_specs(settings), settings.replication_factor)
    except CxPulseError as exc:
        _fail(str(exc))
    out.print(f"created: {', '.join(created) or 'none (all exist)'}", highlight=False)


@app.command()
def acls(
    principal: Annotated[str, typer.Argument(help="Kafka principal, e.g. User:cxpulse-worker.")],
    role: Annotated[str, typer.Option(help="worker, sink or http (produce-only).")] = "worker",
    app_id: Annotated[str | None, typer.Option(help="App id [env CXPULSE_APP_ID].")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    command_config: Annotated[
        str, typer.Option(help="Admin client properties file for kafka-acls.sh (--command-config).")
    ] = "",
    precreated: Annotated[
        bool, typer.Option(help="Topics are created by an administrator: no Create on the pipeline's topics.")
    ] = False,
) -> None:
    """Print the kafka-acls commands that give PRINCIPAL exactly what a cxpulse role needs, and nothing more."""
    from streams import acls as cx_acls

    if role not in cx_acls.ROLES:
        _fail(f"--role {role}: one of {', '.join(cx_acls.ROLES)}", 2)
    settings = _settings(kafka_bootstrap=bootstrap, app_id=app_id)
    needed = cx_acls.acls_for(settings, role, precreated=precreated)
    commands = cx_acls.kafka_acls_commands(principal, needed, settings.kafka_bootstrap, command_config)
    for acl, command in zip(needed, commands, strict=True):
        out.print(f"# {acl.why}", highlight=False, soft_wrap=True)
        out.print(command, highlight=False, soft_wrap=True, markup=False)


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

    stop_after = _duration_ms(duration, "--duration") / 1000 if duration is not None else None
    settings = _settings(data_dir=data_dir, kafka_bootstrap=f"127.0.0.1:{port}")
    try:
        Demo(settings, out, err).run(port, controller_port, until_ready, stop_after)
    except local_broker.Interrupted:  # Ctrl-C while the broker started
        raise typer.Exit(0) from None
    except CxPulseError as exc:
        _fail(str(exc))


@app.command()
def worker(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    data_dir: DataDirOpt = None,
    loglevel: Annotated[str, typer.Option(help="Faust log level: crit, error, warn, info, debug.")] = "warn",
) -> None:
    """Run the stream worker: cx.feedback in, pane results on cx.metrics.panes, dead letters on the DLQ.

    Creates the topics it needs first, then runs the hot path and the Faust process together (their metrics
    summed on one endpoint). Runs in the foreground until Ctrl-C / SIGTERM.
    """
    _run_supervised("worker", bootstrap, data_dir, loglevel, roles=WORKER_ROLES)


WORKER_ROLES = ("hotpath", "merge", "sink", "http")  # sink: with CXPULSE_CLICKHOUSE_URL; http: CXPULSE_HTTP_PORT


def _run_supervised(
    command: str, bootstrap: str | None, data_dir: Path | None, loglevel: str, roles: tuple[str, ...]
) -> None:
    """`cxpulse worker` / `cxpulse sink`: the supervisor with the processes of ``roles``, one /metrics."""
    import logging

    from streams.worker import supervisor as sv

    settings = _settings(kafka_bootstrap=bootstrap, data_dir=data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    identity = sv.worker_identity(settings)
    boss = sv.Supervisor(settings, identity, loglevel, sv.child_env(settings), roles)
    try:  # first: a taken port is found without touching Kafka
        endpoint = sv.serve_metrics(boss, settings)
    except OSError as exc:
        _fail(f"{command}: metrics port {settings.metrics_port} (CXPULSE_METRICS_PORT): {exc.strerror}")
    try:
        if "hotpath" in roles:
            sv.prepare_topics(settings)
        else:  # a lone sink creates nothing: it reads what the worker creates
            sv.await_sink_topics(settings)
    except CxPulseError as exc:
        _fail(f"{command}: {exc}")
    err.print(
        f"cxpulse {command} {identity} ({settings.app_id}): {', '.join(c.name for c in boss.children)} on "
        f"{settings.kafka_bootstrap}; metrics {endpoint}",
        highlight=False,
    )
    sv.install_signals(boss)
    raise typer.Exit(boss.run())


@app.command()
def produce(
    events: Annotated[Path, typer.Argument(help="JSON lines or Avro container file of FeedbackEvents.")],
    topic: Annotated[str | None, typer.Option(help="Topic [env CXPULSE_FEEDBACK_TOPIC].")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    validate: Annotated[
        bool, typer.Option("--validate", help="Refuse invalid events (reported on stderr) instead of sending them.")
    ] = False,
) -> None:
    """Send a file of events to the feedback topic, the way a contact-center platform would.

    Without --validate every line or record is sent as it is, invalid ones too. With it, invalid events are
    refused, one dead-letter JSON line each on stdout (the summary goes to stderr), and the exit code is 3 when
    any was refused. A file that cannot be read or sent whole (a corrupt Avro container, a record the current
    schema cannot carry) is reported with what was sent and what was not, exit code 1.
    """
    settings = _settings(kafka_bootstrap=bootstrap, feedback_topic=topic)
    catalog = catalog_for(settings)
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            stats = produce_file(
                events,
                settings.kafka,
                settings.feedback_topic,
                catalog,
                validate=validate,
                on_refused=_refused_to_stdout,  # machine output on stdout, the summary on stderr
                progress=_progress(stack, events, "produce"),
                clock=_worker_clock(settings),
            )
        except CxPulseError as exc:
            _fail(f"produce: {exc}")
    if stats.failed:
        _fail(f"produce: {len(stats.failed)} messages were not delivered; first: {stats.failed[0]}")
    refused = sum(stats.refused.values())
    err.print(
        f"sent {stats.sent} events to {settings.feedback_topic} in {time.monotonic() - started:.1f} s"
        + (
            f"; refused {refused} ({', '.join(f'{k} {v}' for k, v in sorted(stats.refused.items()))})"
            if refused
            else ""
        ),
        highlight=False,
    )
    _warn_about_time(stats.future, stats.too_old, settings, "sent")
    if stats.not_sent:
        _fail(
            f"produce: {len(stats.not_sent)} input(s) of {events} not sent (the file could not be read or sent "
            f"whole); first: {stats.not_sent[0]}"
        )
    if refused:
        raise typer.Exit(3)


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(min=0.1, help="Answers per second, all channels together.")] = 50.0,
    duration: Annotated[
        str | None, typer.Option(help="How long, e.g. 90s, 10m (simulated time); live: until Ctrl-C by default.")
    ] = None,
    incident: Annotated[
        list[str] | None,
        typer.Option(
            help="Scripted incident, repeatable: effort:CHANNEL/JOURNEY@+START[~DURATION], nps:CHANNEL/JOURNEY@+..., "
            "outage:CHANNEL@+... (e.g. effort:chat/billing@+30s~5m)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, start and options give the same events.")] = 7,
    invalid_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of invalid events, as a real feed has (dead letters).")
    ] = 0.005,
    daily_curve: Annotated[
        bool,
        typer.Option(
            "--daily-curve", help="Vary the rate over the day (night low, daytime peaks); --rate is the mean."
        ),
    ] = False,
    channels: Annotated[str | None, typer.Option(help="Comma-separated channels (default: all six).")] = None,
    journeys: Annotated[str | None, typer.Option(help="Comma-separated journeys (default: all).")] = None,
    comeback: Annotated[
        str,
        typer.Option(
            help="Longest time before a customer whose matter a contact did not resolve comes back on the next "
            "channel (shortest: 1/20 of it). Keep it below the journey gap (CXPULSE_JOURNEY_GAP_SECONDS)."
        ),
    ] = "6h",
    start: Annotated[
        str | None,
        typer.Option(
            help="Simulated start, ISO-8601 or epoch ms (default: now live; with --to-file, --duration before now, so "
            "that the file ends now). Fix it to reproduce a file."
        ),
    ] = None,
    to_file: Annotated[
        Path | None,
        typer.Option("--to-file", help="Write JSON lines (or an Avro container for .avro) instead of Kafka."),
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Topic [env CXPULSE_FEEDBACK_TOPIC].")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
) -> None:
    """Generate contact-center feedback (canonical FeedbackEvents) with scripted incidents, live to Kafka at
    --rate, or to a file.

    Example: cxpulse simulate --rate 100 --incident effort:chat/billing@+30s~5m
    """
    from streams import simulate as sim

    settings = _settings(kafka_bootstrap=bootstrap, feedback_topic=topic)
    try:
        incidents = [sim.parse_incident(text) for text in incident or []]
        duration_ms = _duration_ms(duration, "--duration") if duration is not None else None
        start_ms = _simulated_start(start, duration_ms if to_file is not None else None)
        simulator = sim.Simulator(
            seed=seed,
            rate=rate,
            start_ms=start_ms,
            incidents=incidents,
            channels=_names(channels) or sim.CHANNELS,
            journeys=_names(journeys) or sim.JOURNEYS,
            invalid_share=invalid_share,
            daily_curve=daily_curve,
            comeback_ms=_duration_ms(comeback, "--comeback"),
        )
    except (ValueError, CxPulseError) as exc:
        _fail(f"simulate: {exc}", 2)
    for item in incidents:
        err.print(
            f"incident {item.kind} {item.channel}/{item.journey or '*'} from +{item.start_ms / 1000:g} s"
            + (f" for {item.duration_ms / 1000:g} s" if item.duration_ms is not None else ""),
            highlight=False,
            markup=False,
        )
    if to_file is not None:
        if duration_ms is None:
            _fail("simulate: --to-file needs --duration (how much simulated time to write)", 2)
        try:
            sent = sim.to_file(simulator, duration_ms, to_file)
        except OSError as exc:
            _fail(f"simulate: cannot write {to_file}: {exc.strerror or exc}")
        err.print(f"wrote {sent.events} events to {to_file} in {sent.seconds:.1f} s", highlight=False, markup=False)
        return
    sent = _simulate_live(simulator, duration_ms, settings)
    err.print(
        f"sent {sent.events} events to {settings.feedback_topic} in {sent.seconds:.1f} s", highlight=False, markup=False
    )


def _simulated_start(start: str | None, file_duration_ms: int | None) -> int:
    """--start as epoch ms; by default now, or for a file of ``file_duration_ms`` that long before now (a file is
    history: it ends now, and a worker refuses the future)."""
    now_ms = int(time.time() * 1000)
    if start is not None:
        return parse_timestamp_ms(int(start) if start.isdigit() else start)
    return now_ms - file_duration_ms if file_duration_ms is not None else now_ms


def _simulate_live(simulator: Any, duration_ms: int | None, settings: Settings) -> Any:
    """`cxpulse simulate` to Kafka, paced, until ``duration_ms`` of simulated time or Ctrl-C / SIGTERM."""
    from streams import simulate as sim

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def progress(count: int, seconds: float, active: list[Any]) -> None:
        incidents_now = ", ".join(f"{i.kind} {i.channel}/{i.journey or '*'}" for i in active) or "none"
        err.print(
            f"simulate: {count} events in {seconds:.0f} s ({count / seconds:.0f}/s); incidents active: {incidents_now}",
            highlight=False,
            markup=False,
        )

    try:
        catalog, topic = catalog_for(settings), settings.feedback_topic
        sent = sim.to_kafka(simulator, duration_ms, settings.kafka, topic, catalog, stop.is_set, progress)
    except CxPulseError as exc:
        _fail(f"simulate: {exc}")
    if sent.failed:
        _fail(f"simulate: {sent.failed} of {sent.events} events were not delivered to {settings.feedback_topic}")
    return sent


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


@app.command()
def report(
    window: Annotated[
        str | None, typer.Option(help="pane, or a rolling window such as 5m, 1h, 24h [1h; 24h with --journeys].")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="Group by: channel,journey | channel | journey | touchpoint | agent | team | reason_code "
            "[channel,journey]; with --journeys: journey | channel (the first channel) | journey,channel [journey]."
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
    from sinks import report as rp

    settings = _settings()
    pane_ms = settings.pane_seconds * 1000
    window = window or ("24h" if journeys else "1h")
    window_ms = None if window == "pane" else _duration_ms(window, "--window")
    if window_ms is not None and window_ms % pane_ms:
        _fail(f"--window {window} is not a whole number of panes ({settings.pane_seconds} s)", 2)
    if fmt not in ("table", "jsonl", "csv"):
        _fail(f"--format is table, jsonl or csv, not {fmt!r}", 2)
    dims = list(_names(by or ("journey" if journeys else "channel,journey")))
    now_ms = int(time.time() * 1000)
    since_ms = _since_ms(since, now_ms) if since is not None else None
    if journeys:
        if window_ms is None:
            _fail("--window pane is not for --journeys: journeys are counted by the window that holds their end", 2)
        if metric:
            _fail("--metric is not for --journeys: a journey's KPIs are over all its answers", 2)
        try:
            rp.check_journey_dimensions(dims)
            found = rp.journey_report(
                _reader(rp, settings), pane_ms=pane_ms, window_ms=window_ms, by=dims, now_ms=now_ms, since_ms=since_ms
            )
        except ValueError as exc:
            _fail(f"report: {exc}", 2)
        except CxPulseError as exc:
            _fail(f"report: {exc}")
        render.journey_report_rows(found, dims, window, fmt, min_n)
        return
    metrics = [_metric(m) for m in metric or []]
    try:
        rp.check_dimensions(dims)
        rows = rp.report(
            _reader(rp, settings),
            pane_ms=pane_ms,
            window_ms=window_ms,
            by=dims,
            metrics=metrics,
            now_ms=now_ms,
            since_ms=since_ms,
        )
    except ValueError as exc:
        _fail(f"report: {exc}", 2)
    except CxPulseError as exc:
        _fail(f"report: {exc}")
    render.report_rows(rows, dims, window, fmt, min_n)


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
    from sinks import report as rp

    settings = _settings()
    if fmt not in ("table", "jsonl"):
        _fail(f"--format is table or jsonl, not {fmt!r}", 2)
    ids = [customer_id]
    key = settings.customer_id_key.get_secret_value()
    if key:
        ids.append(pseudonym(key.encode(), customer_id))
    try:
        found = rp.customer_journeys(_reader(rp, settings), ids, only)
    except CxPulseError as exc:
        _fail(f"journey: {exc}")
    if not found:
        which = f" in journey {only!r}" if only else ""
        _fail(f"journey: no answers of customer {customer_id!r}{which} in the store")
    render.customer_journeys(found, customer_id, fmt)


METRIC_NAMES = ("NPS", "CES", "CSAT", "NLS", "CAS")


def _metric(text: str) -> str:
    """A metric name (any case), or exit 2 naming the five."""
    if text.upper() not in METRIC_NAMES:
        _fail(f"--metric {text}: one of {', '.join(METRIC_NAMES)}", 2)
    return text.upper()


def _no_such_segment(rp: Any, reader: Any, channel: str, journey: str, metric: str, window: str) -> NoReturn:
    """No answer in the segment: say which channels or journeys exist when the name given is not one of them."""
    for option, value in (("channel", channel), ("journey", journey)):
        if value == "*":
            continue
        known = rp.store_values(reader, option)
        if value not in known:
            _fail(f"drivers: no {option} {value!r} in the store; its {option}s: {', '.join(known) or 'none yet'}")
    _fail(f"drivers: no {metric} answers of {channel}/{journey} in the last {window}")


def _reader(rp: Any, settings: Settings) -> Any:
    """The store's reader, then one line on stderr naming the store read (a store that cannot be opened: one line
    naming it and the cause, exit 1)."""
    try:
        reader = rp.open_reader(settings)
    except CxPulseError as exc:
        _fail(str(exc))
    err.print(rp.describe_store(settings), highlight=False, markup=False, soft_wrap=True)
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
        _fail(f"--since {text!r} is neither a duration (24h) nor a time (ISO-8601 with offset, epoch ms)", 2)


@app.command()
def drivers(
    metric: Annotated[str, typer.Option(help="NPS, CES, CSAT, NLS or CAS.")] = "NPS",
    channel: Annotated[str, typer.Option(help="Channel of the segment (* = all).")] = "*",
    journey: Annotated[str, typer.Option(help="Journey of the segment (* = all).")] = "*",
    window: Annotated[str, typer.Option(help="The window that ends now: 1h, 24h, 7d, ...")] = "24h",
    vs: Annotated[
        str, typer.Option("--vs", help="previous (the window before) or rest (the rest of the business).")
    ] = "previous",
    by: Annotated[str, typer.Option(help="Dimensions to explain by.")] = "touchpoint,reason_code,agent,team",
    top: Annotated[int, typer.Option(min=1, help="Values shown per dimension.")] = 5,
    fmt: Annotated[str, typer.Option("--format", help="table or jsonl.")] = "table",
) -> None:
    """Why a KPI moved: which touchpoints, reason codes, agents and teams explain the change of a segment's KPI
    against the previous window or the rest of the business, each with its share of the change, n and a 95%
    interval (README: Root cause).
    """
    from sinks import report as rp

    settings = _settings()
    window_ms = _duration_ms(window, "--window")
    if fmt not in ("table", "jsonl"):
        _fail(f"--format is table or jsonl, not {fmt!r}", 2)
    metric = _metric(metric)
    try:
        reader = _reader(rp, settings)
        found = rp.drivers(
            reader,
            metric=metric,
            channel=channel,
            journey=journey,
            window_ms=window_ms,
            pane_ms=settings.pane_seconds * 1000,
            now_ms=int(time.time() * 1000),
            versus=vs,
            dimensions=list(_names(by)),
        )
    except ValueError as exc:
        _fail(f"drivers: {exc}", 2)
    except CxPulseError as exc:
        _fail(f"drivers: {exc}")
    if found.n_now == 0:
        _no_such_segment(rp, reader, channel, journey, found.metric, window)
    if fmt == "jsonl":
        render.drivers_jsonl(found, _names(by), top)
    else:
        render.drivers_tables(found, f"{channel}/{journey}", window, vs, _names(by), top)


TOPIC_ALIASES = ("feedback", "dlq", "results", "alerts", "followups")


@app.command()
def read(
    topic: Annotated[
        str, typer.Argument(help="A topic, or one of feedback, dlq, results, alerts, followups (the configured names).")
    ],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep reading new records until Ctrl-C.")] = False,
    from_end: Annotated[bool, typer.Option("--from-end", help="Only records that arrive from now on.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many records.")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
) -> None:
    """Print a topic's records as JSON lines, decoded: results, alerts, dead letters (with their reason headers),
    follow-ups, feedback. One object a line: partition, offset, timestamp, key, value (and headers)."""
    from streams import read as reader

    settings = _settings(kafka_bootstrap=bootstrap)
    if topic in TOPIC_ALIASES:
        name = getattr(settings, {"dlq": "dlq_topic"}.get(topic, f"{topic}_topic"))
    else:
        name = topic
    stop = {"now": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    catalog = catalog_for(settings)
    try:
        for record in reader.read(
            settings.kafka, name, catalog, from_end=from_end, follow=follow, limit=limit,
            stopping=lambda: stop["now"],
        ):  # fmt: skip
            sys.stdout.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n")
            if follow:
                sys.stdout.flush()
    except CxPulseError as exc:
        _fail(f"read: {exc}")
    except BrokenPipeError:  # `cxpulse read ... | head`
        sys.stderr.close()


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip()) if text else ()


def _refused_to_stdout(dead: DeadLetter) -> None:
    sys.stdout.write(dead_letter_json(dead) + "\n")


def _duration_ms(text: str, option: str) -> int:
    try:
        return round(parse_duration(text) * 1000)
    except ValueError as exc:
        _fail(f"{option}: {exc}", 2)


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
    settings = _settings()  # a bad CXPULSE_* value stops here (exit 2), before any work
    pane_ms = _duration_ms(pane, "--pane") if pane is not None else settings.pane_seconds * 1000
    pane = pane or f"{settings.pane_seconds}s"
    window_ms = None if window == "pane" else _duration_ms(window, "--window")
    gap_ms = _duration_ms(journey_gap, "--journey-gap") if journey_gap is not None else None
    if gap_ms is None:
        gap_ms = settings.journey_gap_seconds * 1000
    elif journeys is None:
        _fail("--journey-gap needs --journeys FILE", 2)
    detector = effort_config(settings)
    if window_ms is not None and window_ms % pane_ms:
        _fail(f"--window {window} is not a whole number of --pane {pane}", 2)
    started = time.monotonic()
    with ExitStack() as stack:
        # every output opened before any work: a path that cannot be written fails at once, with nothing half-done
        sink = _open_for_writing(stack, output, "--output") if output is not None else sys.stdout
        dead_file = _open_for_writing(stack, dead_letter, "--dead-letter") if dead_letter is not None else None
        alert_file = _open_for_writing(stack, alerts, "--alerts") if alerts is not None else None
        journey_file = _open_for_writing(stack, journeys, "--journeys") if journeys is not None else None

        def on_dead(dead: DeadLetter) -> None:
            if dead_file is not None:
                dead_file.write(dead_letter_json(dead) + "\n")

        try:
            result = replay_file(
                events,
                pane_ms,
                on_dead,
                _progress(stack, events, "replay"),
                _worker_clock(settings),
                gap_ms if journey_file is not None else None,
            )
        except CxPulseError as exc:
            _fail(f"replay: {exc}")
        except OSError as exc:
            _fail(f"replay: {events}: {exc.strerror}")
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
        _warn_about_time(stats.future, stats.too_old, settings, "counted")


def _worker_clock(settings: Settings) -> Clock:
    """The clock a worker started now would judge event times by (future tolerance, retention)."""
    return Clock(int(time.time() * 1000), DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000, settings.retention_seconds * 1000)


def _warn_about_time(future: int, too_old: int, settings: Settings, done: str) -> None:
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


def _open_for_writing(stack: ExitStack, path: Path, option: str) -> Any:
    """``path`` opened for writing, or one line naming the problem (exit 1)."""
    try:
        return stack.enter_context(path.open("w"))
    except OSError as exc:
        _fail(f"{option} {path}: {exc.strerror or exc}")


def _progress(stack: ExitStack, path: Path, verb: str) -> ProgressFn | None:
    """A progress callback that shows a bar on a terminal once the work has taken a second."""
    if not err.is_terminal or not path.is_file():
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


def main() -> None:
    """Entry point of the ``cxpulse`` console script."""
    app()


if __name__ == "__main__":
    main()
