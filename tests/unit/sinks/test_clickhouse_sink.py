"""The ClickHouse sink's loop on its own (a fake consumer and store; tests/integration/test_store.py runs it on a
real broker and store): a batch is one column-oriented insert per table with a deterministic deduplication token,
then its offsets are committed; of a key's revisions only the last is written; an unreadable record is skipped and
counted; a failing insert is retried with backoff and the same token while the consumer is paused, and nothing is
committed before it went in; a stop meanwhile commits nothing; ClickHouse being away is not a stall."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from sinks import clickhouse as store
from sinks import clickhouse_sink
from sinks.clickhouse_sink import ClickHouseSink, Feed, SinkMetrics
from streams.agents.health import CallGuard, Progress
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record
from streams.config import Settings
from tests.fakes import FakeMessage

pytestmark = pytest.mark.unit
PANES, ANSWERS = "cx.metrics.panes", "cx-answers"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeConsumer:
    """What the loop calls on a librdkafka consumer; ``consume`` hands out the queued lists, then waits (the clock
    moves by its timeout)."""

    def __init__(self, clock: Clock, held: list[tuple[str, int]]) -> None:
        self.clock = clock
        self.queued: list[list[FakeMessage]] = []
        self.held = [TopicPartition(topic, partition) for topic, partition in held]
        self.paused: list[str] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.highs: dict[tuple[str, int], int] = {}
        self.during_wait: Callable[[], None] = lambda: None

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        assert timeout > 0, f"consume({timeout}): librdkafka waits forever on a negative timeout"
        if self.queued:
            return self.queued.pop(0)
        self.during_wait()
        self.clock.now += timeout
        return []

    def assignment(self) -> list[TopicPartition]:
        return list(self.held)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.append("pause")

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.append("resume")

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return 0, self.highs.get((tp.topic, tp.partition), -1)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = topics

    def close(self) -> None:
        self.closed = True


class FakeClient:
    """What insert_columns calls: ``insert``; fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.inserts: list[dict[str, Any]] = []

    def insert(self, table: str, data: Any, **options: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        self.inserts.append({"table": table, "data": [list(column) for column in data], **options})


class FakeStore:
    """The sink's Store: runs the work on one fake client, and counts resets (a failed client is dropped)."""

    def __init__(self, client: FakeClient) -> None:
        self.client: FakeClient | None = client
        self.made = client
        self.resets = 0

    def run_now(self, work: Callable[[Any], Any]) -> Any:
        self.client = self.made
        return work(self.made)

    def reset(self) -> None:
        self.resets += 1
        self.client = None


def n_row(table: str) -> Callable[[Record], list[list[Any]]]:
    """A record of the test's topics: ``n`` as a row whose every column is n (``bad`` is not one)."""

    def columns_of(record: Record) -> list[list[Any]]:
        if record.value == b"bad":
            raise ValueError("not a pane result")
        return [[int(record.value)] for _ in clickhouse_sink.COLUMNS[table]]

    return columns_of


def n_values(table: str) -> Callable[[Record], list[Any]]:
    """:func:`n_row` for a feed of rows (as the sink's revisions feeds are): ``n`` as a row whose every value is n
    (``bad`` is not one; ``short`` is a row a value short)."""

    def row_of(record: Record) -> list[Any]:
        if record.value == b"bad":
            raise ValueError("not a pane result")
        width = len(clickhouse_sink.COLUMNS[table]) - (record.value == b"short")
        return [0 if record.value == b"short" else int(record.value)] * width

    return row_of


def sink(
    client: FakeClient, held: list[tuple[str, int]] | None = None
) -> tuple[ClickHouseSink, FakeConsumer, FakeStore, WorkerMetrics, Clock]:
    metrics = WorkerMetrics(CollectorRegistry())
    clock = Clock()
    metrics.health.progress = Progress(clock=clock)
    feeds = [
        Feed(PANES, "pane_results", None, 100, revisions=True, row_of=n_values("pane_results")),
        Feed(ANSWERS, "answers", n_row("answers"), 60, transactional=True),
    ]
    consumer = FakeConsumer(clock, held or [(PANES, 0), (PANES, 2), (ANSWERS, 0)])
    db = FakeStore(client)
    loop = ClickHouseSink(feeds, db, SinkMetrics(metrics), consumer, clock=clock)  # type: ignore[arg-type]
    return loop, consumer, db, metrics, clock


def messages(topic: str, partition: int, start: int, values: list[bytes], keys: list[bytes] | None = None) -> list[Any]:
    keyed: list[bytes | None] = list(keys) if keys else [None] * len(values)
    return [
        FakeMessage(partition, start + i, v, k, t=topic, ts=1_000)
        for i, (v, k) in enumerate(zip(values, keyed, strict=True))
    ]


def test_a_batch_is_one_insert_per_table_with_a_deterministic_token_then_its_offsets_are_committed() -> None:
    client = FakeClient()
    loop, consumer, _, metrics, clock = sink(client)
    loop.step([*messages(PANES, 0, 10, [b"1", b"2"]), *messages(PANES, 2, 5, [b"3"]), *messages(ANSWERS, 0, 7, [b"9"])])
    assert client.inserts == [] and consumer.commits == []  # within BATCH_WITHIN_SECONDS: the batch fills
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    panes, answers = client.inserts
    assert panes["table"] == "cxpulse.pane_results" and panes["column_oriented"] is True
    assert panes["column_names"] == list(store.PANE_COLUMNS) and panes["data"][0] == [1, 2, 3]
    assert panes["settings"] == {"insert_deduplication_token": store.token(PANES, (0, 10, 11, 2), (2, 5, 5, 1))}
    assert answers["table"] == "cxpulse.answers" and answers["data"][0] == [9]
    assert consumer.commits == [[(ANSWERS, 0, 8), (PANES, 0, 12), (PANES, 2, 6)]]  # after the inserts
    assert metrics.registry.get_sample_value("cxpulse_sink_rows_total", {"table": "pane_results"}) == 3
    clock.now += 2 * clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])  # nothing taken since: no empty insert, no commit
    assert len(client.inserts) == 2 and len(consumer.commits) == 1


def test_a_full_batch_goes_at_once() -> None:
    client = FakeClient()
    loop, consumer, _, _, _ = sink(client)
    loop.step(messages(ANSWERS, 0, 0, [b"1"] * 60))
    assert client.inserts[0]["data"][0] == [1] * 60 and consumer.commits == [[(ANSWERS, 0, 60)]]


def test_an_answers_batch_of_its_bytes_is_full_however_few_messages() -> None:
    """A batch of answer messages is full at ANSWERS_BATCH messages or at its batch_bytes, whichever first: a burst's
    answers come in messages of up to 4 MB, a dozen of them for 200,000 answers."""
    client = FakeClient()
    loop, consumer, _, _, _ = sink(client)
    loop.feeds[ANSWERS] = loop.feeds[ANSWERS]._replace(batch_bytes=10)
    loop.step(messages(ANSWERS, 0, 0, [b"1234", b"5678"]))
    assert client.inserts == []  # 8 bytes
    loop.step(messages(ANSWERS, 0, 2, [b"99"]))
    assert client.inserts[0]["data"][0] == [1234, 5678, 99] and consumer.commits == [[(ANSWERS, 0, 3)]]


def test_the_tail_of_a_burst_goes_once_the_feed_caught_up_not_a_window_later() -> None:
    """After a full batch, the feed's next batch goes once the sink has taken every partition of it to the end
    librdkafka last fetched (a transactional feed's: up to its commit marker), not BATCH_WITHIN_SECONDS after its
    first message; a batch after that one, not full, waits BATCH_WITHIN_SECONDS again (a quiet feed's inserts stay
    one per window)."""
    client = FakeClient()
    loop, consumer, _, _, clock = sink(client, [(PANES, 0), (ANSWERS, 0), (ANSWERS, 1)])
    loop.step(messages(ANSWERS, 0, 0, [b"1"] * 60))  # full: goes at once
    consumer.highs.update({(ANSWERS, 0): 100, (ANSWERS, 1): 11})  # 0..98 and 0..9 in Kafka, each then a marker
    loop.step([*messages(ANSWERS, 0, 60, [b"2"] * 7), *messages(ANSWERS, 1, 0, [b"4"] * 10)])
    assert len(client.inserts) == 1  # partition 0 is not taken to its end
    loop.step(messages(ANSWERS, 0, 67, [b"3"] * 32))
    assert [insert["data"][0] for insert in client.inserts] == [[1] * 60, [2] * 7 + [3] * 32 + [4] * 10]
    assert consumer.commits[-1] == [(ANSWERS, 0, 99), (ANSWERS, 1, 10)] and clock.now == 0
    consumer.highs[(ANSWERS, 0)] = 101
    loop.step(messages(ANSWERS, 0, 99, [b"5"]))
    assert len(client.inserts) == 2  # caught up, but not after a full batch: the window
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    assert client.inserts[2]["data"][0] == [5]


def test_a_feed_that_never_fills_a_batch_waits_the_window_though_caught_up() -> None:
    """A quiet feed: each message is the end of what Kafka has, and the batch still waits its window."""
    client = FakeClient()
    loop, _, _, _, clock = sink(client)
    for n in range(4):
        loop.step(messages(ANSWERS, 0, n, [b"1"]))
        loop.step([])
    assert client.inserts == []
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    assert client.inserts[0]["data"][0] == [1] * 4


def test_each_feed_fills_its_own_batch_and_a_full_one_goes_alone() -> None:
    """A full batch of answers goes at once with its offsets; the pane results taken beside it keep filling their
    own batch and go when it is due, with theirs: a backlog's pane groups are revised many times over, and written
    with every full batch of answers, each insert held a few revisions of each group."""
    client = FakeClient()
    loop, consumer, _, metrics, clock = sink(client)
    loop.step([*messages(PANES, 0, 0, [b"1", b"2"], [b"a", b"b"]), *messages(ANSWERS, 0, 0, [b"9"] * 60)])
    assert [insert["table"] for insert in client.inserts] == ["cxpulse.answers"]
    assert consumer.commits == [[(ANSWERS, 0, 60)]]
    assert metrics.health.progress.busy_since is not None  # the pane results' batch is still in flight
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS - 1
    loop.step(messages(PANES, 0, 2, [b"3"], [b"a"]))
    assert len(client.inserts) == 1  # within BATCH_WITHIN_SECONDS of the pane results' first message
    clock.now += 1
    loop.step([])
    assert client.inserts[1]["table"] == "cxpulse.pane_results" and client.inserts[1]["data"][0] == [2, 3]
    assert client.inserts[1]["settings"]["insert_deduplication_token"] == store.token(PANES, (0, 0, 2, 3))
    assert consumer.commits[1] == [(PANES, 0, 3)]
    assert metrics.health.progress.busy_since is None


def test_a_revisions_batch_fills_with_keys_not_messages() -> None:
    """A revisions feed's batch holds the newest revision of each key as it takes them: 300 revisions of 3 pane
    groups are 3 rows, not a full batch (batch_size 100); 100 groups are."""
    client = FakeClient()
    loop, consumer, _, _, _ = sink(client)
    loop.step(messages(PANES, 0, 0, [str(n).encode() for n in range(300)], [b"a", b"b", b"c"] * 100))
    assert client.inserts == [] and consumer.commits == []
    loop.step(messages(PANES, 2, 0, [str(n).encode() for n in range(97)], [str(n).encode() for n in range(97)]))
    assert client.inserts[0]["data"][0] == [297, 298, 299, *range(97)]
    assert consumer.commits == [[(PANES, 0, 300), (PANES, 2, 97)]]


def test_of_the_revisions_of_a_key_only_the_last_is_written() -> None:
    """A pane group revised three times in a batch is one row, the newest (the table would keep only it)."""
    client = FakeClient()
    loop, consumer, _, _, clock = sink(client)
    loop.step(messages(PANES, 0, 0, [b"1", b"2", b"3", b"4"], [b"a", b"b", b"a", b"a"]))
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    assert client.inserts[0]["data"][0] == [2, 4]
    assert client.inserts[0]["settings"]["insert_deduplication_token"] == store.token(PANES, (0, 0, 3, 4))
    assert consumer.commits == [[(PANES, 0, 4)]]


def test_an_unreadable_record_is_skipped_and_counted() -> None:
    """In a feed of rows (pane results) a record that does not read, or reads as a row of the wrong width; in a
    feed of columns (answers) one that does not read: each skipped and counted, the rest written."""
    client = FakeClient()
    loop, consumer, _, metrics, clock = sink(client)
    loop.step([*messages(PANES, 0, 0, [b"1", b"bad", b"short", b"4"]), *messages(ANSWERS, 0, 0, [b"bad", b"7"])])
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    panes, answers = client.inserts
    assert panes["data"] == [[1, 4]] * len(store.PANE_COLUMNS)
    assert answers["data"] == [[7]] * len(store.ANSWER_COLUMNS)
    assert consumer.commits == [[(ANSWERS, 0, 2), (PANES, 0, 4)]]
    assert metrics.registry.get_sample_value("cxpulse_sink_errors_total", {"sink": "clickhouse"}) == 3


def test_a_failing_insert_is_retried_with_backoff_and_the_same_token_the_consumer_paused() -> None:
    client = FakeClient(failures=3)
    loop, consumer, db, metrics, clock = sink(client)
    ups: list[float | None] = []
    consumer.during_wait = lambda: ups.append(metrics.registry.get_sample_value("cxpulse_clickhouse_up"))
    loop.step(messages(PANES, 2, 0, [b"7"]))
    started = clock.now = clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    assert 3.5 <= clock.now - started < 4.5  # backed off 0.5 + 1 + 2 s
    assert set(ups) == {0.0} and consumer.paused == ["pause", "resume"] * 3  # down and paused while it fails
    assert db.resets == 3 and len(client.inserts) == 1 and client.inserts[0]["data"][0] == [7]
    assert consumer.commits == [[(PANES, 2, 1)]]  # once it went in
    assert metrics.registry.get_sample_value("cxpulse_sink_errors_total", {"sink": "clickhouse"}) == 3
    assert metrics.registry.get_sample_value("cxpulse_clickhouse_up") == 1


class AnsweringClient(FakeClient):
    """A client that also answers ``command`` (``SELECT 1``), unless the store is ``away``."""

    def __init__(self, away: bool) -> None:
        super().__init__()
        self.away = away
        self.asked: list[str] = []

    def command(self, sql: str) -> int:
        self.asked.append(sql)
        if self.away:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return 1


@pytest.mark.parametrize("away", [False, True])
def test_at_start_the_sink_opens_the_store_and_says_whether_it_answers_before_any_row(away: bool) -> None:
    """run() looks at the store before its first batch: the embedded engine starts and migrates then, not in the
    first insert, and ``cxpulse_clickhouse_up`` says whether the store answers on an idle sink (it read 0 until a
    first insert); one that does not answer reads 0, and the sink's health looks at it again (store_up False)."""
    client = AnsweringClient(away)
    loop, consumer, db, metrics, _ = sink(client)
    loop.guard = CallGuard("sink", exit=lambda code: pytest.fail(f"a guarded call overran (exit {code})"))
    db.client = None  # nothing opened yet, as in a new process
    loop.stopping = True  # run() starts, looks at the store, and stops at once: no row comes
    loop.run()
    assert client.asked == ["SELECT 1"] and client.inserts == [] and consumer.closed
    assert metrics.registry.get_sample_value("cxpulse_clickhouse_up") == (0.0 if away else 1.0)
    assert loop.counters.store_up is not away  # away: health looks again every HEALTH_SECONDS


def test_a_stop_while_clickhouse_is_away_commits_nothing() -> None:
    client = FakeClient(failures=10**6)
    loop, consumer, _, _, clock = sink(client)
    loop.step(messages(PANES, 0, 0, [b"1"]))
    consumer.during_wait = lambda: setattr(loop, "stopping", True)
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    assert loop.write() is False
    assert consumer.commits == [] and client.inserts == []  # the batch is read again after the restart


def test_a_partition_revoked_while_clickhouse_is_away_is_left_to_its_next_owner() -> None:
    client = FakeClient(failures=1)
    loop, consumer, _, _, clock = sink(client)
    loop.step([*messages(PANES, 0, 0, [b"1"]), *messages(PANES, 2, 0, [b"2"])])

    def revoke() -> None:
        loop.on_revoke(consumer, [TopicPartition(PANES, 2)])  # type: ignore[arg-type]
        consumer.held = [tp for tp in consumer.held if tp.partition != 2 or tp.topic != PANES]
        consumer.during_wait = lambda: None

    consumer.during_wait = revoke
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])
    assert client.inserts[0]["data"][0] == [1] and consumer.commits == [[(PANES, 0, 1)]]


def test_a_batch_whose_partitions_all_went_is_no_stall_and_their_lag_series_go() -> None:
    loop, consumer, _, metrics, clock = sink(FakeClient(), held=[(PANES, 0), (PANES, 2)])
    loop.step([*messages(PANES, 0, 0, [b"1"]), *messages(PANES, 2, 0, [b"2"])])
    consumer.highs = {(PANES, 0): 3, (PANES, 2): 4}
    clock.now += clickhouse_sink.HEALTH_SECONDS
    loop.health()
    lag = "cxpulse_sink_lag_messages"
    assert metrics.registry.get_sample_value(lag, {"sink": "clickhouse", "partition": "2"}) == 4
    loop.on_revoke(consumer, [TopicPartition(PANES, 0), TopicPartition(PANES, 2)])  # type: ignore[arg-type]
    consumer.held = [TopicPartition(PANES, 0)]  # 0 comes back (cooperative), 2 went to another sink
    clock.now += 1000.0
    assert metrics.health.progress.stalled() == 0.0  # nothing in flight: the taken batch went with its partitions
    loop.health()
    assert metrics.registry.get_sample_value(lag, {"sink": "clickhouse", "partition": "2"}) is None


def test_clickhouse_away_is_not_a_stall() -> None:
    """While inserts fail, the health look marks progress: waiting for the store is back-pressure."""
    loop, consumer, _, metrics, clock = sink(FakeClient())
    metrics.health.progress.begin()  # a batch in flight that cannot be written
    clock.now = 100.0
    assert metrics.health.progress.stalled() == 100.0
    loop.health()
    assert metrics.health.progress.stalled() == 100.0  # ClickHouse up: a batch that long in flight is a stall
    loop.counters.set_up(False)
    clock.now += clickhouse_sink.HEALTH_SECONDS
    loop.health()
    assert metrics.health.progress.stalled() == 0.0


def test_the_lag_of_a_transactional_input_leaves_out_the_commit_marker() -> None:
    loop, consumer, _, metrics, clock = sink(FakeClient(), held=[(ANSWERS, 0), (PANES, 0)])
    loop.step([*messages(ANSWERS, 0, 0, [b"1"] * 60), *messages(PANES, 0, 0, [b"1"])])  # answers: a full batch
    consumer.highs = {(ANSWERS, 0): 61, (PANES, 0): 5}  # 60 answers and their transaction's marker; 5 results
    clock.now += clickhouse_sink.HEALTH_SECONDS
    loop.health()
    # partition 0 of both topics: the answers written to their marker (0 left), the pane results all 5 (the one
    # taken waits in its own batch, which a full batch of answers does not write)
    lag = metrics.registry.get_sample_value("cxpulse_sink_lag_messages", {"sink": "clickhouse", "partition": "0"})
    assert lag == 5
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS
    loop.step([])  # the pane results' batch is due: written, and its lag counts from after it
    clock.now += clickhouse_sink.HEALTH_SECONDS
    loop.health()
    lag = metrics.registry.get_sample_value("cxpulse_sink_lag_messages", {"sink": "clickhouse", "partition": "0"})
    assert lag == 4


def test_the_process_settings_reach_the_store() -> None:
    db = clickhouse_sink.Store(Settings(clickhouse_url="http://127.0.0.1:1"))
    assert db.client is None  # opened on first use, never at construction


def test_a_reader_of_the_endpoint_file_never_sees_it_half_written(tmp_path: Any) -> None:
    """The endpoint file is replaced whole: a reader polling it while the sink (re)writes it reads the old endpoint
    or the new one, never an empty or partial file (c19d6b2's CI read "" between the create and the write), and
    the file stays the owner's only (0600)."""
    import json
    import os
    import stat
    import threading

    path = tmp_path / store.ENDPOINT_FILE
    store.write_endpoint(tmp_path, "http://127.0.0.1:1/v1/query", "t" * 64)
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                text = "<missing>"
            seen.append(text)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(2000):
            store.write_endpoint(tmp_path, f"http://127.0.0.1:{i}/v1/query", "t" * 64)
    finally:
        done.set()
        reader.join()
    assert len(seen) > 100  # the reader did read while the file was rewritten
    assert all(json.loads(text)["token"] == "t" * 64 for text in seen), {t for t in seen if not t.startswith("{")}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [store.ENDPOINT_FILE]  # no partial file left beside it


def test_the_wait_between_retries_never_asks_librdkafka_to_wait_forever() -> None:
    """A clock that moves on every look (a loaded machine): the wait's last consume() was once given the time left
    after it had run out, a negative timeout, on which librdkafka blocks forever (a CI run hung in it, deaf to
    SIGTERM, until the worker killed it)."""
    client = FakeClient(failures=4)
    loop, consumer, _, _, clock = sink(client)
    loop.step(messages(PANES, 0, 0, [b"1"]))
    clock.now += clickhouse_sink.BATCH_WITHIN_SECONDS

    class Ticking(Clock):
        def __call__(self) -> float:
            self.now += 0.3
            return self.now

    ticking = Ticking()
    ticking.now = clock.now
    loop.clock = ticking
    consumer.clock = ticking
    assert loop.write() is True  # every consume() above asserts a positive timeout
    assert consumer.commits == [[(PANES, 0, 1)]]
