"""The commands that talk to Kafka: ``broker`` (a local Kafka), ``topics``, ``acls``, ``produce``, ``simulate``,
``read``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.codec import catalog_for, parse_timestamp_ms
from streams import broker as local_broker
from streams.commands.base import (
    ControllerOpt,
    DataDirOpt,
    HeapOpt,
    PortOpt,
    app,
    fail,
    names_of,
    parse_ms,
    progress_of,
    refused_to_stdout,
    settings_of,
    stop_on_signals,
    warn_about_time,
    worker_clock,
)
from streams.config import Settings
from streams.errors import CxPulseError
from streams.produce import ProduceStats, produce_file
from streams.render import err, out
from streams.topics import ensure_topics, topic_specs


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
        fail(str(exc))


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
    settings = settings_of(data_dir=data_dir)
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
        fail(str(exc))


@app.command()
def topics(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions [env CXPULSE_PARTITIONS].")] = None,
) -> None:
    """Create the pipeline's topics (those missing) with explicit partitions and configs."""
    if partitions is not None and partitions < 1:
        fail(f"--partitions {partitions}: a topic needs at least 1 partition", 2)
    settings = settings_of(kafka_bootstrap=bootstrap, partitions=partitions)
    try:
        created = ensure_topics(settings.kafka, topic_specs(settings), settings.replication_factor)
    except CxPulseError as exc:
        fail(str(exc))
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
        fail(f"--role {role}: one of {', '.join(cx_acls.ROLES)}", 2)
    settings = settings_of(kafka_bootstrap=bootstrap, app_id=app_id)
    needed = cx_acls.acls_for(settings, role, precreated=precreated)
    commands = cx_acls.kafka_acls_commands(principal, needed, settings.kafka_bootstrap, command_config)
    for acl, command in zip(needed, commands, strict=True):
        out.print(f"# {acl.why}", highlight=False, soft_wrap=True)
        out.print(command, highlight=False, soft_wrap=True, markup=False)


@app.command()
def produce(
    events: Annotated[
        Path, typer.Argument(help="JSON lines or Avro container file of FeedbackEvents (- for standard input).")
    ],
    topic: Annotated[str | None, typer.Option(help="Topic [env CXPULSE_FEEDBACK_TOPIC].")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate",
            help="Refuse invalid events (one dead-letter JSON line each on stdout) instead of sending them.",
        ),
    ] = False,
) -> None:
    """Send a file of events (- for standard input) to the feedback topic, the way a contact-center platform would.

    Without --validate every line or record is sent as it is, invalid ones too, and the summary says how many the
    worker will dead-letter, by reason. With it, invalid events are refused, one dead-letter JSON line each on
    stdout (the summary goes to stderr), and the exit code is 3 when any was refused. A file that cannot be read
    or sent whole (a corrupt Avro container, a record the current schema cannot carry) is reported with what was
    sent and what was not, exit code 1. Ctrl-C stops it, says how many were sent and delivered, exit code 130.
    """
    settings = settings_of(kafka_bootstrap=bootstrap, feedback_topic=topic)
    catalog = catalog_for(settings)
    started = time.monotonic()
    stop = stop_on_signals()  # Ctrl-C and SIGTERM: say what was sent and delivered
    with ExitStack() as stack:
        try:
            stats = produce_file(
                events,
                settings.kafka,
                settings.feedback_topic,
                catalog,
                validate=validate,
                on_refused=refused_to_stdout,  # machine output on stdout, the summary on stderr
                progress=progress_of(stack, events, "produce"),
                clock=worker_clock(settings),
                stopping=stop.is_set,
            )
        except CxPulseError as exc:
            fail(f"produce: {exc}")
    if stats.interrupted:
        err.print(
            f"produce: interrupted: {stats.sent} events sent to {settings.feedback_topic}, {stats.delivered} of them "
            f"delivered ({stats.sent - stats.delivered} not confirmed; sending the file again is safe: the worker "
            "counts each event_id once)",
            highlight=False,
        )
        raise typer.Exit(130)
    if stats.failed:
        fail(f"produce: {len(stats.failed)} messages were not delivered; first: {stats.failed[0]}")
    _produce_summary(stats, settings, time.monotonic() - started)
    if stats.not_sent:
        fail(
            f"produce: {len(stats.not_sent)} input(s) of {events} not sent (the file could not be read or sent "
            f"whole); first: {stats.not_sent[0]}"
        )
    if stats.refused:
        raise typer.Exit(3)


def _by_reason(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))


def _produce_summary(stats: ProduceStats, settings: Settings, seconds: float) -> None:
    """What was sent, refused, and will be dead-lettered by the worker."""
    refused = sum(stats.refused.values())
    line = f"sent {stats.sent} events to {settings.feedback_topic} in {seconds:.1f} s"
    if refused:
        line += f"; refused {refused} ({_by_reason(stats.refused)})"
    will = sum(stats.will_refuse.values())
    if will:
        line += (
            f"; the worker will dead-letter {will} of them ({_by_reason(stats.will_refuse)}): --validate sends only "
            "the valid ones, `cxpulse replay FILE --dead-letter -` lists why each is refused"
        )
    err.print(line, highlight=False)
    warn_about_time(stats.future, stats.too_old, settings, "sent")


SimRateOpt = Annotated[float, typer.Option(min=0.1, help="Answers per second, all channels together.")]
SimDurationOpt = Annotated[
    str | None, typer.Option(help="How long, e.g. 90s, 10m (simulated time); live: until Ctrl-C by default.")
]
SimIncidentOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Scripted incident, repeatable: effort:CHANNEL/JOURNEY@+START[~DURATION], nps:CHANNEL/JOURNEY@+..., "
        "outage:CHANNEL@+... (e.g. effort:chat/billing@+30s~5m)."
    ),
]
SimSeedOpt = Annotated[int, typer.Option(help="Random seed: the same seed, start and options give the same events.")]
SimInvalidShareOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Share of invalid events, as a real feed has (dead letters).")
]
SimDailyCurveOpt = Annotated[
    bool,
    typer.Option("--daily-curve", help="Vary the rate over the day (night low, daytime peaks); --rate is the mean."),
]
SimChannelsOpt = Annotated[str | None, typer.Option(help="Comma-separated channels (default: all six).")]
SimJourneysOpt = Annotated[str | None, typer.Option(help="Comma-separated journeys (default: all).")]
SimComebackOpt = Annotated[
    str,
    typer.Option(
        help="Longest time before a customer whose matter a contact did not resolve comes back on the next "
        "channel (shortest: 1/20 of it). Keep it below the journey gap (CXPULSE_JOURNEY_GAP_SECONDS)."
    ),
]
SimStartOpt = Annotated[
    str | None,
    typer.Option(
        help="Simulated start, ISO-8601 or epoch ms (default: now live; with --to-file, --duration before now, so "
        "that the file ends now). Fix it to reproduce a file."
    ),
]
SimToFileOpt = Annotated[
    Path | None,
    typer.Option("--to-file", help="Write JSON lines (or an Avro container for .avro) instead of Kafka."),
]
SimTopicOpt = Annotated[str | None, typer.Option(help="Topic [env CXPULSE_FEEDBACK_TOPIC].")]
SimBootstrapOpt = Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")]


@app.command()
def simulate(
    rate: SimRateOpt = 50.0,
    duration: SimDurationOpt = None,
    incident: SimIncidentOpt = None,
    seed: SimSeedOpt = 7,
    invalid_share: SimInvalidShareOpt = 0.005,
    daily_curve: SimDailyCurveOpt = False,
    channels: SimChannelsOpt = None,
    journeys: SimJourneysOpt = None,
    comeback: SimComebackOpt = "6h",
    start: SimStartOpt = None,
    to_file: SimToFileOpt = None,
    topic: SimTopicOpt = None,
    bootstrap: SimBootstrapOpt = None,
) -> None:
    """Generate contact-center feedback (canonical FeedbackEvents) with scripted incidents, live to Kafka at
    --rate, or to a file.

    Example: cxpulse simulate --rate 100 --incident effort:chat/billing@+30s~5m
    """
    from streams import simulate as sim

    settings = settings_of(kafka_bootstrap=bootstrap, feedback_topic=topic)
    try:
        incidents = [sim.parse_incident(text) for text in incident or []]
        duration_ms = parse_ms(duration, "--duration") if duration is not None else None
        start_ms = _simulated_start(start, duration_ms if to_file is not None else None)
        simulator = sim.Simulator(
            seed=seed,
            rate=rate,
            start_ms=start_ms,
            incidents=incidents,
            channels=names_of(channels) or sim.CHANNELS,
            journeys=names_of(journeys) or sim.JOURNEYS,
            invalid_share=invalid_share,
            daily_curve=daily_curve,
            comeback_ms=parse_ms(comeback, "--comeback"),
        )
    except (ValueError, CxPulseError) as exc:
        fail(f"simulate: {exc}", 2)
    for item in incidents:
        err.print(
            f"incident {item.kind} {item.channel}/{item.journey or '*'} from +{item.start_ms / 1000:g} s"
            + (f" for {item.duration_ms / 1000:g} s" if item.duration_ms is not None else ""),
            highlight=False,
            markup=False,
        )
    if to_file is not None:
        if duration_ms is None:
            fail("simulate: --to-file needs --duration (how much simulated time to write)", 2)
        try:
            sent = sim.to_file(simulator, duration_ms, to_file)
        except OSError as exc:
            fail(f"simulate: cannot write {to_file}: {exc.strerror or exc}")
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

    stop = stop_on_signals()

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
        fail(f"simulate: {exc}")
    if sent.failed:
        fail(f"simulate: {sent.failed} of {sent.events} events were not delivered to {settings.feedback_topic}")
    return sent


TOPIC_ALIASES = ("feedback", "dlq", "results", "alerts", "followups", "journeys")


@app.command()
def read(
    topic: Annotated[
        str,
        typer.Argument(
            help="A topic, or one of feedback, dlq, results, alerts, followups, journeys (the configured names)."
        ),
    ],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep reading new records until Ctrl-C.")] = False,
    from_end: Annotated[bool, typer.Option("--from-end", help="Only records that arrive from now on.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many records.")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap [env CXPULSE_KAFKA_BOOTSTRAP].")] = None,
) -> None:
    """Print a topic's records as JSON lines, decoded: results, alerts, dead letters (with their reason headers),
    follow-ups, feedback. One object a line: partition, offset, timestamp, key, value (and headers)."""
    from streams import read as reader

    settings = settings_of(kafka_bootstrap=bootstrap)
    if topic in TOPIC_ALIASES:
        name = getattr(settings, {"dlq": "dlq_topic"}.get(topic, f"{topic}_topic"))
    else:
        name = topic
    stop = stop_on_signals()
    catalog = catalog_for(settings)
    try:
        for record in reader.read(
            settings.kafka, name, catalog, from_end=from_end, follow=follow, limit=limit,
            stopping=stop.is_set,
        ):  # fmt: skip
            sys.stdout.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n")
            if follow:
                sys.stdout.flush()
    except CxPulseError as exc:
        fail(f"read: {exc}")
    except BrokenPipeError:  # `cxpulse read ... | head`
        sys.stderr.close()
