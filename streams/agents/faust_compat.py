"""Every use of faust-streaming beyond its documented API, in one place (faust-streaming 0.15.3).

- :func:`read_committed`: Faust's worker consumer reads ``read_uncommitted`` unless the app runs
  ``processing_guarantee="exactly_once"`` (faust/transport/drivers/aiokafka.py, ``_create_worker_consumer``),
  and that mode has open upstream bugs (faust-streaming #323, #517, #177, #47).  The partials come from
  transactional producers, so the merge agent must not see aborted records: the aiokafka consumer Faust builds
  gets ``isolation_level="read_committed"`` before it starts (aiokafka reads ``_isolation_level`` in
  ``start()``).
- :class:`KeyPartitionedTable`: Faust writes a table's changelog to the partition of the *current event*
  (``partition_for_key``, faust/tables/base.py), which a batch spanning partitions, a timer or a read-back
  does not have.  Our table keys start with their partition number, so the partition comes from the key.
  And its changelog messages go through a librdkafka producer (``on_key_set`` / ``on_key_del``, the hooks
  ``Table.__setitem__`` calls) instead of Faust's aiokafka producer: in the backlog shape merge writes about
  one table key per event, and Faust's per-message send path (~50 us each, cProfile) was merge's largest cost.
  Same topic, partition and JSON bytes, so Faust recovers the table from it as before; the caller flushes the
  producer before it acks a batch, as Faust flushes its own before it commits.
- The stores of streams.agents.stores (Faust's memory store filled from local copies, or a table on disk):
  :class:`KeyPartitionedTable` makes its store one of these (``_new_store``) when given the process's
  LocalTables.
- :class:`PromptTableManager`: Faust's table manager sleeps 1 s when it starts (``TableManager.on_start``,
  faust/tables/manager.py) before it registers the tables' changelogs and lets the consumer subscribe, "to give
  agents a chance" to add tables; a cxpulse process builds every table before its app starts (a table added later
  raises "Too late to add tables"), so that second was start-up time of every process for nothing (seen in the
  state bench's logs, 2026-12-03: "Waiting for tables to be registered" 1.1 s before the first changelog topic).
- :func:`recovered` / :func:`rebalancing`: readiness, from Faust's table recovery and rebalance state.
- :func:`delivered`: how far Faust's consumer has handed a partition over (its private ``_read_offset``), so a
  tail check does not read back what the consumer is still on its way to.
- :func:`deliver`: Faust's consumer loop (``Consumer._drain_messages``, copied with one call changed) races each
  message's delivery to the streams against a suspended flow with ``wait_first``, four tasks a message; a delivery
  that does not wait (nearly all) is now done without them (merge's CPU in the backlog shape -35%).
- :func:`take_batches`: ``Stream.noack_take`` without its poll (a stream's processor and passive consumption,
  as noack_take uses them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator, Iterable, Sequence
from typing import Any, Protocol, cast

import aiokafka  # type: ignore[import-untyped]  # no type information shipped
import faust
import orjson
from faust.tables import TableManager
from faust.tables.table import Table
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT, StoreT, StreamT
from mode.utils.futures import notify

from streams.agents.keys import table_partition
from streams.agents.local_tables import IndexEntries, LocalTables
from streams.agents.results import ResultsProducer
from streams.agents.stores import DiskStore, LocalCopyStore, raw_key

LOG = logging.getLogger("cxpulse.tables")


# How long a fetch waits at the broker for data (Faust hard-codes 1,500 ms).  A broker answers the requests of one
# connection in order, so every other request of the consumer (the recovery's ListOffsets, offset fetches) queues
# behind an empty fetch's wait: profiled 2026-12-02, the merge's recovery asked for its 30 changelogs' earliest
# offsets right after a fetch of empty partitions and got the answer 1.5 s later, in every start.  So 100 ms while
# the tables recover (at start and in a rebalance), and 500 ms (aiokafka's default) once they are settled: a fetch
# returns as soon as data comes, so the wait only says how often a consumer that has nothing to read asks again
# (10 -> 2 fetches a second; a default worker at 200 answers a second: 13.0-13.7% -> 10.5-12.2% of a core, at 1 a
# second 6.9 -> 6.4%; event to result unchanged: docs/benchmarks.md, 2026-12-07 night).
FETCH_MAX_WAIT_MS = 100
SETTLED_FETCH_MAX_WAIT_MS = 500


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        created = super()._create_worker_consumer(transport)
        created._isolation_level = "read_committed"  # see the module docstring
        created._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read in start(), like the isolation level
        return created


def _fetcher(app: faust.App) -> Any:
    """The app's aiokafka fetcher (None before its consumer started)."""
    thread = getattr(app.consumer, "_thread", None)
    return getattr(getattr(thread, "_consumer", None), "_fetcher", None)


def pace_fetches(app: faust.App, settled: bool) -> None:
    """Set how long the app's fetches wait at the broker: FETCH_MAX_WAIT_MS while the tables recover,
    SETTLED_FETCH_MAX_WAIT_MS once they are settled (nothing before the consumer started).  aiokafka's fetcher
    reads its ``_fetch_max_wait_ms`` for each request it builds (aiokafka 0.14 ``Fetcher._get_actions_per_node``),
    so the next fetch has the new wait."""
    fetcher = _fetcher(app)
    if fetcher is not None:
        fetcher._fetch_max_wait_ms = SETTLED_FETCH_MAX_WAIT_MS if settled else FETCH_MAX_WAIT_MS


def fetch_wait(app: faust.App) -> int | None:
    """The fetch wait now in force (ms), None before the consumer started."""
    fetcher = _fetcher(app)
    return None if fetcher is None else int(fetcher._fetch_max_wait_ms)


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901, PLR0915 - Faust's loop, two calls changed
        """faust/transport/consumer.py ``Consumer._drain_messages`` (0.15.3) with two changes: a message's delivery
        to the streams is first driven by hand, and only a delivery that has to wait is raced against a suspended
        flow with ``wait_first`` (see :func:`deliver`); the gap before a message leaves the message out
        (:func:`offsets_between`).  Left out: the dev-level log line of a message below the read offset (dropped,
        as there), and two nested ``if``s written as one condition each."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator[Any], getmany(timeout=1.0))
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            between = offsets_between(r_offset, offset)
                            if between is not None and acks_enabled_for(message.topic):
                                await self._add_gap(tp, *between)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await deliver(self, callback(message))
                            set_read_offset(tp, offset)
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


def offsets_between(read: int | None, offset: int) -> tuple[int, int] | None:
    """The offsets between the message read last (``read``) and the next one (``offset``), first and last, that
    hold no message (a transaction's commit marker, or a compacted record): None when there are none.

    Faust's loop registers ``_add_gap(tp, read + 1, offset)``, and its ``_add_gap`` keeps the last offset (an
    interval up to ``offset + 1``): the next message's own offset is taken for a gap too.  Once that message is
    acked its offset is in ``_acked`` twice, and ``_new_offset`` commits the first run of consecutive offsets, which
    a repeated one ends.  On a topic written in transactions (a message, then its marker) each commit moved a
    partition on by one message however many were acked: the journeys group's committed offsets trailed its work
    by minutes at 20,000 answers/s (``benchmarks.bench --store-lag-seconds 60`` waited 278 s for them after the
    journeys were idle), and merge's the same over the partials.  A restart reads again from there.  The symptom
    is robinhood/faust#625 (a duplicate in ``_acked`` stops the commits); faust-streaming#606 is the same code.
    Faust's condition is kept: nothing before the first message after offset 0 (``read`` 0 or None)."""
    if not read or offset - read <= 1:
        return None
    return read + 1, offset - 1


async def deliver(consumer: Any, delivery: Awaitable[Any]) -> None:
    """Run one message's delivery to the streams (the conductor's ``on_message``) as Faust's consumer does, with
    ``wait_first(delivery, consumer.suspend_flow.wait())`` (a rebalance that suspends the flow abandons a delivery
    blocked on a full stream), but without its four tasks when the delivery does not wait.

    Almost every delivery puts the event on each stream's queue and returns without waiting (the queue has room,
    the flow runs).  ``wait_first`` made four tasks for each and turned the event loop about four times: ~20 us a
    message in a bare loop, and in the merge process, which reads each pane result back, the largest share of its
    callbacks (docs/benchmarks.md).  So the delivery is driven by hand until it first waits; one that completes
    there is done, exactly as the task would have done it at its first step.  One that waits (a full queue, a
    suspended flow control) is handed, where it stands, to the same ``wait_first`` race.  A flow already
    suspended takes the race from the start, as before."""
    if consumer.suspend_flow.is_set() or not isinstance(delivery, Coroutine):
        await consumer.wait_first(delivery, consumer.suspend_flow.wait())
        return
    try:
        awaiting = delivery.send(None)
    except StopIteration:
        return  # delivered without waiting
    await consumer.wait_first(_rest_of(delivery, awaiting), consumer.suspend_flow.wait())


async def _rest_of(delivery: Coroutine[Any, Any, Any], awaiting: Any) -> Any:
    """The rest of a coroutine driven by hand until it first waited (``awaiting``: what it yielded then)."""
    return await _Resumed(delivery, awaiting)


class _Resumed:
    """An awaitable that gives its driver (the task awaiting it) a suspended coroutine: first what the coroutine
    yielded when it was suspended, then every value and exception on to it, as ``yield from`` would."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], awaiting: Any) -> None:
        self.coroutine, self.awaiting = coroutine, awaiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, awaiting = self.coroutine, self.awaiting
        while True:
            try:
                sent = yield awaiting
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - the driver's cancellation or error, passed on as sent
                try:
                    awaiting = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                awaiting = coroutine.send(sent)
            except StopIteration as stop:
                return stop.value


def read_committed(app: faust.App) -> None:
    """Make the app's worker consumer read committed records only (call before the app starts)."""
    cast(Any, app.transport).Consumer = _ReadCommittedConsumer


class PromptTableManager(TableManager):
    """Faust's table manager without its 1 s sleep at start (see the module docstring); ``TableManager=`` of the
    app."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    def on_rebalance_start(self) -> None:
        """Faust's, and the short fetch wait from now until the tables are settled again (FETCH_MAX_WAIT_MS)."""
        super().on_rebalance_start()
        pace_fetches(cast(faust.App, self.app), settled=False)


class ChangelogWriter(Protocol):
    """Where a table's changelog goes: streams.agents.results.ResultsProducer (flushed before a batch is acked)."""

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1) -> None: ...

    def produce_many(
        self, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]], partition: int = -1
    ) -> None: ...


class KeyPartitionedTable(Table[Any, Any]):
    """A table whose keys are ``"<partition>|..."``: the changelog partition is the key's prefix; the changelog
    is written with the producer given to :meth:`write_changelog_with` (Faust's when none is)."""

    _changelog_writer: ChangelogWriter | None = None
    _local: LocalTables | None = None
    _on_disk = False
    _index: IndexEntries | None = None

    def partition_for_key(self, key: Any) -> int | None:
        return table_partition(key)

    def write_changelog_with(self, writer: ChangelogWriter) -> None:
        self._changelog_writer = writer

    def keep_local_copy(self, local: LocalTables) -> None:
        """Fill the table at assignment from its local copies (call before the app starts)."""
        self._local = local

    def keep_on_disk(self, local: LocalTables, index: IndexEntries | None = None) -> None:
        """Keep the table on disk, in its local copies (streams.agents.stores.DiskStore), with the ``index``
        entries of each key and value when given (call before the app starts, after :meth:`write_changelog_with`)."""
        self._local, self._on_disk, self._index = local, True, index

    def _new_store(self) -> StoreT[Any, Any]:
        if self._local is None:
            return super()._new_store()
        store = (DiskStore if self._on_disk else LocalCopyStore)(
            "memory://",
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )
        store.local = self._local
        if isinstance(store, DiskStore):
            writer = self._changelog_writer
            store.clock = (lambda: writer.queued) if isinstance(writer, ResultsProducer) else (lambda: 0)
            store.index = self._index
            store.encode = encode_value
        return cast(StoreT[Any, Any], store)

    def on_key_set(self, key: Any, value: Any) -> None:
        if self._changelog_writer is None:
            super().on_key_set(key, value)
        else:
            self._send(key, encode_value(value))

    def set_many(self, items: Iterable[tuple[Any, Any]]) -> None:
        """``self[key] = value`` for each item: :meth:`on_key_set` (its changelog message), then its store, as
        Faust's ``__setitem__`` does, without its wrappers per key (the journeys write a state per group of a
        batch, most of a live batch's answers).  A store on disk keeps the changelog message's bytes until its
        checkpoint, not the value (streams.agents.stores.DiskMapping.set_encoded), and the changelog messages go
        to the producer a partition at a time (``produce_many``: one librdkafka call per few thousand)."""
        store = self.data
        writer = self._changelog_writer
        encoded = getattr(store, "set_encoded", None) if writer is not None else None
        if writer is None or encoded is None:
            for key, value in items:
                self.on_key_set(key, value)
                store[key] = value
            return
        written = [(key, encode_value(value)) for key, value in items]
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for key, raw in written:
            partition, message = self._changelog_message(key, raw)
            by_partition.setdefault(partition, []).append(message)
        topic = self.changelog_topic.get_topic_name()
        for partition, messages in by_partition.items():  # in their order within each partition
            writer.produce_many(topic, messages, partition)
        for key, raw in written:  # as on_key_set then the store: a value refused by the producer is not kept
            encoded(key, raw)

    def on_key_del(self, key: Any) -> None:
        if self._changelog_writer is None:
            super().on_key_del(key)
        else:
            self._send(key, None)  # a tombstone, as Faust writes it (value None, raw)

    def _send(self, key: Any, value: bytes | None) -> None:
        partition, (raw, raw_at) = self._changelog_message(key, value)
        cast(ChangelogWriter, self._changelog_writer).produce(
            self.changelog_topic.get_topic_name(), raw, raw_at, partition
        )

    @staticmethod
    def _changelog_message(key: Any, value: bytes | None) -> tuple[int, tuple[bytes | None, bytes | None]]:
        """``key``'s changelog message: its partition (the key's prefix) and (value, the key's bytes)."""
        return table_partition(key), (value, raw_key(key))


def encode_value(value: Any) -> bytes:
    """A table value as plain JSON, what Faust's json codec reads back (Faust's own encoder is ~5x slower: a
    Python default hook).  orjson (0.6 us for a pane value against 7.5 us for json.dumps); json for what orjson
    refuses (a tuple subclass, an int beyond 64 bits).

    orjson also reads the values back (here and, once it is installed, in Faust's json codec: 1.6 us against
    7.2 us); it reads an integer beyond 64 bits as a float.  The largest integers in the tables are the panes'
    sums of x^2 (streams.core.aggregate: at most 6.35e9 per answer), which reach 2^64 after 2.9e9 answers in one
    pane, far beyond any feed."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def recovered(app: faust.App) -> bool:
    """True once Faust has recovered the tables of its current assignment."""
    return bool(cast(Any, app.tables).recovery.completed.is_set())


def rebalancing(app: faust.App) -> bool:
    return bool(app.rebalancing)


def settle(app: faust.App) -> bool:
    """Whether the app's tables are recovered and no rebalance is under way, with the fetch wait set to match
    (:func:`pace_fetches`); the processes' ready timer asks it twice a second."""
    settled = recovered(app) and not rebalancing(app)
    pace_fetches(app, settled)
    return settled


def delivered(app: faust.App, tp: Any) -> int | None:
    """The offset of the last message Faust's consumer handed to the agents' streams from ``tp`` (its
    ``_read_offset``, set in ``Consumer._drain_messages`` after each message; None before the first one)."""
    found = cast(Any, app.consumer)._read_offset.get(tp)
    return None if found is None else int(found)


HELD_GRACE_SECONDS = 0.05  # after a batch, what the stream has queued behind it joins the next one meanwhile


class _Buffer:
    """take_batches' buffer, filled by the stream's processor :meth:`add` (noack_take's ``add_to_buffer``).

    A batch is due ``within`` seconds after its first event came.  An event that came while the batch before was
    being handled has waited that long already: its batch is due HELD_GRACE_SECONDS after that handling ended
    (long enough for the events queued behind it to join), or ``within`` after it came when that is later.
    noack_take starts the clock when such an event is let in: a journeys process behind by a few batches (its
    batches take seconds) idled a full second between any two of them (issue 35: ~1 s of a live run's tail a
    batch, both cores far from full meanwhile)."""

    def __init__(self, stream: Any, size: int, within: float) -> None:
        self.stream, self.size, self.within = stream, size, within
        self.loop = asyncio.get_running_loop()
        self.events: list[EventT[Any]] = []
        self.due_at = 0.0  # loop time at which the buffer is yielded if it is not full before
        self.started, self.full, self.consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.consuming: asyncio.Future[None] | None = None  # set while a batch is handled: add waits

    async def add(self, value: Any) -> Any:
        came = self.loop.time()
        held = self.consuming is not None
        if self.consuming is not None:
            try:
                await self.consuming
            finally:
                self.consuming = None
        event = self.stream.current_event
        if event is None:
            raise RuntimeError("take_batches found no current event")
        if not self.events:
            due = came + self.within
            self.due_at = max(due, self.loop.time() + HELD_GRACE_SECONDS) if held else due
            self.started.set()
        self.events.append(event)
        if len(self.events) >= self.size:  # no more than size a batch: hold the stream until it is handled
            self.full.set()
            self.consumed.clear()
            await self.stream.wait(self.consumed)
        return value

    def handled(self) -> None:
        """The batch yielded is handled: an empty buffer, the processor let go."""
        self.events.clear()
        self.started.clear()
        self.full.clear()
        notify(self.consuming)
        self.consumed.set()


async def take_batches(stream: StreamT[Any], size: int, within: float) -> AsyncIterator[list[EventT[Any]]]:
    """The stream's events in batches of at most ``size``, each yielded once it is full or ``within`` seconds after
    its first event came; not acked (the caller acks them once handled).

    Faust's ``noack_take`` (faust/streams.py, faust-streaming 0.15.3), less its poll: that one wakes every
    ``within`` seconds whether anything came or not, and each wake is a ``wait_first`` of three new tasks, their
    ``asyncio.wait`` and their cancellation.  The merge's 50 ms made those 20 wakes a second, with nothing to do
    at low rates: ~170 turns of its event loop a second that found a callback ready (strace, a worker at 1 answer
    a second, 2026-12-06).  Here an empty buffer waits for its first event without a timer; the rest is
    noack_take's: a processor adds each event to the buffer (and holds the stream while a full buffer or a
    yielded batch is being handled), and the stream is consumed passively."""
    s = cast(Any, stream)
    buffer = _Buffer(s, size, within)
    acks = s.enable_acks
    s.enable_acks = False
    s.add_processor(buffer.add)
    s._enable_passive(aiter(s.channel))
    try:
        while not s.should_stop:
            if not buffer.events:
                await s.wait_for_stopped(buffer.started)  # (it says "stopped" after a timeout too: not read)
                continue
            rest = buffer.due_at - buffer.loop.time()
            if len(buffer.events) < size and rest > 0:
                await s.wait_for_stopped(buffer.full, timeout=rest)
                continue
            buffer.consuming = buffer.loop.create_future()
            try:
                yield list(buffer.events)
            finally:
                buffer.handled()
    finally:
        s.enable_acks = acks
        s._processors.remove(buffer.add)
