"""The agents as objects, without Kafka or Faust: in-memory tables (dicts), a fake consumer view, a producer that
keeps what it is given, a fake clock.  The tail check's deferral and read-back, expiry, the effort detector's
catch-up in event time, the KPI view's refresh and drop, the runner's batch protocol."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import (
    EFFORT_ALERT,
    WINDOW_RESULT,
    WINDOW_RESULT_RAW,
    LocalCatalog,
    decode_confluent,
    encode_confluent,
)
from sinks.effort_detector import EffortDetector
from sinks.kpi_view import KpiView
from sinks.prometheus import Snapshot
from streams.agents.base import AgentContext, BatchAgent, Runner, by_partition, by_size
from streams.agents.keys import MetricPaneKey, PaneKey, ResultKey, SegmentKey, SourceKey
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record
from streams.config import Settings
from streams.core.aggregate import State
from streams.core.journeys import encode_answer_rows
from streams.core.validate import Clock
from streams.core.windows import result_record, window_result
from streams.worker import journey_agent, merge_agent, repair, tail_watch
from streams.worker.journey_agent import JourneyAgent
from streams.worker.merge_agent import MergeAgent
from streams.worker.records import ROUTED_SOURCE, Position, encode_partials, position_to_table
from tests.fakes import FakeMessage, Held, Offsets, Produced, Reader, TwoSteps
from tests.fakes import ingest as fake_ingest
from tests.support import event

pytestmark = pytest.mark.unit
CATALOG = LocalCatalog()
NOW = 1_767_300_000_000
P = 60_000


def settings(**overrides: Any) -> Settings:
    return Settings(clickhouse_url="", **overrides)


def partial_records(
    batches: int, source: int = 0, per_batch: int = 3, metrics: Sequence[str] = ("CES",)
) -> list[Record]:
    """The partial messages (partials partition 0) of ``batches`` hot-path batches of feedback partition
    ``source`` (one routed partition: routed offset b carries batch b's answers), the answers' metrics taking
    turns from ``metrics``."""
    steps = TwoSteps(fake_ingest(pane_ms=P))
    records, offset = [], 0
    for b in range(batches):
        answers = [
            event(event_id=f"b{b}e{i}", occurred_at=NOW - 600_000 + 1000 * i, metric=metrics[i % len(metrics)])
            for i in range(per_batch)
        ]
        messages = [FakeMessage(source, offset + i, json.dumps(answer).encode()) for i, answer in enumerate(answers)]
        _, counted = steps.batch(messages, Clock(NOW, 300_000, 7 * 86_400_000))
        offset += per_batch
        records.append(Record(0, 2 * b, encode_partials(counted.partials[0]), NOW))  # a commit marker after each
    return records


def merge_of(records: list[Record], committed: dict[int, int], **overrides: Any) -> tuple[MergeAgent, Produced]:
    produced = Produced()
    end = records[-1].offset + 2 if records else 0
    agent = MergeAgent(
        context(settings(**overrides), produced, Held("cx-partials", {0: end})),
        ({}, {}),
        Reader(records, end),  # type: ignore[arg-type]
        1,
        Offsets(committed),
        Offsets({}),
    )
    agent.topic = "cx-partials"
    return agent, produced


def test_merge_absorbs_once_and_emits_results_flushed() -> None:
    records = partial_records(3)
    agent, produced = merge_of(records, {0: 3})
    asyncio.run(agent.handle(0, records))
    first = len(produced.on(agent.settings.results_topic))
    assert first > 0 and produced.flushes == 1
    n = sum(decode_confluent(v, CATALOG, WINDOW_RESULT)[1]["n"] for _, v, _, _ in produced.messages if v)
    asyncio.run(agent.handle(0, records))  # delivered again: re-emitted, nothing counted twice
    again = produced.on(agent.settings.results_topic)[first:]
    assert sum(decode_confluent(v, CATALOG, WINDOW_RESULT)[1]["n"] for _, v, _, _ in again if v) == n
    assert agent.positions[SourceKey(0, ROUTED_SOURCE).encode()] == position_to_table(Position(3, 4))


def test_merge_hands_its_results_to_the_view_and_the_detector_as_the_results_topic_gives_them() -> None:
    """Fed by merge (the default), the KPI view and the effort detector keep exactly the rows they keep when they
    read the results topic merge wrote, a batch delivered twice included, and their table writes are flushed
    with merge's batch; a reader that fails is counted and merge still emits and flushes."""
    records = partial_records(3, per_batch=6, metrics=("CES", "NPS", "CSAT"))
    agent, produced = merge_of(records, {0: 3})
    fed = context(agent.settings, produced, Held("cx-partials", {0: 10}))
    view = KpiView(fed, "cx-partials", {}, Snapshot())
    effort = EffortDetector(fed, "cx-partials", ({}, {}), Snapshot(), agent.watermark, fed_by_merge=True)
    agent.readers = [view, effort]
    asyncio.run(agent.handle(0, records))
    asyncio.run(agent.handle(0, records[1:]))  # delivered again: the same versions, nothing newer
    assert produced.flushes == 2

    topic = agent.settings.results_topic
    sent = [Record(p, offset, v or b"", NOW, (), k) for offset, (_, v, k, p) in enumerate(produced.on(topic))]
    assert {r.partition for r in sent} == {0}
    read = context(agent.settings, Produced(), Held(topic, {0: len(sent)}))
    read_view = KpiView(read, topic, {}, Snapshot())
    read_effort = EffortDetector(read, topic, ({}, {}), Snapshot(), agent.watermark)
    asyncio.run(read_view.handle(0, sent))
    asyncio.run(read_effort.handle(0, sent))
    assert {MetricPaneKey.decode(key).metric for key in view.view} == {"CES", "NPS", "CSAT"}
    assert dict(view.view) == dict(read_view.view) and view.stamps == read_view.stamps
    assert effort.panes and dict(effort.panes) == dict(read_effort.panes)

    class Broken:
        name = "broken"

        def take(self, partition: int, results: Sequence[Mapping[str, Any]], stamps: Sequence[int]) -> None:
            raise RuntimeError("boom")

    again, produced_again = merge_of(records, {0: 3})
    after = KpiView(fed, "cx-partials", {}, Snapshot())
    again.readers = [Broken(), after]
    asyncio.run(again.handle(0, records))
    assert produced_again.on(topic) and produced_again.flushes == 1 and dict(after.view) == dict(view.view)
    assert again.metrics.registry.get_sample_value("cxpulse_sink_errors_total", {"sink": "broken"}) == 1


def test_a_batch_of_large_partial_messages_is_merged_a_few_megabytes_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge runs on the event loop until its flush: a batch (or a read-back) is merged, emitted and flushed in
    runs of at most MERGE_BATCH_BYTES (a larger message alone), with the same table, positions and final results
    as in one run."""
    records = partial_records(4)
    whole, whole_out = merge_of(records, {0: 4})
    asyncio.run(whole.handle(0, records))
    monkeypatch.setattr(merge_agent, "MERGE_BATCH_BYTES", len(records[0].value) + len(records[1].value))
    runs, runs_out = merge_of(records, {0: 4})
    asyncio.run(runs.handle(0, list(reversed(records))))  # in offset order, whatever the order given
    assert whole_out.flushes == 1 and runs_out.flushes == 2
    assert dict(runs.panes) == dict(whole.panes) and dict(runs.positions) == dict(whole.positions)

    def final(produced: Produced) -> dict[bytes | None, dict[str, Any]]:
        latest: dict[bytes | None, dict[str, Any]] = {}
        for _, value, key, _ in produced.on(whole.settings.results_topic):
            result = decode_confluent(value, CATALOG, WINDOW_RESULT)[1]
            if key not in latest or latest[key]["version"] < result["version"]:
                latest[key] = result
        return {key: {k: v for k, v in r.items() if k != "version"} for key, r in latest.items()}

    assert final(runs_out) == final(whole_out) and final(whole_out)


def test_records_are_split_into_runs_of_a_byte_budget_in_their_order() -> None:
    """by_size (the merge's and the journey agent's runs): whole records, in order, a run within the budget unless
    one record alone is larger."""
    records = [Record(0, offset, b"x" * size) for offset, size in enumerate([3, 3, 5, 12, 1, 1, 1])]
    runs = list(by_size(records, 6))
    assert [[r.offset for r in run] for run in runs] == [[0, 1], [2], [3], [4, 5, 6]]
    assert [r for run in runs for r in run] == records and list(by_size([], 6)) == []


def test_merge_reads_back_a_message_the_consumer_skipped() -> None:
    records = partial_records(3)
    agent, _ = merge_of(records, {0: 3})
    asyncio.run(agent.handle(0, [records[0], records[2]]))  # the middle one never arrived
    assert (
        agent.reader.reads == 1
        and agent.metrics.registry.get_sample_value("cxpulse_worker_repaired_records_total") == 1
    )
    assert agent.positions[SourceKey(0, ROUTED_SOURCE).encode()] == position_to_table(Position(3, 4))


def test_a_long_skip_is_read_back_in_chunks_with_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-back holds at most about READ_BACK_BYTES at a time (the consumer's skip in a 3,000,000-answer backlog
    was 47-72 messages of up to 8 MB): a skip of four messages read two at a time gives the table, positions and
    results of the whole read; so does a tail read-back."""
    records = partial_records(6)
    whole, whole_out = merge_of(records, {0: 6})
    asyncio.run(whole.handle(0, [records[0], records[5]]))  # the four between were skipped
    assert whole.reader.reads == 1
    monkeypatch.setattr(merge_agent, "READ_BACK_BYTES", len(records[1].value) + len(records[2].value))
    chunked, chunked_out = merge_of(records, {0: 6})
    asyncio.run(chunked.handle(0, [records[0], records[5]]))
    assert chunked.reader.reads == 2
    assert dict(chunked.panes) == dict(whole.panes) and dict(chunked.positions) == dict(whole.positions)
    assert chunked.positions[SourceKey(0, ROUTED_SOURCE).encode()] == position_to_table(Position(6, 10))
    assert chunked.metrics.registry.get_sample_value("cxpulse_worker_repaired_records_total") == 4
    assert _ns(chunked_out) == _ns(whole_out) and _ns(whole_out)

    tail, _ = merge_of(records, {0: 6})
    asyncio.run(tail.handle(0, records[:1]))
    tail.active_at = 0.0  # idle: the second short sight reads back
    asyncio.run(tail.follow_tails())
    asyncio.run(tail.follow_tails())
    assert tail.reader.reads == 3  # records 1-2, 3-4, then 5 (under the budget: the end)
    assert dict(tail.panes) == dict(whole.panes) and dict(tail.positions) == dict(whole.positions)


def _ns(produced: Produced) -> dict[bytes | None, int]:
    """n of the latest result of every key sent."""
    latest: dict[bytes | None, tuple[int, int]] = {}
    for _, value, key, _ in produced.on(settings().results_topic):
        result = decode_confluent(value, CATALOG, WINDOW_RESULT)[1]
        if key not in latest or latest[key][0] < result["version"]:
            latest[key] = (result["version"], result["n"])
    return {key: n for key, (_, n) in latest.items()}


JOURNEY_ANSWERS = "cx-journey-answers"


def journey_records(partition: int, messages: int, at: int = NOW) -> list[Record]:
    """``messages`` journey-answers messages of one partition, an answer of a customer of its own each, a commit
    marker after each (offsets 0, 2, 4, ...)."""
    rows = [[f"c{partition}-{m}", "billing", at - 60_000 + m, f"e{partition}-{m}", None, "chat", None, "CES", 6, 1, 7]
            for m in range(messages)]  # fmt: skip
    return [Record(partition, 2 * m, encode_answer_rows([row]), NOW) for m, row in enumerate(rows)]


def journeys_of(records: list[Record], ends: dict[int, int], stable: int | None = None) -> JourneyAgent:
    """The journey agent on ``records``; ``ends`` the consumer's ends (as last fetched), ``stable`` the broker's."""
    held = Held(JOURNEY_ANSWERS, ends)
    agent = JourneyAgent(
        context(settings(), Produced(), held),
        JOURNEY_ANSWERS,
        {},
        Reader(records, stable or max(ends.values())),  # type: ignore[arg-type]
        Offsets(dict.fromkeys(ends, 0)),
    )
    return agent


def test_the_journey_agent_reads_a_long_skip_back_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The four messages between the first and the last were skipped: read back two at a time (the budget), each
    chunk followed before the next is read, every customer's answer in the table once."""
    records = journey_records(0, 6)
    monkeypatch.setattr(repair, "READ_BACK_BYTES", len(records[1].value) + len(records[2].value))
    agent = journeys_of(records, {0: 12})
    asyncio.run(agent.handle(0, records[:1]))
    asyncio.run(agent.handle(0, records[5:]))
    reader = cast(Reader, agent.reader)
    assert reader.reads == 3  # 1-2, 3-4, then nothing left before the last
    assert sorted(agent.table) == sorted(f"0|billing|c0-{m}" for m in range(6))
    assert agent.metrics.registry.get_sample_value("cxpulse_worker_repaired_records_total") == 4
    assert agent.next[0] == 11

    # a tail check reads back TAIL_READ_BYTES at most, the rest at the next check (the lock given back between)
    monkeypatch.setattr(journey_agent, "TAIL_READ_BYTES", len(records[1].value) + len(records[2].value))
    tail = journeys_of(records, {0: 12})
    clock = [1000.0]
    monkeypatch.setattr(journey_agent.time, "monotonic", lambda: clock[0])
    asyncio.run(tail.handle(0, records[:1]))
    clock[0] += tail_watch.TAIL_CHECK_SECONDS  # quiet; nothing else is busy; the consumer's progress unknown
    asyncio.run(tail.follow_tails())
    assert cast(Reader, tail.reader).reads == 1 and tail.next[0] == 5 and len(tail.table) == 3
    asyncio.run(tail.follow_tails())
    asyncio.run(tail.follow_tails())
    assert cast(Reader, tail.reader).reads == 3 and tail.next[0] == 12 and len(tail.table) == 6


def test_the_journey_tail_check_puts_off_a_quiet_partition_while_others_are_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog's partition may wait its turn longer than a tail check: while other partitions' batches still
    come, its read-back is put off (TAIL_DEFER_CHECKS at most); once the consumer is quiet it is read back."""
    records = journey_records(0, 3) + journey_records(1, 3)
    agent = journeys_of(records, {0: 6, 1: 6})
    clock = [1000.0]
    monkeypatch.setattr(journey_agent.time, "monotonic", lambda: clock[0])
    asyncio.run(agent.handle(0, records[:1]))  # partition 0: the rest is still to come
    reader = cast(Reader, agent.reader)
    for _ in range(tail_watch.TAIL_DEFER_CHECKS):
        clock[0] += tail_watch.TAIL_CHECK_SECONDS
        asyncio.run(agent.handle(1, [r for r in records if r.partition == 1][:1]))  # the consumer is busy
        asyncio.run(agent.follow_tails())
        assert reader.reads == 0
    clock[0] += tail_watch.TAIL_CHECK_SECONDS
    asyncio.run(agent.follow_tails())  # put off long enough: read back, partition 1's tail too (nothing is busy)
    assert sorted(agent.table)[:3] == [f"0|billing|c0-{m}" for m in range(3)] and agent.next[0] == 6


def test_a_look_at_due_groups_lets_batches_in_between_its_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first look after a backlog of days closes millions of instances: the agent's lock is held a chunk of
    groups at a time, so batches keep coming (held for all of it, the stall watch killed the process)."""
    monkeypatch.setattr(journey_agent, "DUE_CHUNK", 1)
    now = int(time.time() * 1000)  # the agent's clock: the instances are open after the batch
    records = journey_records(0, 4, at=now)
    agent = journeys_of(records, {0: 8})
    asyncio.run(agent.handle(0, records[:3]))

    async def both() -> None:
        await asyncio.gather(agent.tick(now + agent.gap_ms + 3_600_000), agent.handle(0, records[3:]))

    asyncio.run(both())
    customers = [key.split(b"|")[0].decode() for _, _, key, _ in cast(Produced, agent.results).on(agent.out_topic)]
    # opened by the first batch; then the look closes c0-0, the second batch opens c0-3, the look closes the rest
    assert customers == ["c0-0", "c0-1", "c0-2", "c0-0", "c0-3", "c0-1", "c0-2"]


class Writes(dict[str, Any]):
    """A table that counts the writes of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: dict[str, int] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        super().__setitem__(key, value)


class FlushFails(Produced):
    """A producer whose ``failing``-th flush raises (Kafka did not take every message)."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing

    async def flush(self) -> None:
        await super().flush()
        if self.flushes == self.failing:
            raise RuntimeError("2 messages still queued and 0 not delivered after a flush")


def test_a_batch_is_read_again_to_send_what_it_failed_to_not_looked_at_for_it() -> None:
    """A group a batch wrote is written once: the look at due groups does not come back for it before its
    instance closes (it used to, at once, only to mark its revisions sent: twice the table's writes and its
    changelog).  A batch whose revisions Kafka did not take is read back as a skip when the next one comes, and
    sends them again with higher versions; the look in between sends nothing."""
    now = int(time.time() * 1000)  # the agent's clock: the instances are open after the batches
    records = journey_records(0, 4, at=now)
    produced = FlushFails(failing=4)  # batch 1: states, revisions; batch 2: states, then its revisions fail
    agent = JourneyAgent(
        context(settings(), produced, Held(JOURNEY_ANSWERS, {0: 8})),
        JOURNEY_ANSWERS,
        Writes(),
        Reader(records, 8),  # type: ignore[arg-type]
        Offsets({0: 0}),
    )
    table = cast(Writes, agent.table)

    def sent() -> list[tuple[str, int]]:
        return [(key.split(b"|")[0].decode(), version) for _, _, key, version in versions(produced, agent.out_topic)]

    asyncio.run(agent.handle(0, records[:1]))
    with pytest.raises(RuntimeError, match="still queued"):  # the runner logs it and acks the batch
        asyncio.run(agent.handle(0, records[1:3]))
    failed = sent()
    assert [customer for customer, _ in failed] == ["c0-0", "c0-1", "c0-2"]
    asyncio.run(agent.tick(now + 60_000))  # a look at due groups: nothing is due before end + G
    assert sent() == failed and set(table.writes.values()) == {1}
    asyncio.run(agent.handle(0, records[3:]))  # offset 6 after 0: 2 and 4 are read back first, and sent again
    again = sent()[len(failed) :]
    assert [customer for customer, _ in again] == ["c0-1", "c0-2", "c0-3"]
    assert all(version > dict(failed)[customer] for customer, version in again[:2])
    asyncio.run(agent.tick(now + agent.gap_ms + 3_600_000))  # closed: each looked at once more, and sent closed
    assert [customer for customer, _ in sent()[len(failed) + len(again) :]] == ["c0-0", "c0-1", "c0-2", "c0-3"]


def versions(produced: Produced, topic: str) -> list[tuple[str, bytes | None, bytes, int]]:
    """The journey instance revisions sent: (topic, value, key, version)."""
    from schemas.codec import JOURNEY_INSTANCE

    out = []
    for _, value, key, _ in produced.on(topic):
        _, record = decode_confluent(cast(bytes, value), CATALOG, JOURNEY_INSTANCE)
        out.append((topic, value, cast(bytes, key), int(record["version"])))
    return out


def test_each_run_of_a_batch_is_progress() -> None:
    """A Faust batch of a backlog takes minutes in a niced process: every run the merge or the journey agent
    finishes moves the process's progress, not only the batch's end (the stall watch killed it after 300 s)."""
    records, journeys = partial_records(2), journey_records(0, 2)
    merge, _ = merge_of(records, {0: 2})
    follow = journeys_of(journeys, {0: 4})
    clock = [0.0]
    for agent, batch in ((merge, records), (follow, journeys)):
        progress = agent.metrics.health.progress
        clock[0] = 0.0
        progress.clock, progress.at = (lambda: clock[0]), 0.0
        progress.begin()
        clock[0] = 100.0
        asyncio.run(agent.handle(0, batch))
        assert progress.at == 100.0 and progress.busy_since == 0.0  # moved on; the batch still the runner's


@pytest.mark.parametrize("consumer_end", [6, 4])
def test_the_journey_tail_check_waits_while_the_consumer_has_not_handed_the_end_over(
    monkeypatch: pytest.MonkeyPatch, consumer_end: int
) -> None:
    """Judged against the broker's stable end, not the consumer's: for a partition it has paused (its buffer full
    in a backlog) the consumer's end is stale (4 here: it seems to have handed everything over)."""
    records = journey_records(0, 3)
    agent = journeys_of(records, {0: consumer_end}, stable=6)
    held = cast(Held, agent.consumption)
    clock = [1000.0]
    monkeypatch.setattr(journey_agent.time, "monotonic", lambda: clock[0])
    asyncio.run(agent.handle(0, records[:1]))
    held.handed[0] = 2  # one more message on its way (the one at 2 handed over, still in the buffer)
    for _ in range(tail_watch.TAIL_DEFER_CHECKS + 3):
        clock[0] += tail_watch.TAIL_CHECK_SECONDS  # quiet, and nothing else is busy
        asyncio.run(agent.follow_tails())
    assert cast(Reader, agent.reader).reads == 0
    held.handed[0] = 4  # handed over, never handled: skipped
    clock[0] += tail_watch.TAIL_CHECK_SECONDS
    asyncio.run(agent.follow_tails())
    assert cast(Reader, agent.reader).reads == 1 and agent.next[0] == 6 and len(agent.table) == 3


def test_the_tail_check_puts_off_a_busy_merge_then_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    records = partial_records(3)
    agent, _ = merge_of(records, {0: 3})
    asyncio.run(agent.handle(0, records[:1]))  # merge saw the first; the hot path committed all three
    clock = [1000.0]
    monkeypatch.setattr(merge_agent.time, "monotonic", lambda: clock[0])
    agent.active_at = clock[0]  # busy, and behind the partition's end
    asyncio.run(agent.follow_tails())  # first sight of the short chain: the agent may be on it
    for _ in range(tail_watch.TAIL_DEFER_CHECKS):
        asyncio.run(agent.follow_tails())
        assert agent.reader.reads == 0  # put off while busy
    asyncio.run(agent.follow_tails())  # deferred long enough: read back
    assert agent.reader.reads == 1
    assert agent.positions[SourceKey(0, ROUTED_SOURCE).encode()] == position_to_table(Position(3, 4))


def test_the_tail_check_waits_while_the_consumer_has_not_handed_the_end_over() -> None:
    """In a backlog a partition waits its turn for minutes: while Faust's consumer has not handed over the
    partition's end, no read-back (it would be read twice), idle or not, up to TAIL_WAIT_CHECKS; once it has,
    a chain still short is read back."""
    records = partial_records(3)
    agent, _ = merge_of(records, {0: 3})
    held = cast(Held, agent.consumption)
    asyncio.run(agent.handle(0, records[:1]))
    held.handed[0] = records[0].offset  # the consumer is on its way: two more messages to hand over
    agent.active_at = 0.0  # idle
    for _ in range(tail_watch.TAIL_DEFER_CHECKS + 3):
        asyncio.run(agent.follow_tails())
    assert agent.reader.reads == 0
    held.handed[0] = records[-1].offset  # handed over, and the agent never got them: skipped
    asyncio.run(agent.follow_tails())
    assert agent.reader.reads == 1
    assert agent.positions[SourceKey(0, ROUTED_SOURCE).encode()] == position_to_table(Position(3, 4))


def test_an_idle_merge_reads_a_short_tail_back_at_the_second_check() -> None:
    records = partial_records(2)
    agent, _ = merge_of(records, {0: 2})
    asyncio.run(agent.handle(0, records[:1]))
    agent.active_at = 0.0  # idle
    asyncio.run(agent.follow_tails())
    assert agent.reader.reads == 0  # one short sight may be a batch on its way
    asyncio.run(agent.follow_tails())
    assert agent.reader.reads == 1


def test_a_merge_group_that_stands_still_while_the_hot_path_commits_is_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """faust-streaming#523: a Faust consumer that lost its session in an outage may never fetch again, holding no
    partition (unsettled here).  The hot path's offsets move, the merge group's do not: the process is stalled;
    once the group moves again it is not."""
    agent, _ = merge_of(partial_records(1), {0: 1})
    agent.consumption = Held("cx-partials", {}, settled=False)  # wedged: nothing held, never settled
    hot, own = cast(Offsets, agent.hotpath), cast(Offsets, agent.own)
    clock = [1000.0]
    monkeypatch.setattr(merge_agent.time, "monotonic", lambda: clock[0])
    progress = agent.metrics.health.progress
    progress.clock = lambda: clock[0]
    own.committed = {0: 2}
    asyncio.run(agent.follow_tails())  # first look: nothing moved yet
    for step in range(1, 5):
        clock[0] += 5.0
        hot.committed = {0: 3 + step}  # the hot path keeps committing
        asyncio.run(agent.follow_tails())
    assert progress.stalled() == pytest.approx(20.0)  # since the last look at which nothing waited
    agent.metrics.health.bound = 15.0  # CXPULSE_STALL_SECONDS
    assert not agent.metrics.health.ready(True)
    clock[0] += 5.0
    own.committed = {0: 9}  # the group moves again (a restarted merge consumes)
    asyncio.run(agent.follow_tails())
    assert progress.stalled() == 0.0 and agent.metrics.health.ready(True)
    clock[0] += 5.0
    asyncio.run(agent.follow_tails())  # both stand still: caught up, nothing waits
    assert progress.stalled() == 0.0


def test_expiry_drops_the_panes_past_the_retention_and_ignores_late_deltas() -> None:
    records = partial_records(1)
    agent, _ = merge_of(records, {0: 1}, retention_seconds=3600, windows_seconds=(300,))
    asyncio.run(agent.handle(0, records))
    assert agent.panes
    asyncio.run(agent.expire(NOW + 2 * 3600_000))
    assert not agent.panes and agent.expired_before == NOW + 2 * 3600_000 - 3600_000
    asyncio.run(agent.expire(NOW))  # nothing more to drop
    assert (agent.metrics.registry.get_sample_value("cxpulse_worker_expired_keys_total", {"table": "panes"}) or 0) >= 1


def context(settings: Settings, produced: Produced, held: Held) -> AgentContext:
    """An agent's process: these settings, fresh metrics, the producer that keeps, the local catalog, ``held``."""
    return AgentContext(settings, WorkerMetrics(CollectorRegistry()), produced, CATALOG, held)  # type: ignore[arg-type]


def ces_result(
    channel: str, pane: int, n: int, high: int, version: int = 1, themes: dict[str, int] | None = None
) -> Record:
    state = State(n, 0, 0, 0, 0, high, n * 10**9, n * 10**9)
    result = window_result(pane, pane + P, channel, "billing", "CES", state, version, themes=themes)
    value = encode_confluent(result_record(result), WINDOW_RESULT, CATALOG.id_for(WINDOW_RESULT_RAW))
    return Record(0, pane // P, value, 0, (), ResultKey(channel, "billing", "CES", pane).encode())


def effort_of(watermark: list[int | None]) -> tuple[EffortDetector, Produced, Held]:
    produced = Produced()
    held = Held("cx.metrics.panes", {0: 0})
    tuned = settings(effort_baseline_seconds=1200, effort_guard_seconds=120, effort_min_baseline=100)
    agent = EffortDetector(
        context(tuned, produced, held),
        "cx.metrics.panes",
        ({}, {}),
        Snapshot(),
        lambda: watermark[0],
    )
    return agent, produced, held


def test_the_effort_detector_waits_for_the_watermark_then_catches_up_and_fires() -> None:
    """Steady panes, then a spike: while merge's watermark is behind, nothing is evaluated (the panes would go by
    empty); once it moves past them, they are evaluated in order and the spike fires, its `at` the pane's end."""
    start = NOW - 40 * P
    records = [ces_result("chat", start + i * P, 20, 4) for i in range(30)]
    records += [ces_result("chat", start + i * P, 20, 16) for i in range(30, 38)]
    watermark: list[int | None] = [None]
    agent, produced, held = effort_of(watermark)
    asyncio.run(agent.handle(0, records))
    held.partitions[0] = records[-1].offset + 1
    asyncio.run(agent.tick(NOW))
    asyncio.run(agent.tick(NOW))
    assert agent.states == {} and not produced.on(agent.settings.alerts_topic)  # no watermark: nothing evaluated
    watermark[0] = start + 20 * P  # merged up to before the spike
    for _ in range(3):
        asyncio.run(agent.tick(NOW))
    assert not produced.on(agent.settings.alerts_topic)
    watermark[0] = NOW  # the backlog is merged
    for _ in range(3):
        asyncio.run(agent.tick(NOW))
    alerts = [decode_confluent(v, CATALOG, EFFORT_ALERT)[1] for _, v, _, _ in produced.on(agent.settings.alerts_topic)]
    assert [a["state"] for a in alerts] == ["FIRING"]
    at = alerts[0]["at"]  # epoch ms (the codec keeps timestamps as integers)
    assert start + 30 * P < at <= start + 38 * P


def test_a_detector_fed_by_merge_closes_panes_by_the_watermark_alone() -> None:
    """Fed by merge, the detector has no results partition ends to wait for: merge hands a batch's results over
    before it moves its watermark, so a watermark seen at one tick is trusted at the next, however far the
    partials partition it holds (under the results partition's number) moved meanwhile."""
    start = NOW - 40 * P
    records = [ces_result("chat", start + i * P, 20, 4) for i in range(30)]
    records += [ces_result("chat", start + i * P, 20, 16) for i in range(30, 38)]
    results = [decode_confluent(r.value, CATALOG, WINDOW_RESULT)[1] for r in records]
    watermark: list[int | None] = [None]
    agent, produced, held = effort_of(watermark)
    agent.fed_by_merge = True
    held.partitions[0] = 10  # the partials partition's end: merge's input, nothing this agent applies
    agent.take(0, results, [NOW] * len(results))
    asyncio.run(agent.tick(NOW))
    assert not produced.on(agent.settings.alerts_topic)  # no watermark yet: nothing evaluated
    watermark[0], held.partitions[0] = NOW, 20
    asyncio.run(agent.tick(NOW))  # noted
    assert not produced.on(agent.settings.alerts_topic)
    held.partitions[0] = 30
    asyncio.run(agent.tick(NOW))  # trusted
    alerts = [decode_confluent(v, CATALOG, EFFORT_ALERT)[1] for _, v, _, _ in produced.on(agent.settings.alerts_topic)]
    assert [a["state"] for a in alerts] == ["FIRING"]


def run_effort(settled: bool) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Two segments over 60 panes with a spike in one, handed over in batches with two ticks after each (merge's
    watermark at the batch's last pane end), one pane revised late; the alerts, the state and the panes table."""
    start = NOW - 70 * P
    records = [
        ces_result(channel, start + i * P, 20, 16 if channel == "chat" and 40 <= i < 46 else 4)
        for i in range(60)
        for channel in ("chat", "phone")
    ]
    records.append(ces_result("phone", start + 50 * P, 30, 6, version=2))  # a late revision of a pane evaluated
    watermark: list[int | None] = [None]
    agent, produced, held = effort_of(watermark)
    held.is_settled = settled
    for at in range(0, len(records), 16):
        batch = records[at : at + 16]
        asyncio.run(agent.handle(0, batch))
        held.partitions[0] = batch[-1].offset + 1
        watermark[0] = max(r.offset for r in batch) * P + P
        asyncio.run(agent.tick(NOW))
        asyncio.run(agent.tick(NOW))
    alerts = [decode_confluent(v, CATALOG, EFFORT_ALERT)[1] for _, v, _, _ in produced.on(agent.settings.alerts_topic)]
    return alerts, dict(agent.states), dict(agent.panes)


def test_the_detector_keeps_the_panes_by_segment_as_a_read_of_the_whole_table_gives_them() -> None:
    """A settled process's detector keeps its panes by segment from what it handles (a tick no longer decodes
    every pane held); it must evaluate exactly as one that reads the whole table at every tick (what it does
    while the process is not settled): the same alerts, the same CUSUM state, the same panes kept."""
    kept, read = run_effort(settled=True), run_effort(settled=False)
    assert [a["state"] for a in kept[0]] == ["FIRING", "RESOLVED"]
    assert kept == read


def test_a_rebalance_makes_the_detector_read_its_table_again() -> None:
    """A rebalance can reload the table from its changelog: the panes kept by segment are read anew."""
    watermark: list[int | None] = [NOW]
    agent, _, held = effort_of(watermark)
    pane = NOW - 10 * P
    asyncio.run(agent.handle(0, [ces_result("chat", pane, 20, 4)]))
    for _ in range(3):  # the first tick notes merge's watermark, the second trusts it
        asyncio.run(agent.tick(NOW))
    assert agent.by_segment is not None
    assert [p.n for p in agent.by_segment[SegmentKey(0, "chat", "billing")].values()] == [20]
    agent.panes[PaneKey(0, "chat", "billing", pane).encode()] = [2, 25, 5, {}]  # a recovery's newer value
    held.rebalanced += 1
    asyncio.run(agent.tick(NOW))
    assert [p.n for p in agent.by_segment[SegmentKey(0, "chat", "billing")].values()] == [25]


def test_the_kpi_view_refreshes_the_windows_and_drops_old_panes() -> None:
    produced = Produced()
    held = Held("cx.metrics.panes", {0: 10})
    snapshot = Snapshot()
    view = KpiView(context(settings(windows_seconds=(300,)), produced, held), "cx.metrics.panes", {}, snapshot)
    pane = NOW - NOW % P - P
    asyncio.run(view.handle(0, [ces_result("chat", pane, 10, 2), ces_result("chat", pane - 20 * P, 5, 1)]))
    asyncio.run(view.tick(NOW))
    text = snapshot.exposition().decode()
    assert 'cxpulse_kpi_responses{channel="chat",journey="billing",metric="CES",window="5m"} 10.0' in text
    assert list(view.view) == [f"0|chat|billing|CES|{pane}"]
    # after a refresh, a result of a pane in no window is not kept (a backlog of days is mostly such results)
    asyncio.run(view.handle(0, [ces_result("phone", pane - 20 * P, 5, 1), ces_result("phone", pane, 3, 1)]))
    assert sorted(view.view) == [f"0|chat|billing|CES|{pane}", f"0|phone|billing|CES|{pane}"]
    asyncio.run(view.tick(NOW))
    text = snapshot.exposition().decode()
    assert 'cxpulse_kpi_responses{channel="phone",journey="billing",metric="CES",window="5m"} 3.0' in text


def test_the_kpi_view_counts_theme_mentions_per_channel_over_the_rolling_windows() -> None:
    """The pane results' mentions summed per channel and theme over each window (journeys and metrics together);
    a newer version of a pane replaces its counts; a rebalance rebuilds them from the table; old panes leave."""
    held = Held("cx.metrics.panes", {0: 10})
    snapshot = Snapshot()
    view = KpiView(context(settings(windows_seconds=(300, 3600)), Produced(), held), "cx.metrics.panes", {}, snapshot)
    pane = NOW - NOW % P - P
    asyncio.run(view.handle(0, [
        ces_result("chat", pane, 10, 2, themes={"(any)": 4, "waiting": 3}),
        ces_result("chat", pane - 20 * P, 5, 1, themes={"(any)": 2, "waiting": 1, "bot_self_service": 2}),
        ces_result("phone", pane, 3, 1),  # no comment: no theme series
    ]))  # fmt: skip
    asyncio.run(view.tick(NOW))

    def themes() -> dict[str, float]:
        samples = [s for f in text_string_to_metric_families(snapshot.exposition().decode()) for s in f.samples]
        return {
            f"{s.labels['channel']}/{s.labels['theme']}/{s.labels['window']}": s.value
            for s in samples
            if s.name == "cxpulse_theme_answers"
        }

    assert themes() == {
        "chat/(any)/5m": 4, "chat/waiting/5m": 3,
        "chat/(any)/1h": 6, "chat/waiting/1h": 4, "chat/bot_self_service/1h": 2,
    }  # fmt: skip
    asyncio.run(view.handle(0, [ces_result("chat", pane, 12, 2, version=2, themes={"(any)": 6, "waiting": 3})]))
    held.rebalanced += 1  # the same partitions: the views are rebuilt from the table only on a new assignment
    view.indexed = None
    asyncio.run(view.tick(NOW))
    assert themes()["chat/(any)/5m"] == 6 and themes()["chat/(any)/1h"] == 8
    asyncio.run(view.tick(NOW + 45 * P))  # the older pane leaves the hour
    assert themes() == {"chat/(any)/1h": 6, "chat/waiting/1h": 3}


class Failing(BatchAgent):
    name = "failing"
    topic = "t"
    transactional_input = True

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        self.calls += 1
        raise RuntimeError("boom")


class _Event:
    def __init__(self, partition: int, offset: int) -> None:
        self.message = type("M", (), {"partition": partition, "offset": offset, "value": b"", "timestamp": 1.0,
                                      "headers": [], "key": None})()  # fmt: skip


def test_the_runner_counts_a_failed_batch_and_measures_lag_past_the_commit_marker() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    produced = Produced()
    agent = Failing()
    runner = Runner(agent, Held("t", {0: 12}), produced, metrics)  # type: ignore[arg-type]
    asyncio.run(runner.apply(by_partition([_Event(0, 9), _Event(0, 10)])))  # type: ignore[list-item]
    assert (
        agent.calls == 1 and metrics.registry.get_sample_value("cxpulse_worker_batch_errors_total", {"topic": "t"}) == 1
    )
    assert produced.flushes == 1 and runner.applied == {0: 11}
    runner.measure_lag()
    lag = metrics.registry.get_sample_value("cxpulse_sink_lag_messages", {"sink": "failing", "partition": "0"})
    assert lag == 0  # 12 - 11 - the marker


class Gathering(BatchAgent):
    """Gathers in handle and writes in finish, as the ClickHouse sink does; finish measures the lag meanwhile."""

    name = "gathering"
    topic = "t"
    writes_in_finish = True

    def __init__(self, runner_of: Callable[[], Runner], metrics: WorkerMetrics) -> None:
        self.runner_of, self.metrics = runner_of, metrics
        self.gathered: list[tuple[int, int]] = []
        self.written: list[list[tuple[int, int]]] = []
        self.lag_while_writing: dict[str, float | None] = {}

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        self.gathered += [(partition, record.offset) for record in records]

    async def finish(self) -> None:
        self.runner_of().measure_lag()
        for partition in ("0", "1"):
            self.lag_while_writing[partition] = self.metrics.registry.get_sample_value(
                "cxpulse_sink_lag_messages", {"sink": "gathering", "partition": partition}
            )
        self.written.append(sorted(self.gathered))
        self.gathered = []


def test_an_agent_that_writes_in_finish_writes_the_batch_once_and_shows_it_as_lag_until_then() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    produced = Produced()
    runner: Runner | None = None
    agent = Gathering(lambda: cast(Runner, runner), metrics)
    runner = Runner(agent, Held("t", {0: 12, 1: 5}), produced, metrics)  # type: ignore[arg-type]
    events = [_Event(1, 3), _Event(0, 9), _Event(0, 10), _Event(1, 4)]
    asyncio.run(runner.apply(by_partition(events)))  # type: ignore[arg-type]
    assert agent.written == [[(0, 9), (0, 10), (1, 3), (1, 4)]]  # one write, every partition of the batch
    assert agent.lag_while_writing == {"0": 3.0, "1": 2.0}  # not applied yet: 12 - 9, 5 - 3
    assert runner.applied == {0: 11, 1: 5} and produced.flushes == 1


def test_the_merge_tick_does_not_wait_for_the_tail_check() -> None:
    """Reading the groups' offsets can take ADMIN_TIMEOUT_SECONDS twice while Kafka is away: the tick starts the
    tail check beside itself and returns (a tick that long made Faust warn "merge-tick is overlapping" every 10 s
    of an outage); the next check starts only once this one is done."""
    agent, _ = merge_of(partial_records(1), {0: 1})
    release = threading.Event()
    reads: list[int] = []

    class Slow(Offsets):
        def read(self) -> dict[int, int]:
            reads.append(1)
            release.wait(10)
            return self.committed

    agent.hotpath = Slow({0: 3})

    async def scenario() -> None:
        await asyncio.wait_for(agent.tick(NOW), 5)  # returns while the read waits
        assert agent.tail_check is not None and not agent.tail_check.done()
        agent.tails.checked_at = 0.0  # the next check is due, but the first is still under way
        await agent.tick(NOW)
        release.set()
        await agent.tail_check
        assert len(reads) == 1

    asyncio.run(scenario())


class _Logged(Produced):
    """A ResultsProducer whose flushes take a few turns of the event loop, with every write and flush in ``log``;
    its flush number ``fail`` raises (DeliveryError: Kafka did not take everything)."""

    def __init__(self, log: list[tuple[str, str]], fail: int = 0) -> None:
        super().__init__()
        self.log, self.fail = log, fail

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1,
                timestamp: int = 0) -> None:  # fmt: skip
        super().produce(topic, value, key, partition, timestamp)
        self.log.append(("produce", topic))

    async def flush(self) -> None:
        from streams.agents.results import DeliveryError

        self.flushes += 1
        self.log.append(("flush", "start"))
        for _ in range(5):
            await asyncio.sleep(0)  # the broker's acks: the event loop goes on meanwhile
        if self.flushes == self.fail:
            raise DeliveryError("not all delivered")
        self.log.append(("flush", "end"))


class _LoggedTable(dict[str, Any]):
    def __init__(self, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append(("state", key))
        super().__setitem__(key, value)


@pytest.mark.parametrize("fail", [0, 1])
def test_the_journeys_send_revisions_only_once_the_states_are_in_kafka(fail: int) -> None:
    """The revisions are sent only once the states' flush returned (the event loop goes on while it waits): a
    kill in between must leave states that send them again.  A states' flush that fails sends nothing and fails the
    batch (read again)."""
    log: list[tuple[str, str]] = []
    produced = _Logged(log, fail)
    records = journey_records(0, 4)
    agent = JourneyAgent(
        context(settings(), produced, Held(JOURNEY_ANSWERS, {0: 8})),
        JOURNEY_ANSWERS,
        _LoggedTable(log),
        Reader(records, 8),  # type: ignore[arg-type]
        Offsets({0: 0}),
    )
    if fail:
        with pytest.raises(Exception, match="not all delivered"):
            asyncio.run(agent.handle(0, records))
        assert [entry for entry in log if entry[0] == "produce"] == []
        return
    asyncio.run(agent.handle(0, records))
    first_flush_end = log.index(("flush", "end"))
    assert [entry[0] for entry in log[: log.index(("flush", "start"))]] == ["state"] * 4
    revisions = [at for at, entry in enumerate(log) if entry == ("produce", settings().journeys_topic)]
    assert len(revisions) == 4 and min(revisions) > first_flush_end
    assert log[-1] == ("flush", "end") and max(revisions) < len(log) - 1
