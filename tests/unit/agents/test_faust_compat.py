"""streams/agents/faust_compat.py and the batch loop on it, without a broker: how the worker's Faust apps run."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from faust.transport.consumer import Consumer
from mode import Service
from mode.utils.locks import Event
from prometheus_client import CollectorRegistry

from streams.agents import faust_compat
from streams.agents.base import BatchAgent, attach_all
from streams.agents.faust_app import faust_app
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record
from streams.config import Settings
from tests.fakes import Produced


def test_the_table_manager_registers_the_changelogs_at_start_without_faust_s_one_second_sleep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, clickhouse_url="")
    app = faust_app(settings, "compat-test", "compat", Table=faust_compat.KeyPartitionedTable)
    app.Table("counts", default=int, partitions=2)
    manager: Any = app.tables
    assert isinstance(manager, faust_compat.PromptTableManager)
    calls: list[str] = []

    async def no_sleep(seconds: float) -> None:
        raise AssertionError(f"the table manager slept {seconds} s at start")

    async def update_channels() -> None:
        calls.append("channels")

    async def start_recovery() -> None:
        calls.append("recovery")

    monkeypatch.setattr(manager, "sleep", no_sleep)
    monkeypatch.setattr(manager, "_update_channels", update_channels)
    monkeypatch.setattr(manager.recovery, "start", start_recovery)
    asyncio.run(manager.on_start())
    assert calls == ["channels", "recovery"]


def test_fetches_wait_briefly_while_the_tables_recover_or_rebalance_and_longer_once_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settle() sets the wait of the real app's fetcher (here a stand-in where aiokafka keeps it): 100 ms while the
    tables recover, 500 ms once settled, and 100 ms again from the moment a rebalance starts."""
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, clickhouse_url="")
    app = faust_app(settings, "compat-test", "compat", Table=faust_compat.KeyPartitionedTable)
    assert faust_compat.fetch_wait(app) is None  # no consumer yet: nothing to set, no error
    assert faust_compat.settle(app) is False
    fetcher = SimpleNamespace(_fetch_max_wait_ms=faust_compat.FETCH_MAX_WAIT_MS)
    monkeypatch.setattr(app.consumer, "_thread", SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher)))
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]  # TableManager's, not in the protocol
    assert faust_compat.settle(app) is False  # not recovered yet
    assert faust_compat.fetch_wait(app) == faust_compat.FETCH_MAX_WAIT_MS == 100
    recovery.completed.set()
    assert faust_compat.settle(app) is True
    assert faust_compat.fetch_wait(app) == faust_compat.SETTLED_FETCH_MAX_WAIT_MS == 500
    app.on_rebalance_start()  # Faust calls it from the consumer thread when partitions are revoked
    assert faust_compat.fetch_wait(app) == 100
    assert faust_compat.settle(app) is False
    app.rebalancing = False
    assert faust_compat.settle(app) is True
    assert faust_compat.fetch_wait(app) == 500


def test_set_many_writes_what_setting_each_key_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyPartitionedTable.set_many (the journeys' states of a batch): the same changelog messages, in the same
    order, and the same values as ``table[key] = value`` per key; without a changelog writer, Faust's own path."""
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, clickhouse_url="")
    app = faust_app(settings, "compat-test", "compat", Table=faust_compat.KeyPartitionedTable)
    one, many = app.Table("one", partitions=4), app.Table("many", partitions=4)
    items = [("3|billing|c-1", {"a": [[1, "e"]], "o": 2}), ("0|é|ü", {"a": []}), ("1|j|c\x7f", {"t": 5})]
    written: dict[str, Produced] = {}
    for table in (one, many):
        assert isinstance(table, faust_compat.KeyPartitionedTable)
        written[table.name] = Produced()
        table.write_changelog_with(written[table.name])
    for key, value in items:
        one[key] = value
    many.set_many(items)
    assert written["one"].messages and [m[1:] for m in written["one"].messages] == [
        m[1:] for m in written["many"].messages
    ]
    assert [m[3] for m in written["many"].messages] == [3, 0, 1]
    assert dict(one.data.items()) == dict(many.data.items()) == dict(items)
    plain = app.Table("plain", partitions=4)
    assert isinstance(plain, faust_compat.KeyPartitionedTable)
    sent: list[tuple[Any, Any]] = []
    plain.on_key_set = lambda key, value: sent.append((key, value))  # type: ignore[method-assign]
    plain.set_many(items)
    assert sent == items and dict(plain.data.items()) == dict(items)
    kept: dict[str, bytes] = {}  # a store on disk (DiskStore.set_encoded): it keeps the changelog message's bytes
    disk = app.Table("disk", partitions=4)
    assert isinstance(disk, faust_compat.KeyPartitionedTable)
    disk.write_changelog_with(written.setdefault("disk", Produced()))
    monkeypatch.setattr(disk, "_new_store", lambda: SimpleNamespace(set_encoded=kept.__setitem__))
    disk.set_many(items)
    assert [m[1:] for m in written["disk"].messages] == [m[1:] for m in written["many"].messages]
    assert kept == {key: orjson.dumps(value) for key, value in items}


def _batches_of(values: list[int], size: int, within: float, idle: float = 0.0) -> tuple[list[list[int]], int]:
    """The batches an agent on a Faust channel takes with take_batches from ``values`` put one by one after
    ``idle`` seconds of nothing, and how many waits its stream began meanwhile."""
    app = faust.App("take-test", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    channel = app.channel()
    got: list[list[int]] = []
    waits = [0]
    done = asyncio.Event()

    @app.agent(channel)
    async def agent(stream: Any) -> None:
        wait = stream.wait_for_stopped

        async def counted(*args: Any, **kwargs: Any) -> bool:
            waits[0] += 1
            return bool(await wait(*args, **kwargs))

        stream.wait_for_stopped = counted
        async for events in faust_compat.take_batches(stream, size, within):
            got.append([event.value for event in events])
            if sum(map(len, got)) == len(values):
                done.set()

    async def run() -> None:
        async with agent.test_context() as context:
            await asyncio.sleep(idle)  # nothing comes: what the take does meanwhile is counted
            idle_waits = waits[0]
            for value in values:
                await context.put(value)
            await asyncio.wait_for(done.wait(), 10)
            waits[0] = idle_waits

    asyncio.run(run())
    return got, waits[0]


def test_take_batches_yields_full_batches_and_the_rest_within_its_time() -> None:
    got, _ = _batches_of(list(range(7)), 3, 0.2)
    assert got == [[0, 1, 2], [3, 4, 5], [6]]


def test_take_batches_does_not_poll_while_nothing_comes() -> None:
    """Faust's noack_take waits again every ``within`` (here 20 ms: ~15 waits in 0.3 s); take_batches waits once
    for the first event."""
    got, idle_waits = _batches_of([1, 2], 10, 0.02, idle=0.3)
    assert got == [[1, 2]]
    assert idle_waits <= 2, idle_waits


def _gap_after_a_held_batch(within: float, handling: float) -> tuple[list[list[int]], float]:
    """Batches of take_batches whose first takes ``handling`` seconds to handle, an event put while it is handled:
    the batches, and the seconds from the end of that handling to the next batch."""
    app = faust.App("take-test", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    channel = app.channel()
    got: list[list[int]] = []
    marks: list[float] = []
    handling_started, done = asyncio.Event(), asyncio.Event()

    @app.agent(channel)
    async def agent(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in faust_compat.take_batches(stream, 100, within):
            marks.append(loop.time())
            got.append([event.value for event in events])
            if len(got) == 1:
                handling_started.set()
                await asyncio.sleep(handling)  # the batch's work
                marks.append(loop.time())
            else:
                done.set()

    async def run() -> None:
        async with agent.test_context() as context:
            await context.put(1)
            await asyncio.wait_for(handling_started.wait(), 10)
            await context.put(2)  # while the first batch is handled
            await context.put(3)
            await asyncio.wait_for(done.wait(), 10)

    asyncio.run(run())
    return got, marks[2] - marks[1]


def test_an_event_that_waited_out_a_long_batch_does_not_wait_within_again() -> None:
    """Handled for longer than ``within`` (a journeys process behind: seconds a batch), the events that came
    meanwhile make the next batch as soon as the handling ends (HELD_GRACE_SECONDS), not ``within`` later."""
    got, gap = _gap_after_a_held_batch(within=1.0, handling=1.3)
    assert got == [[1], [2, 3]]
    assert gap < 0.5, gap  # 1.0 before: noack_take's clock starts when the held event is let in


def test_an_event_that_came_during_a_short_batch_still_waits_within() -> None:
    """Handled quickly (a quiet stream's batch), an event that came meanwhile still waits ``within`` from when it
    came: batches at low rates stay as few as before."""
    got, gap = _gap_after_a_held_batch(within=0.6, handling=0.05)
    assert got == [[1], [2, 3]]
    assert gap > 0.4, gap


class _Recorder(BatchAgent):
    """An agent that records the records of each batch it handles, and when its batch ends."""

    def __init__(self, name: str, seen: list[tuple[str, Any]]) -> None:
        self.name, self.topic, self.seen = name, "channel", seen
        self.batch_size, self.within_seconds = 3, 0.05

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        self.seen.append((self.name, [record.value for record in records]))

    async def finish(self) -> None:
        self.seen.append((self.name, "finish"))


def test_agents_attached_together_share_one_stream_one_flush_and_one_ack() -> None:
    """attach_all: every batch of the one stream goes to each agent in turn, then one flush, then the acks; each
    agent keeps its own runner (lag, ticks)."""
    app = faust.App("attach-test", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)
    channel = app.channel()
    seen: list[tuple[str, Any]] = []
    produced = Produced()
    flushes: list[int] = []
    flush = produced.flush
    both = asyncio.Event()

    async def counted_flush() -> None:
        flushes.append(len(seen))  # how much was handled when the flush came
        await flush()
        if len(flushes) == 2:
            both.set()

    produced.flush = counted_flush  # type: ignore[method-assign]
    runners = attach_all(app, [_Recorder("a", seen), _Recorder("b", seen)], channel, produced,  # type: ignore[arg-type]
                         WorkerMetrics(CollectorRegistry()))  # fmt: skip
    assert [runner.agent.name for runner in runners] == ["a", "b"]
    [agent] = app.agents.values()
    assert agent.name == "a-and-b"

    async def run() -> None:
        async with agent.test_context() as context:
            for value in (b"1", b"2", b"3", b"4"):
                await context.put(value)
            await both.wait()

    asyncio.run(asyncio.wait_for(run(), 10))
    first = [("a", [b"1", b"2", b"3"]), ("a", "finish"), ("b", [b"1", b"2", b"3"]), ("b", "finish")]
    second = [("a", [b"4"]), ("a", "finish"), ("b", [b"4"]), ("b", "finish")]
    assert seen == first + second
    assert flushes == [4, 8]  # once a batch, after both agents


async def _ready() -> None:
    return None


class _Consumer(Service):
    """What faust_compat.deliver uses of Faust's consumer: its suspend_flow and mode's wait_first, counted."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()
        self.races = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        self.races += 1
        return await super().wait_first(*coros, timeout=timeout)


def test_a_delivery_that_does_not_wait_is_done_without_a_race_or_a_task() -> None:
    async def run() -> tuple[list[str], int, int]:
        consumer, got = _Consumer(), []

        async def delivery() -> None:
            await _ready()  # an await that does not wait, as on_message's flow control and decode
            got.append("put")

        tasks = len(asyncio.all_tasks())
        await faust_compat.deliver(consumer, delivery())
        return got, consumer.races, len(asyncio.all_tasks()) - tasks

    assert asyncio.run(run()) == (["put"], 0, 0)


def test_a_delivery_that_waits_is_raced_against_a_suspended_flow_and_finishes() -> None:
    async def run() -> tuple[list[str], int]:
        consumer, gate, got = _Consumer(), asyncio.Event(), []

        async def delivery() -> None:
            got.append("started")
            await gate.wait()
            got.append("put")

        delivering = asyncio.ensure_future(faust_compat.deliver(consumer, delivery()))
        while not got:
            await asyncio.sleep(0)
        assert not delivering.done()
        gate.set()
        await asyncio.wait_for(delivering, 5)
        return got, consumer.races

    assert asyncio.run(run()) == (["started", "put"], 1)


def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended_as_faust_abandons_it() -> None:
    async def run() -> list[str]:
        consumer, gate, got = _Consumer(), asyncio.Event(), []

        async def delivery() -> None:
            got.append("started")
            try:
                await gate.wait()
                got.append("put")
            except asyncio.CancelledError:
                got.append("cancelled")
                raise

        delivering = asyncio.ensure_future(faust_compat.deliver(consumer, delivery()))
        while not got:
            await asyncio.sleep(0)
        consumer.suspend_flow.set()
        await asyncio.wait_for(delivering, 5)
        await asyncio.sleep(0)  # the abandoned delivery's task takes its cancellation
        return got

    assert asyncio.run(run()) == ["started", "cancelled"]


def test_with_the_flow_suspended_a_delivery_that_would_wait_is_not_waited_for() -> None:
    async def run() -> tuple[list[str], int]:
        consumer, got = _Consumer(), []
        consumer.suspend_flow.set()

        async def delivery() -> None:
            got.append("started")
            await asyncio.Event().wait()
            got.append("put")

        await asyncio.wait_for(faust_compat.deliver(consumer, delivery()), 5)
        return got, consumer.races

    got, races = asyncio.run(run())
    assert races == 1
    assert "put" not in got


@pytest.mark.parametrize("waits", [False, True])
def test_a_delivery_s_error_reaches_the_consumer_loop(waits: bool) -> None:
    async def run() -> None:
        consumer = _Consumer()

        async def delivery() -> None:
            if waits:
                await asyncio.sleep(0.01)
            raise ValueError("undecodable")

        await faust_compat.deliver(consumer, delivery())

    with pytest.raises(ValueError, match="undecodable"):
        asyncio.run(run())


def test_the_consumer_loop_faust_compat_copies_is_still_faust_s() -> None:
    """faust_compat's ``_drain_messages`` is faust-streaming 0.15.3's with one call changed (``deliver``): a Faust
    whose loop differs (an upgrade of the pin) fails here, so that the copy is made again from the new loop."""
    source = inspect.getsource(Consumer._drain_messages)  # noqa: SLF001 - the loop faust_compat copies
    assert "await self.wait_first(\n" in source and "callback(message), self.suspend_flow.wait()" in source
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
    ), "Faust's Consumer._drain_messages changed: copy it again into faust_compat._ReadCommittedConsumer"


class _Offsets:
    """What Faust's consumer keeps to compute a commit (``_acked``, ``_gap``, ``_committed_offset``), with its own
    ``_add_gap`` and ``_new_offset``."""

    _add_gap = Consumer._add_gap  # noqa: SLF001 - Faust's own bookkeeping, under test with faust_compat's gaps
    _new_offset = Consumer._new_offset  # noqa: SLF001

    def __init__(self) -> None:
        from collections import defaultdict

        from intervaltree import IntervalTree

        self._acked: defaultdict[str, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[str, set[int]] = defaultdict(set)
        self._gap: defaultdict[str, Any] = defaultdict(IntervalTree)
        self._committed_offset: defaultdict[str, int | None] = defaultdict(lambda: None)


@pytest.mark.parametrize(("read_ahead", "batch"), [(100, 10), (5, 5), (1, 1)])
def test_a_commit_of_transactional_input_takes_every_message_acked_before_it(read_ahead: int, batch: int) -> None:
    """A topic written in transactions holds a message, then its commit marker.  The consumer reads ahead of the
    agent, registering the offsets between the messages it reads (the loop's ``offsets_between``); the agent acks a
    batch; a commit follows.  Each commit must take the partition past the last message acked.  With Faust's own gap
    (which takes in the next message's offset) each commit moved on by one message: 1, 5, 7, 9, ..."""
    offsets, tp = _Offsets(), "tp"
    messages = list(range(0, 120, 2))
    read, handed, acked, commits = None, 0, 0, []

    async def run() -> None:
        nonlocal read, handed, acked
        while acked < len(messages):
            while handed < min(len(messages), acked + read_ahead):
                offset = messages[handed]
                between = faust_compat.offsets_between(read, offset)
                if between is not None:
                    await offsets._add_gap(tp, *between)  # noqa: SLF001
                read, handed = offset, handed + 1
            for offset in messages[acked : acked + batch]:
                offsets._acked[tp].append(offset)  # noqa: SLF001
                offsets._acked_index[tp].add(offset)  # noqa: SLF001
            acked += batch
            new = offsets._new_offset(tp)  # noqa: SLF001
            if new is not None:
                offsets._committed_offset[tp] = new  # noqa: SLF001
            commits.append((messages[acked - 1], offsets._committed_offset[tp]))  # noqa: SLF001

    asyncio.run(run())
    # the first commit stops at the marker after offset 0 (Faust's condition: no gap after offset 0); every later
    # one is past the last message acked
    assert commits[0][1] == 1
    assert all(committed == last + 1 for last, committed in commits[1:]), commits


def test_the_offsets_between_two_messages_leave_both_messages_out() -> None:
    assert faust_compat.offsets_between(4, 6) == (5, 5)
    assert faust_compat.offsets_between(4, 9) == (5, 8)
    assert faust_compat.offsets_between(4, 5) is None
    assert faust_compat.offsets_between(None, 7) is None
    assert faust_compat.offsets_between(0, 2) is None
