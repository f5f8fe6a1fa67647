"""A Faust process of cxpulse: the app every one of them is built on, and the process around it (settings, metrics,
health, the Faust worker).  streams/processes/agents.py fills the app with agents."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import faust

from streams.agents import faust_compat
from streams.agents.metrics import WorkerMetrics
from streams.agents.process import start_process
from streams.config import Settings
from streams.errors import EXIT_PERMANENT, PERMANENT_KAFKA_ERRORS, BrokerError
from streams.topics import TOPIC_PROPAGATION_SECONDS, KafkaWait, partition_count

SESSION_TIMEOUT_SECONDS = 10.0  # a process killed with -9 keeps its partitions this long
READY_CHECK_SECONDS = 0.5
MAX_FETCH_BYTES = 16 * 1024 * 1024  # a partial message can be large (a whole hot-path batch)
TABLE_SCHEMA: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")


def faust_app(settings: Settings, app_id: str, folder: str, **extra: Any) -> faust.App:
    """A Faust app of the worker: at least once, read_committed, no web server, the broker settings the worker's
    processes share; its local state in ``<data dir>/<folder>``."""
    (settings.data_dir / folder).mkdir(parents=True, exist_ok=True)
    kafka = settings.kafka
    app = faust.App(
        app_id,
        broker=kafka.faust_brokers(),
        broker_credentials=kafka.faust_credentials(),
        store="memory://",
        datadir=str(settings.data_dir / folder),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_SECONDS,
        broker_heartbeat_interval=2.0,
        consumer_max_fetch_size=MAX_FETCH_BYTES,
        # on stop, commit what was acked and go: an unacked batch is delivered again after a restart and absorbed
        # once.  Waiting for it instead can hang a stop (consumer.wait_empty) for minutes.
        stream_wait_empty=False,
        TableManager=faust_compat.PromptTableManager,
        **extra,
    )
    faust_compat.read_committed(app)
    return app


def raw_topic(app: faust.App, settings: Settings, name: str) -> faust.TopicT:
    """A topic of raw bytes, with the partition count it has on the broker (waited for while it has no leader or
    Kafka is away: streams.topics.KafkaWait; the supervisor made it, so a broker that does not know it yet is asked
    again: TOPIC_PROPAGATION_SECONDS)."""
    partitions = partition_count(settings.kafka, name, KafkaWait(reached=True), TOPIC_PROPAGATION_SECONDS)
    return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)


def partitions_of(topic: faust.TopicT) -> int:
    """The partition count a :func:`raw_topic` was made with (Faust types it as optional)."""
    partitions = topic.partitions
    if partitions is None:
        raise ValueError(f"topic {topic.get_topic_name()} was made without its partition count")
    return int(partitions)


def report_ready(app: faust.App, metrics: WorkerMetrics, process: str) -> None:
    """A timer that sets ``cxpulse_worker_process_ready{process}`` from Faust's state and the process's health.
    Gauges are set on the event loop, never at scrape time: the metrics thread must not touch a table (its first
    use binds the table's service to that thread's loop, and Faust then waits for it forever when it stops)."""

    async def ready() -> None:
        settled = faust_compat.settle(app)
        metrics.process_ready.labels(process).set(1.0 if metrics.health.ready(settled) else 0.0)

    app.timer(interval=READY_CHECK_SECONDS, name=f"{process}-ready")(ready)


def run_process(
    process: str,
    argv: Sequence[str],
    build: Callable[[Settings, WorkerMetrics], faust.App],
    check: Callable[[Settings], str | None] = lambda settings: None,
) -> int:
    """Run a Faust process: ``METRICS_PORT LOGLEVEL``; settings from the environment (exit 2, EXIT_PERMANENT, when
    they are invalid or ``check`` names a problem), metrics on the loopback port."""
    port, loglevel = int(argv[0]), argv[1] if len(argv) > 1 else "warn"
    started = start_process(process, port, check)
    if started is None:
        return EXIT_PERMANENT
    settings, metrics = started
    try:
        app = build(settings, metrics)
    except BrokerError as exc:  # at start: a topic's metadata (streams.topics)
        print(f"cxpulse {process}: {exc}", file=sys.stderr)
        return EXIT_PERMANENT if isinstance(exc, PERMANENT_KAFKA_ERRORS) else 1
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # no spinner: at the default level Faust's spinner turns the root logger to DEBUG (~8% CPU), and it writes
    # cursor hide/show codes even into a log file (faust/utils/terminal/spinners.py)
    worker.spinner = None
    worker.execute_from_commandline()
    return 0
