"""The ClickHouse sink agent on its own: a batch is one column-oriented insert with a deterministic deduplication
token, an unreadable record is skipped and counted, a failing insert is retried with backoff (the same token: a
retry writes nothing twice) until ClickHouse takes it, and ClickHouse being away is not a stall."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sinks import clickhouse as store
from sinks import clickhouse_sink
from sinks.clickhouse_sink import ClickHouseSink, SinkMetrics
from streams.agents.base import Record
from streams.agents.health import Progress
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings

pytestmark = pytest.mark.unit
COLUMNS = store.PANE_COLUMNS


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

    async def run(self, work: Callable[[Any], Any]) -> Any:
        self.client = self.made
        return work(self.made)

    def reset(self) -> None:
        self.resets += 1
        self.client = None


def columns_of(record: Record) -> list[list[Any]]:
    """A record of the test's topic: ``n`` as a row whose every column is n (``bad`` is not one)."""
    value = record.value
    if value == b"bad":
        raise ValueError("not a pane result")
    n = int(value)
    return [[n] for _ in COLUMNS]


def sink(client: FakeClient) -> tuple[ClickHouseSink, FakeStore, WorkerMetrics, SinkMetrics]:
    metrics = WorkerMetrics(CollectorRegistry())
    counters = SinkMetrics(metrics)
    db = FakeStore(client)
    agent = ClickHouseSink("cx.metrics.panes", "pane_results", columns_of, db, counters, batch_size=100)  # type: ignore[arg-type]
    return agent, db, metrics, counters


def records(partition: int, start: int, values: list[bytes]) -> list[Record]:
    return [Record(partition, start + i, value, 0) for i, value in enumerate(values)]


def test_a_batch_of_several_partitions_is_one_insert_with_a_deterministic_token() -> None:
    client = FakeClient()
    agent, _, metrics, _ = sink(client)
    asyncio.run(agent.handle(0, records(0, 10, [b"1", b"2"])))
    asyncio.run(agent.handle(2, records(2, 5, [b"3"])))
    asyncio.run(agent.finish())
    (insert,) = client.inserts
    assert insert["table"] == "cxpulse.pane_results" and insert["column_oriented"] is True
    assert insert["column_names"] == list(COLUMNS) and insert["data"][0] == [1, 2, 3]
    token = store.token("cx.metrics.panes", (0, 10, 11, 2), (2, 5, 5, 1))
    assert insert["settings"] == {"insert_deduplication_token": token}
    assert metrics.registry.get_sample_value("cxpulse_sink_rows_total", {"table": "pane_results"}) == 3
    asyncio.run(agent.finish())  # nothing taken since: no empty insert
    assert len(client.inserts) == 1


def test_an_unreadable_record_is_skipped_and_counted() -> None:
    client = FakeClient()
    agent, _, metrics, _ = sink(client)
    asyncio.run(agent.handle(0, records(0, 0, [b"1", b"bad", b"4"])))
    asyncio.run(agent.finish())
    assert client.inserts[0]["data"][0] == [1, 4]
    assert metrics.registry.get_sample_value("cxpulse_sink_errors_total", {"sink": "clickhouse"}) == 1


def test_a_failing_insert_is_retried_with_backoff_and_the_same_token(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(failures=3)
    agent, db, metrics, counters = sink(client)
    waits: list[float] = []
    ups: list[bool] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)
        ups.append(counters.store_up)

    monkeypatch.setattr(clickhouse_sink.asyncio, "sleep", no_wait)
    asyncio.run(agent.handle(1, records(1, 0, [b"7"])))
    asyncio.run(agent.finish())
    assert waits == [0.5, 1.0, 2.0] and ups == [False, False, False]  # down while it fails, backing off
    assert db.resets == 3 and counters.store_up is True  # a failed client is dropped; up once the insert went in
    assert len(client.inserts) == 1 and client.inserts[0]["data"][0] == [7]
    assert metrics.registry.get_sample_value("cxpulse_sink_errors_total", {"sink": "clickhouse"}) == 3
    assert metrics.registry.get_sample_value("cxpulse_clickhouse_up") == 1


def test_clickhouse_away_is_not_a_stall() -> None:
    """While inserts fail, the tick marks progress: waiting for the store is back-pressure, not a wedged process."""
    agent, _, metrics, counters = sink(FakeClient())
    now = [0.0]
    metrics.health.progress = Progress(clock=lambda: now[0])
    metrics.health.progress.begin()  # a batch in flight that cannot be written
    now[0] = 100.0
    assert metrics.health.progress.stalled() == 100.0
    asyncio.run(agent.tick(0))
    assert metrics.health.progress.stalled() == 100.0  # ClickHouse up: a batch that long in flight is a stall
    counters.set_up(False)
    asyncio.run(agent.tick(0))
    assert metrics.health.progress.stalled() == 0.0


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
