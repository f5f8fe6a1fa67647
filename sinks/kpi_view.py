"""The KPI view: an agent of the merge process that keeps the latest result of every pane group (table
``kpi-view``, partitioned like the results: by segment), handed them by merge as it emits them
(:meth:`KpiView.take`; read from ``cx.metrics.panes`` by :meth:`KpiView.handle` when that topic's partition count
is not the partials') and, every ``REFRESH_SECONDS``, the rolling windows of the gauges (sinks/prometheus.py:
RollingView, window_families, window_text; the page is written when a scrape asks).  Panes older than the longest
window are dropped from the table and the view."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from schemas.codec import WINDOW_RESULT, decode_confluent
from sinks.prometheus import (
    RollingView,
    Snapshot,
    component_windows,
    theme_families,
    theme_key,
    window_families,
    window_text,
)
from streams.agents.base import AgentContext, TableAgent
from streams.agents.exposition import render
from streams.agents.keys import MetricPaneKey
from streams.agents.record import Record
from streams.core.aggregate import ZERO, GroupKey, State
from streams.core.windows import state_of

LOG = logging.getLogger("cxpulse.kpis")
REFRESH_SECONDS = 2.0
STATE_END = 1 + len(State._fields)  # a table value: [version, *state, {theme: answers} when any]


class KpiView(TableAgent):
    """The KPI gauges' agent (see the module docstring); ``view`` is its table (any mapping)."""

    name = "prometheus"

    def __init__(
        self,
        context: AgentContext,
        topic: str,
        view: MutableMapping[str, Any],
        snapshot: Snapshot,
    ) -> None:
        super().__init__(context)
        settings = context.settings
        self.topic = topic
        self.tick_seconds = REFRESH_SECONDS
        self.view = view
        self.snapshot = snapshot
        self.keep_ms = max(settings.windows_seconds) * 1000 + self.pane_ms  # older panes are in no window
        self.index = RollingView(settings.windows_seconds, self.pane_ms)
        self.themes = RollingView(settings.windows_seconds, self.pane_ms)  # the results' mentions (theme_key)
        self.indexed: set[int] | None = None  # the partitions the index was built for (rebuilt on a change)
        self.where: dict[GroupKey, int] = {}  # pane group -> its results partition
        self.stamps: list[int] = []  # Kafka timestamps of the results applied since the last refresh (latency)
        # panes before this are in no window any more (the last refresh's cutoff): a result for one is not kept.
        # A backlog of days is mostly such results; written, indexed and dropped again at the next refresh they
        # held the merge process's event loop 4-5 s a refresh (`make bench-state --answers 3000000`)
        self.dropped_before = 0

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        """The results of a batch read from the results topic (when merge does not feed this view: see
        :meth:`take`)."""
        results: list[dict[str, Any]] = []
        stamps: list[int] = []
        for record in records:
            try:
                _, result = decode_confluent(record.value, self.catalog, WINDOW_RESULT)
            except Exception:  # noqa: BLE001 - not a result: nothing to show
                self.metrics.sink_errors.labels(self.name).inc()
                LOG.warning("%s[%d] offset %d is not a WindowResult", self.topic, partition, record.offset)
                continue
            results.append(result)
            stamps.append(record.timestamp_ms)
        self.take(partition, results, stamps)

    def take(self, partition: int, results: Sequence[Mapping[str, Any]], stamps: Sequence[int]) -> None:
        """Results of one results partition (WindowResult records, in the order merge emitted them) into the table;
        ``stamps``: each one's Kafka timestamp, the newest input event's (the event-to-gauge latency of each result
        kept is observed at the next refresh).  Merge hands its results over here itself when it feeds this view
        (streams.worker.merge_agent.MergeAgent.emit), else :meth:`handle` reads them from the results topic."""
        latest: dict[str, list[Any]] = {}
        for result, stamp in zip(results, stamps, strict=True):
            if result["window_start"] < self.dropped_before:
                continue  # in no window: the gauges never show it
            key = MetricPaneKey(
                partition, result["channel"], result["journey"], result["metric"], result["window_start"]
            ).encode()
            value: list[Any] = [result["version"], *state_of(result)]
            if result.get("themes"):
                value.append(result["themes"])
            self.stamps.append(stamp)
            before = latest.get(key) or self.view.get(key)
            if before is None or before[0] < value[0]:
                latest[key] = value
        for key, value in latest.items():  # the changelog writes are flushed with the batch, before its ack
            self.view[key] = value
            parsed = MetricPaneKey.decode(key)
            if self.indexed is not None and partition in self.indexed:
                self._index(partition, parsed, value)

    async def tick(self, now_ms: int) -> None:
        """Refresh the gauges: index the table on a new assignment, move the windows, hand the snapshot a copy."""
        assigned = self.consumption.assigned(self.topic)
        if assigned != self.indexed:  # start, recovery or rebalance: index what the table holds for them
            self._reindex(assigned)
        self.index.advance(now_ms)
        self.themes.advance(now_ms)
        totals = {window: dict(states) for window, states in self.index.totals.items()}  # the view moves on
        themes = theme_families(self.themes.totals, self.settings.label_cap)  # small: the taxonomy's themes
        end, cap, components = self.index.end or 0, self.settings.label_cap, component_windows(self.settings)
        self.snapshot.set_lazy(  # built, or written straight as text, when a scrape asks
            lambda: window_families(totals, end, cap, components)[0] + themes,
            lambda: window_text(totals, end, cap, components) + render(themes),
        )
        for stamp in self.stamps:
            if stamp > 0:
                self.metrics.event_to_gauge.observe(max(0, now_ms - stamp) / 1000)
        self.stamps.clear()
        self.dropped_before = max(self.dropped_before, now_ms - self.keep_ms)
        await self._drop_before(self.dropped_before)

    def _index(self, partition: int, parsed: MetricPaneKey, value: list[Any]) -> None:
        """A pane group's latest result ([version, *state, {theme: answers}?]) into the views."""
        group = (parsed.pane, parsed.channel, parsed.journey, parsed.metric)
        self.index.put(group, State(*value[1:STATE_END]))
        self.where[group] = partition
        for theme, n in (value[STATE_END] if len(value) > STATE_END else {}).items():
            self.themes.put(theme_key(*group, theme), ZERO._replace(n=n))

    def _reindex(self, assigned: set[int]) -> None:
        self.index = RollingView(self.settings.windows_seconds, self.pane_ms)
        self.themes = RollingView(self.settings.windows_seconds, self.pane_ms)
        self.where.clear()
        for key, value in list(self.view.items()):
            parsed = MetricPaneKey.decode(key)
            if parsed.partition in assigned:
                self._index(parsed.partition, parsed, value)
        self.indexed = assigned

    async def _drop_before(self, cutoff_ms: int) -> None:
        self.themes.drop_before(cutoff_ms)
        old = self.index.drop_before(cutoff_ms)
        for pane, channel, journey, metric in old:
            key = MetricPaneKey(self.where.pop((pane, channel, journey, metric)), channel, journey, metric, pane)
            if key.encode() in self.view:
                del self.view[key.encode()]
        if old:
            await self.results.flush()  # the tombstones
