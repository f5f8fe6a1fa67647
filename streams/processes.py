"""The composition root: each process of a worker after the hot path (the Faust processes and the sink), built
from its parts.  The only module that imports both streams/worker/ and sinks/ (the agents stand on
streams/agents/, and neither side imports the other).

- ``merge`` (group ``<app>``): the merge agent on ``<app>-partials`` (streams/worker/merge_agent.py), the journey
  agent on ``<app>-journey-answers`` (streams/worker/journey_agent.py) and, on
  ``cx.metrics.panes`` in the same process, the KPI view (sinks/kpi_view.py), the effort detector
  (sinks/effort_detector.py, fed merge's watermark) and, with ``CXPULSE_FOLLOWUP_WEBHOOK_URL``, the follow-up
  webhook on ``cx.followups`` (sinks/followup_webhook.py);
- ``sink`` (group ``<app>-sink``, ``cxpulse worker`` with a store, or ``cxpulse sink``): the ClickHouse sink
  (sinks/clickhouse_sink.py: a librdkafka loop, not Faust, like the hot path) and the store's query endpoint.

Every table writes its changelog, and every agent its output, through the process's one ResultsProducer, which
the runner flushes before a batch is acked.  Run by the supervisor as ``python -m streams.processes PROCESS
METRICS_PORT LOGLEVEL``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import MutableMapping, Sequence
from types import FrameType
from typing import Any, cast

import faust
from confluent_kafka import Consumer

from schemas.codec import JOURNEY_INSTANCE, WINDOW_RESULT, SchemaCatalog, catalog_for, decode_confluent
from sinks import clickhouse as store
from sinks.clickhouse_sink import (
    ANSWERS_BATCH,
    JOURNEYS_BATCH,
    PANES_BATCH,
    ClickHouseSink,
    Feed,
    SinkMetrics,
    Store,
    serve_queries_in_thread,
)
from sinks.effort_detector import EffortDetector
from sinks.followup_webhook import FollowupWebhook
from sinks.kpi_view import KpiView
from sinks.prometheus import Snapshot
from streams.agents import faust_compat
from streams.agents.base import AgentContext, FaustConsumption, Record, attach, attach_all
from streams.agents.faust_app import (
    TABLE_SCHEMA,
    faust_app,
    partitions_of,
    raw_topic,
    report_ready,
    run_process,
    start_process,
)
from streams.agents.health import CallGuard
from streams.agents.local_tables import CHECKPOINT_SECONDS, IndexEntries, LocalTables
from streams.agents.metrics import WorkerMetrics
from streams.agents.results import ResultsProducer
from streams.agents.stores import DiskStore
from streams.config import Settings
from streams.errors import EXIT_PERMANENT, PERMANENT_KAFKA_ERRORS, BrokerError, CxPulseError
from streams.kafka import consumer as new_consumer
from streams.topics import TOPIC_PROPAGATION_SECONDS, KafkaWait, describe_topics, internal_topics
from streams.worker.hotpath import FETCH_MIN_BYTES
from streams.worker.journey_agent import JourneyAgent, journey_index
from streams.worker.merge_agent import GroupOffsets, MergeAgent, pane_index
from streams.worker.records import decode_answer_rows, decode_answer_themes, decode_answers, is_answer_rows
from streams.worker.repair import PartitionReader

MERGE, SINK, JOURNEYS = "merge", "sink", "journeys"
LOG = logging.getLogger("cxpulse.processes")
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}  # fmt: skip


def _table(
    app: faust.App,
    name: str,
    partitions: int,
    results: ResultsProducer,
    on_disk: IndexEntries | None = None,
) -> MutableMapping[str, Any]:
    """A table keyed ``"<partition>|..."`` whose changelog goes through the process's ResultsProducer, filled at
    assignment from its local copies (when the process keeps them); ``on_disk``: kept on disk in them instead,
    with these index entries (streams.agents.stores.DiskStore)."""
    table = cast(
        faust_compat.KeyPartitionedTable,
        app.Table(name, default=None, partitions=partitions, schema=TABLE_SCHEMA),
    )
    table.write_changelog_with(results)
    if results.local is not None and on_disk is not None:
        table.keep_on_disk(results.local, on_disk)
    elif results.local is not None:
        table.keep_local_copy(results.local)
    return cast(MutableMapping[str, Any], table)  # a Faust table is a mapping; its stubs do not say so


def _keep_local_copies(app: faust.App, local: LocalTables, results: ResultsProducer) -> None:
    """Write the acknowledged changelog messages to the local copies every CHECKPOINT_SECONDS and at a stop (a
    changelog tail being read at assignment is abandoned at a stop: Faust reads it next time); then the tables on
    disk drop from memory what the copies now have."""
    local.should_stop = lambda: bool(app.should_stop)

    async def checkpoint() -> None:
        mark = results.delivered_through  # every message up to it is in the checkpoint that follows
        await asyncio.to_thread(local.checkpoint)
        for table in app.tables.values():
            store = table.data
            if isinstance(store, DiskStore):
                store.disk().checkpointed(mark)

    async def last_checkpoint(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(local.checkpoint)
        local.close()

    app.timer(interval=CHECKPOINT_SECONDS, name="local-copies")(checkpoint)
    app.on_before_shutdown.connect(last_checkpoint)


def merge_process(settings: Settings, metrics: WorkerMetrics) -> faust.App:
    """The ``merge`` process: merge, the KPI view, the effort detector, the follow-up webhook (not started); the
    journey agent runs in a process of its own (journeys_process)."""
    app = faust_app(settings, settings.app_id, MERGE, table_standby_replicas=0, Table=faust_compat.KeyPartitionedTable)
    local = LocalTables(settings.kafka, settings.data_dir / MERGE / "tables", metrics)
    results = ResultsProducer(settings.kafka, local)
    _keep_local_copies(app, local, results)
    context = AgentContext(settings, metrics, results, catalog_for(settings), FaustConsumption(app))
    partials = raw_topic(app, settings, internal_topics(settings).partials)
    panes_topic = raw_topic(app, settings, settings.results_topic)
    merge = _merge_agent(app, context, partials, partitions_of(panes_topic))
    attach(app, merge, partials, results, metrics)
    attach_all(app, _pane_readers(app, context, partitions_of(panes_topic), merge), panes_topic, results, metrics)
    if settings.followup_webhook_url:
        followups = raw_topic(app, settings, settings.followups_topic)
        attach(app, FollowupWebhook(settings, settings.followups_topic, metrics), followups, None, metrics)
    report_ready(app, metrics, MERGE)
    return app


def journeys_process(settings: Settings, metrics: WorkerMetrics) -> faust.App:
    """The ``journeys`` process (with CXPULSE_JOURNEYS): the journey agent on ``<app>-journey-answers``, its own
    consumer group ``<app>-journeys`` (not started).  A process of its own: in the merge process its work per
    answer (a table write and a revision per customer) held the pane results back (bench, live shape: 15,475
    events/s with journeys, 27,266 without; py-spy of the merge process: 78% of its samples in the journey
    agent)."""
    os.nice(settings.journeys_nice)  # under load the pane results and alerts come first; journeys catch up after
    app_id = f"{settings.app_id}-{JOURNEYS}"
    app = faust_app(settings, app_id, JOURNEYS, table_standby_replicas=0, Table=faust_compat.KeyPartitionedTable)
    local = LocalTables(settings.kafka, settings.data_dir / JOURNEYS / "tables", metrics)
    results = ResultsProducer(settings.kafka, local)
    _keep_local_copies(app, local, results)
    context = AgentContext(settings, metrics, results, catalog_for(settings), FaustConsumption(app))
    journey_answers = raw_topic(app, settings, internal_topics(settings).journey_answers)
    # <app>-journeys-state-changelog, on disk: the recent answers of every customer (grows with the answers)
    table = _table(app, "state", partitions_of(journey_answers), results, on_disk=journey_index)
    topic = journey_answers.get_topic_name()
    reader = PartitionReader(settings.kafka, topic)
    agent = JourneyAgent(context, topic, table, reader, GroupOffsets(settings, app_id, topic))
    attach(app, agent, journey_answers, results, metrics)
    report_ready(app, metrics, JOURNEYS)
    return app


def _merge_agent(app: faust.App, context: AgentContext, partials: Any, results_partitions: int) -> MergeAgent:
    """The merge agent on the partials topic, with its two tables (panes on disk, by pane start: they grow with
    the retention; positions) and its read-back."""
    partitions = partitions_of(partials)
    panes = _table(app, "panes", partitions, context.results, on_disk=pane_index)
    tables = (panes, _table(app, "positions", partitions, context.results))
    settings = context.settings
    reader = PartitionReader(settings.kafka, partials.get_topic_name())
    hotpath = GroupOffsets(settings, f"{settings.app_id}-hotpath", internal_topics(settings).routed)
    own = GroupOffsets(settings, settings.app_id, reader.topic)
    return MergeAgent(context, tables, reader, results_partitions, hotpath, own)


def _pane_readers(
    app: faust.App, context: AgentContext, partitions: int, merge: MergeAgent
) -> tuple[KpiView, EffortDetector]:
    """The agents on the pane results in the merge process: the KPI view and the effort detector (on merge's
    watermark), each with its tables and the Snapshot its gauges are served from."""
    kpis, efforts = Snapshot(), Snapshot()
    context.metrics.snapshots.extend([kpis, efforts])  # served beside the registry, written fast (exposition.py)
    topic = context.settings.results_topic
    view = KpiView(context, topic, _table(app, "kpi-view", partitions, context.results), kpis)
    tables = (_table(app, "effort-panes", partitions, context.results), _table(app, "effort-state", partitions,
              context.results))  # fmt: skip
    effort = EffortDetector(context, topic, tables, efforts, merge.watermark)
    return view, effort


def answer_block(record: Record, catalog: SchemaCatalog) -> list[list[Any]]:
    """The ``cxpulse.answers`` columns of one answers message: its rows as the hot path validated them
    (records.encode_answer_rows: nothing decoded or validated again), or, from a worker before 2026-12-06, its
    answers' bytes and, from its header, their themes (the hot path matched them once; the sink does not match
    again)."""
    if is_answer_rows(record.headers):
        events, fields = decode_answer_rows(record.value)
        kept = [
            {"interaction_id": event.interaction_id, "agent_id": agent, "team": team, "comment": comment}
            for event, (agent, team, comment) in zip(events, fields, strict=True)
        ]
        return store.counted_answer_columns(events, kept, [event.themes for event in events])
    values = decode_answers(record.value)
    return store.answer_columns(values, catalog, decode_answer_themes(record.headers, len(values)))


def one_row(row: list[Any]) -> list[list[Any]]:
    """One row as columns of one value each."""
    return [[cell] for cell in row]


def sink_feeds(settings: Settings) -> list[Feed]:
    """The ClickHouse sink's inputs: pane results, counted answers and (with journeys) journey instances."""
    catalog = catalog_for(settings)
    feeds = [
        Feed(
            settings.results_topic,
            "pane_results",
            lambda record: one_row(store.pane_row(decode_confluent(record.value, catalog, WINDOW_RESULT)[1])),
            PANES_BATCH,
            revisions=True,
        ),
        Feed(
            internal_topics(settings).answers,
            "answers",
            lambda record: answer_block(record, catalog),
            ANSWERS_BATCH,
            transactional=True,
        ),
    ]
    if settings.journeys:
        feeds.append(
            Feed(
                settings.journeys_topic,
                "journey_instances",
                lambda record: one_row(store.journey_row(decode_confluent(record.value, catalog, JOURNEY_INSTANCE)[1])),
                JOURNEYS_BATCH,
                revisions=True,
            )
        )
    return feeds


def sink_consumer(settings: Settings) -> Consumer:
    """The sink's consumer: group ``<app>-sink``, read_committed (the answers come in the hot path's
    transactions), the broker holding a fetch as the hot path's does.

    Its partitions are assigned topic by topic (``range``): two sinks share each topic, the answers (most of the
    work) included.  The sticky assignors balance the count of partitions over every topic together, and gave one
    of two sinks every answers partition and the other the panes and journeys (test_security's lone sink, once the
    journeys topic's name sorted otherwise); a sink's revoked batch is read again by its next owner either way."""
    return new_consumer(
        settings.kafka,
        f"{settings.app_id}-sink",
        **{
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "max.poll.interval.ms": 300_000,
            "fetch.min.bytes": FETCH_MIN_BYTES,
            "fetch.wait.max.ms": settings.fetch_wait_ms,
            "client.id": f"{settings.app_id}-{SINK}",
        },
    )


def run_sink(argv: Sequence[str]) -> int:
    """The ``sink`` process: ``METRICS_PORT LOGLEVEL``; the ClickHouse sink's loop and the store's endpoint
    (sinks/clickhouse_sink.py).  SIGTERM writes the batch in flight and stops."""
    port, loglevel = int(argv[0]), argv[1] if len(argv) > 1 else "warn"
    logging.basicConfig(
        level=LOG_LEVELS.get(loglevel.lower(), logging.WARNING),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    for noisy in ("clickhouse_connect", "urllib3"):  # one line per failed insert is ours; they would add three more
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = start_process(SINK, port, _needs_a_store)
    if started is None:
        return EXIT_PERMANENT
    settings, metrics = started
    feeds = sink_feeds(settings)
    try:  # the worker made them; a broker that does not know one yet is asked again
        describe_topics(settings.kafka, [f.topic for f in feeds], KafkaWait(reached=True), TOPIC_PROPAGATION_SECONDS)
    except BrokerError as exc:
        print(f"cxpulse {SINK}: {exc}", file=sys.stderr)
        return EXIT_PERMANENT if isinstance(exc, PERMANENT_KAFKA_ERRORS) else 1
    db = Store(settings)
    try:
        serve_queries_in_thread(settings, db)
    except CxPulseError as exc:
        print(f"cxpulse {SINK}: {exc}", file=sys.stderr)
        return 1
    sink = ClickHouseSink(feeds, db, SinkMetrics(metrics), sink_consumer(settings), CallGuard(SINK))

    def stop(signum: int, frame: FrameType | None) -> None:
        LOG.info("%s: %s: writing the batch in flight", SINK, signal.Signals(signum).name)
        sink.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.run()
    return 0


def _needs_a_store(settings: Settings) -> str | None:
    return None if settings.clickhouse_url else "CXPULSE_CLICKHOUSE_URL is empty: no store to write to"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.processes merge|journeys|sink METRICS_PORT LOGLEVEL``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[0] == SINK:
        return run_sink(args[1:])
    if args[0] == JOURNEYS:
        return run_process(JOURNEYS, args[1:], journeys_process)
    return run_process(MERGE, args[1:], merge_process)


if __name__ == "__main__":
    sys.exit(main())
