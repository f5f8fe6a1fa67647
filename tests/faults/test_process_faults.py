"""A worker process that makes no progress: a Kafka call that never returns (librdkafka #5456 reproduced by a test
wrapper) ends the process, which the worker restarts; a process stalled outside any Kafka call is reported not
ready (/readyz 503) after CXPULSE_STALL_SECONDS and killed and restarted after CXPULSE_STALL_RESTART_SECONDS.
Nothing is lost either way: the results equal replay, the DLQ holds each invalid event once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.faults.test_broker_faults import readyz
from tests.support import RunningBroker, free_ports, stop_process
from tests.workers import (
    assert_dead_letters_once,
    converge,
    expected_results,
    make_pipeline,
    mixed_events,
    produce,
    running_worker,
    scrape,
    start_worker,
    stop_worker,
    wait_for,
)

FLAKY_WORKER = [sys.executable, "-m", "tests.integration.flaky_worker"]


def test_a_kafka_call_that_never_returns_ends_the_process_and_loses_nothing(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, settings.pane_seconds)
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    marker = tmp_path / "hung-once"
    with running_worker(
        pipeline, log, metrics_port=port, command=FLAKY_WORKER, CXPULSE_TEST_HOTPATH_HANG=str(marker)
    ) as worker:
        produce(settings, source)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        assert marker.exists()  # the first transaction did hang
        assert "send_offsets_to_transaction has not returned for" in log.read_text()
        assert scrape(port)['cxpulse_worker_process_restarts_total{process="hotpath-0"}'] == 1
        stop_worker(worker, log)


def test_a_stalled_process_is_not_ready_then_restarted_and_loses_nothing(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path, stall_seconds=3.0, stall_restart_seconds=15.0)
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, settings.pane_seconds)
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    marker = tmp_path / "stalled-once"
    with running_worker(
        pipeline, log, metrics_port=port, command=FLAKY_WORKER, CXPULSE_TEST_HOTPATH_STALL=str(marker)
    ) as worker:
        wait_for(lambda: readyz(port) == 200, "the worker ready", log)
        produce(settings, source)
        wait_for(lambda: readyz(port) == 503, "/readyz 503 while the hot path is stalled", log, timeout=30)
        wait_for(
            lambda: scrape(port).get('cxpulse_worker_stall_restarts_total{process="hotpath-0"}') == 1,
            "the stalled hot path restarted",
            log,
            timeout=60,
        )
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        wait_for(lambda: readyz(port) == 200, "ready again", log)
        assert "made no progress for" in log.read_text()
        stop_worker(worker, log)


def test_two_workers_with_the_same_worker_id_are_refused(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """A second live worker under the same CXPULSE_WORKER_ID (the same transactional.ids) fences the first; the
    first takes its id back, and is fenced again before it could commit anything: two owners, not a broker
    fault.  One of them stops with exit 1 and says so, instead of the two fencing each other forever."""
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [
        start_worker(pipeline, log, data_dir=tmp_path / name, CXPULSE_WORKER_ID="same")
        for name, log in zip(("a", "b"), logs, strict=True)
    ]
    try:
        produce(settings, source)
        deadline = time.monotonic() + 120
        while all(w.poll() is None for w in workers) and time.monotonic() < deadline:
            produce(settings, source)  # keep both busy (duplicates are dropped: nothing counts twice)
        stopped = [(w, log) for w, log in zip(workers, logs, strict=True) if w.poll() is not None]
        assert stopped, "both workers still running after 120 s"
        worker, log = stopped[0]
        assert worker.wait() == 1
        assert "two workers with the same CXPULSE_WORKER_ID?" in log.read_text()
    finally:
        for worker in workers:
            stop_process(worker)


def test_a_process_that_keeps_dying_stops_the_worker() -> None:
    """Five deaths within two minutes (Kafka reachable) and the worker gives up with exit 1, naming the process;
    deaths while Kafka is away do not count."""
    from streams.config import Settings
    from streams.worker import supervisor as sv

    boss = sv.Supervisor(Settings(clickhouse_url=""), "id", "warn", {}, roles=("hotpath",))
    child = boss.children[0]

    class Dead:
        pid = 1

        def poll(self) -> int:
            return 1

    now = [1000.0]
    started: list[str] = []
    boss.start = lambda c: (started.append(c.name), setattr(c, "proc", Dead()))  # type: ignore[method-assign]
    sv_time = sv.time.monotonic
    sv.time.monotonic = lambda: now[0]  # type: ignore[assignment]
    try:
        boss.kafka_up = lambda: False  # type: ignore[method-assign]  # away: deaths are the outage's
        for _ in range(8):
            child.proc = Dead()  # type: ignore[assignment]
            boss.watch(child)  # the supervisor's step, driven by hand
            now[0] += 5
        assert boss.failure is None and not child.restarts
        boss.kafka_up = lambda: True  # type: ignore[method-assign]
        for _ in range(6):
            child.proc = Dead()  # type: ignore[assignment]
            boss.watch(child)
            now[0] += 5
        assert boss.failure is not None and "hotpath-0 exited with 1, the 6th time within 120 s" in boss.failure
    finally:
        sv.time.monotonic = sv_time  # type: ignore[assignment]
