"""The batch-agent skeleton: an agent declares its input and implements ``handle`` and ``tick``; :class:`Runner`
does the rest for every agent the same way.

Modelled on arroyo's ProcessingStrategy (one small class per step, state in typed attributes, the consumer owned
elsewhere) and on Quix Streams' sink base (one batching loop that every sink uses):

- take a batch without acking (faust_compat.take_batches: ``noack_take`` without its poll; ``take_events`` acks in
  a ``finally``, so a worker stopped in the middle of a batch would commit what it never finished, the class of
  faust-streaming#315);
- group it by partition and hand each partition's records, in offset order, to :meth:`BatchAgent.handle`, then
  call :meth:`BatchAgent.finish` (a sink inserts what the partitions gathered in one go);
- flush the process's :class:`~streams.agents.results.ResultsProducer` (everything the batch wrote: results,
  alerts, table changelogs) before the batch is acked: flush or fail before ack;
- ack; record how far each partition is applied, for the lag gauge and the process's progress;
- every ``tick_seconds``: measure the lag, then :meth:`BatchAgent.tick`.

A ``handle`` that raises is logged and counted (``cxpulse_worker_batch_errors_total{topic}``) and the batch is
acked anyway: an unacked batch wedges Faust (``consumer.wait_empty`` waits for it forever); an agent that must
not lose a batch reads it back itself (merge: its chain of ranges) or retries inside ``handle`` until it succeeds
(the ClickHouse sink: back-pressure).
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import faust
from faust.types import EventT, StreamT

from schemas.codec import SchemaCatalog
from streams.agents import faust_compat
from streams.agents.local_tables import TablesClosedError
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record, headers_of
from streams.agents.results import ResultsProducer
from streams.config import Settings

LOG = logging.getLogger("cxpulse.agents")


def by_size(records: Sequence[Record], budget: int) -> Iterator[list[Record]]:
    """The records in runs whose values add up to at most ``budget`` bytes (a larger record: a run of its own)."""
    run: list[Record] = []
    size = 0
    for record in records:
        length = len(record.value)
        if run and size + length > budget:
            yield run
            run, size = [], 0
        run.append(record)
        size += length
    if run:
        yield run


class Consumption(Protocol):
    """What an agent may know of its process's consumer (Faust's, or a test's)."""

    def assigned(self, topic: str) -> set[int]:
        """The partitions of ``topic`` this process holds."""

    def end(self, topic: str, partition: int) -> int | None:
        """The partition's end offset as last fetched (None: not known yet)."""

    def settled(self) -> bool:
        """True once the process's tables are recovered and no rebalance is going on."""

    def rebalances(self) -> int:
        """How many rebalances the process has begun (a table may have been reloaded since a value was read)."""

    def delivered(self, topic: str, partition: int) -> int | None:
        """The offset of the last message the consumer handed over to the agent (None: none yet, or unknown)."""


class FaustConsumption:
    """:class:`Consumption` of a Faust app."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def assigned(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    def _held(self, topic: str, partition: int) -> Any:
        """The consumer's TP of a partition it holds (None: not held)."""
        for tp in self.app.consumer.assignment():
            if tp.topic == topic and tp.partition == partition:
                return tp
        return None

    def end(self, topic: str, partition: int) -> int | None:
        tp = self._held(topic, partition)
        if tp is None:
            return None
        try:
            end = self.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet
            return None
        return int(end) if end is not None and end >= 0 else None

    def settled(self) -> bool:
        return faust_compat.recovered(self.app) and not faust_compat.rebalancing(self.app)

    def rebalances(self) -> int:
        return int(self.app.rebalancing_count)

    def delivered(self, topic: str, partition: int) -> int | None:
        tp = self._held(topic, partition)
        return None if tp is None else faust_compat.delivered(self.app, tp)


@dataclass(frozen=True)
class AgentContext:
    """What the agents of one Faust process share, built once by the composition root (streams/processes/)."""

    settings: Settings
    metrics: WorkerMetrics
    results: ResultsProducer  # every result, alert and table changelog of the process goes through it
    catalog: SchemaCatalog
    consumption: Consumption


class BatchAgent(ABC):
    """One step of a Faust process: its input topic and how it takes batches; ``handle`` and ``tick``."""

    name: str  # the agent's name in Faust (unique in its process)
    topic: str  # the input topic
    batch_size: int = 500  # records per batch at most
    within_seconds: float = 0.2  # a batch waits at most this long to fill
    tick_seconds: float = 1.0  # how often tick() runs
    transactional_input: bool = False  # the input is written in Kafka transactions (a commit marker ends it)
    exports_lag: bool = True  # cxpulse_sink_lag_messages{sink=name}
    writes_in_finish: bool = False  # handle only gathers; the batch is applied when finish() returns

    @property
    def sink(self) -> str:
        """The ``sink`` label of its lag and error metrics (two agents of one sink share it)."""
        return self.name

    @abstractmethod
    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        """Apply one partition's records of a batch (offset order)."""

    async def finish(self) -> None:  # noqa: B027 - optional for an agent: nothing to do by default
        """After every partition of a batch was handled, before the flush and the ack (a sink writes what its
        ``handle`` calls gathered, in one go); nothing by default."""

    async def tick(self, now_ms: int) -> None:  # noqa: B027 - optional for an agent: nothing to do by default
        """Periodic work (every ``tick_seconds``); nothing by default."""


class Runner:
    """Runs one agent in a Faust app (see the module docstring); ``applied`` is how far each partition is."""

    def __init__(
        self, agent: BatchAgent, consumption: Consumption, results: ResultsProducer | None, metrics: WorkerMetrics
    ) -> None:
        self.agent = agent
        self.consumption = consumption
        self.results = results
        self.metrics = metrics
        self.applied: dict[int, int] = {}  # partition -> the next offset to apply
        if agent.exports_lag:
            metrics.sink_errors.labels(agent.sink)  # a series from the start, at 0

    async def apply(self, batch: dict[int, tuple[Record, ...]], flush: bool = True) -> None:
        """Handle a batch's records (:func:`by_partition`) partition by partition, then (unless another runner of
        the same stream flushes after it) flush everything it wrote."""
        for partition, records in batch.items():
            self.applied.setdefault(partition, records[0].offset)  # where the lag counts from while handle waits
            try:
                await self.agent.handle(partition, records)
            except TablesClosedError as exc:  # the process is stopping: the batch is handled again after a restart
                LOG.info("%s: a batch of %s[%d] left unfinished: %s", self.agent.name, self.agent.topic, partition, exc)
            except Exception:  # any failure: counted and logged; the agent reads it back or retries
                self.metrics.batch_errors.labels(self.agent.topic).inc()
                LOG.exception(
                    "%s: a batch of %s[%d] failed; acked, the agent reads it back",
                    self.agent.name,
                    self.agent.topic,
                    partition,
                )
            if not self.agent.writes_in_finish:
                self.applied[partition] = records[-1].offset + 1
        try:
            await self.agent.finish()
        except Exception:  # as a failed handle: counted and logged
            self.metrics.batch_errors.labels(self.agent.topic).inc()
            LOG.exception("%s: finishing a batch of %s failed; acked", self.agent.name, self.agent.topic)
        if self.agent.writes_in_finish:  # applied once written: a sink waiting for its store shows the batch as lag
            for partition, records in batch.items():
                self.applied[partition] = records[-1].offset + 1
        if flush and self.results is not None:
            await self.results.flush()

    async def tick(self) -> None:
        """The lag of every held partition, then the agent's own tick."""
        self.measure_lag()
        try:
            await self.agent.tick(int(time.time() * 1000))
        except TablesClosedError as exc:  # the process is stopping; any other failure ends the process (restarted)
            LOG.info("%s: tick left unfinished: %s", self.agent.name, exc)

    def measure_lag(self) -> None:
        """Per held partition: its end (as last fetched) minus the next offset to apply; on a transactional input
        the commit marker that ends the last transaction is not a message.  Fed to the process's progress, and
        exported as ``cxpulse_sink_lag_messages{sink=name}``.  Partitions no longer held lose their series."""
        agent, metrics = self.agent, self.metrics
        progress = metrics.health.progress
        held = self.consumption.assigned(agent.topic)
        for partition in [p for p in self.applied if p not in held]:
            del self.applied[partition]
            progress.forget(f"{agent.name}:{agent.topic}[{partition}]")
            if agent.exports_lag:
                with contextlib.suppress(KeyError):
                    metrics.sink_lag.remove(agent.sink, str(partition))
        for partition in held:
            end = self.consumption.end(agent.topic, partition)
            done = self.applied.get(partition)
            if end is None or done is None:  # nothing applied since the assignment: Faust's offset says where
                continue
            lag = max(0, end - done - (1 if agent.transactional_input else 0))
            progress.observe(f"{agent.name}:{agent.topic}[{partition}]", done, lag)
            if agent.exports_lag:
                metrics.sink_lag.labels(agent.sink, str(partition)).set(lag)


def by_partition(events: Sequence[EventT[Any]]) -> dict[int, tuple[Record, ...]]:
    """A batch's events as Records, partition by partition, each partition's in offset order."""
    grouped: dict[int, list[Record]] = defaultdict(list)
    for event in events:
        message = event.message
        grouped[message.partition].append(
            Record(
                message.partition,
                message.offset,
                message.value or b"",
                int(message.timestamp * 1000),
                headers_of(message.headers),
                message.key,
            )
        )
    return {partition: tuple(sorted(records)) for partition, records in grouped.items()}


def attach(
    app: faust.App,
    agent: BatchAgent,
    topic: faust.TopicT,
    results: ResultsProducer | None,
    metrics: WorkerMetrics,
) -> Runner:
    """Run ``agent`` on ``topic`` in ``app``: its Faust agent and its tick timer."""
    return attach_all(app, [agent], topic, results, metrics)[0]


def attach_all(
    app: faust.App,
    agents: Sequence[BatchAgent],
    topic: faust.TopicT,
    results: ResultsProducer | None,
    metrics: WorkerMetrics,
) -> list[Runner]:
    """Run ``agents`` on ``topic`` in ``app`` with one Faust agent: each batch (sized and timed by the first agent)
    goes to each agent's runner in turn, the process's producer is flushed once after the last, then the batch is
    acked; each agent keeps its tick timer, lag and errors.  Agents that read the same topic share its stream so:
    Faust's path costs per message and stream (merge's KPI view and effort detector, each on a stream of its own,
    made half of the merge process's event-loop turns at 200 answers/s: docs/benchmarks.md)."""
    runners = attach_ticks(app, agents, results, metrics)
    first = agents[0]

    async def consume(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)
        async for events in faust_compat.take_batches(stream, first.batch_size, first.within_seconds):
            batch = by_partition(events)
            for n, runner in enumerate(runners, 1):
                await runner.apply(batch, flush=n == len(runners))
            for event in events:
                await batches.ack(event)

    app.agent(topic, name="-and-".join(agent.name for agent in agents))(consume)
    return runners


def attach_ticks(
    app: faust.App, agents: Sequence[BatchAgent], results: ResultsProducer | None, metrics: WorkerMetrics
) -> list[Runner]:
    """The runners of ``agents`` in ``app``, each with its tick timer: all that an agent that another one hands its
    input to runs (merge feeds the KPI view and the effort detector: streams/processes/agents.py), with no stream,
    lag or batch of its own; :func:`attach_all` adds the stream."""
    runners = [Runner(agent, FaustConsumption(app), results, metrics) for agent in agents]
    for runner in runners:
        app.timer(interval=runner.agent.tick_seconds, name=f"{runner.agent.name}-tick")(_ticker(runner))
    return runners


def _ticker(runner: Runner) -> Callable[[], Awaitable[None]]:
    """A timer's function for ``runner`` (Faust passes the app to a function that takes an argument)."""

    async def tick() -> None:
        await runner.tick()

    return tick


class TableAgent(BatchAgent):
    """An agent that keeps tables (their changelogs written through the process's ResultsProducer) and writes
    results: the merge agent, the KPI view, the effort detector.  It takes the process's :class:`AgentContext`."""

    def __init__(self, context: AgentContext) -> None:
        self.settings = context.settings
        self.metrics = context.metrics
        self.results = context.results
        self.catalog = context.catalog
        self.consumption = context.consumption
        self.pane_ms = context.settings.pane_seconds * 1000
