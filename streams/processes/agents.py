"""The Faust processes of a worker, built from their agents (see streams/processes/__init__.py):

- ``merge`` (group ``<app>``): the merge agent on ``<app>-partials`` (streams/worker/merge_agent.py); in the
  same process the KPI view (sinks/kpi_view.py) and the effort detector (sinks/effort_detector.py, on merge's
  watermark), which merge hands its results over to as it emits them (:func:`_pane_readers`), and, with
  ``CXPULSE_FOLLOWUP_WEBHOOK_URL``, the follow-up webhook on ``cx.followups`` (sinks/followup_webhook.py);
- ``journeys`` (group ``<app>-journeys``, with ``CXPULSE_JOURNEYS``): the journey agent on
  ``<app>-journey-answers`` (streams/worker/journey_agent.py).

Every table writes its changelog, and every agent its output, through the process's one ResultsProducer, which
the runner flushes before a batch is acked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableMapping
from typing import Any, cast

import faust

from schemas.codec import catalog_for
from sinks.effort_detector import EffortDetector
from sinks.followup_webhook import FollowupWebhook
from sinks.kpi_view import KpiView
from sinks.prometheus import Snapshot
from streams.agents import faust_compat
from streams.agents.base import AgentContext, FaustConsumption, attach, attach_all, attach_ticks
from streams.agents.faust_app import TABLE_SCHEMA, faust_app, partitions_of, raw_topic, report_ready
from streams.agents.local_tables import CHECKPOINT_SECONDS, IndexEntries, LocalTables
from streams.agents.metrics import WorkerMetrics
from streams.agents.results import ResultsProducer
from streams.agents.stores import DiskStore
from streams.config import Settings
from streams.processes import JOURNEYS, MERGE
from streams.topics import internal_topics
from streams.worker.journey_agent import JourneyAgent, journey_index
from streams.worker.merge_agent import GroupOffsets, MergeAgent, pane_index
from streams.worker.repair import PartitionReader


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
    _pane_readers(app, context, partials, panes_topic, merge)
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


def _pane_readers(app: faust.App, context: AgentContext, partials: Any, panes_topic: Any, merge: MergeAgent) -> None:
    """The agents on the pane results in the merge process: the KPI view and the effort detector (on merge's
    watermark), each with its tables, its tick and the Snapshot its gauges are served from.

    Merge hands them its results as it emits them (``MergeAgent.readers``), when the results topic has as many
    partitions as the partials: a segment's partials and results partitions are then the same number, and Faust
    gives partition p of the partials and of every table changelog of the process to the same worker (its
    assignor keeps topics of one partition count co-partitioned), so the worker that merges a segment holds its
    KPI view and detector rows.  Each result read back from the results topic through Faust's per-message path
    cost ~220 µs of the process's CPU (the quiet run at 200 answers/s, ~95 results/s: merge 5.8% of a core with
    the two reading the topic, 5.0% with their handling a no-op, 2.8% without them; 2026-12-07).  Their writes
    go through the process's producer and are flushed with merge's batch, before its ack.  A results topic of
    another partition count (created by hand): they read it, as before, with a Faust stream of their own."""
    kpis, efforts = Snapshot(), Snapshot()
    context.metrics.snapshots.extend([kpis, efforts])  # served beside the registry, written fast (exposition.py)
    partitions = partitions_of(panes_topic)
    fed = partitions == partitions_of(partials)
    topic = partials.get_topic_name() if fed else context.settings.results_topic  # whose partitions they hold
    view = KpiView(context, topic, _table(app, "kpi-view", partitions, context.results), kpis)
    tables = (_table(app, "effort-panes", partitions, context.results), _table(app, "effort-state", partitions,
              context.results))  # fmt: skip
    effort = EffortDetector(context, topic, tables, efforts, merge.watermark, fed_by_merge=fed)
    if fed:
        merge.readers = [view, effort]
        attach_ticks(app, [view, effort], context.results, context.metrics)
    else:
        attach_all(app, [view, effort], panes_topic, context.results, context.metrics)
