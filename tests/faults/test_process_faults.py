"""A worker process that makes no progress: a Kafka call that never returns (librdkafka #5456 reproduced by a test
wrapper) ends the process, which the worker restarts; a process stalled outside any Kafka call is reported not
ready (/readyz 503) after CXPULSE_STALL_SECONDS and killed and restarted after CXPULSE_STALL_RESTART_SECONDS.
Nothing is lost either way: the results equal replay, the DLQ holds each invalid event once."""

from __future__ import annotations

import sys
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
    worker = start_worker(pipeline, log, metrics_port=port, command=FLAKY_WORKER, CXPULSE_TEST_HOTPATH_HANG=str(marker))
    try:
        produce(settings, source)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        assert marker.exists()  # the first transaction did hang
        assert "send_offsets_to_transaction has not returned for" in log.read_text()
        assert scrape(port)['cxpulse_worker_process_restarts_total{process="hotpath-0"}'] == 1
        stop_worker(worker, log)
    finally:
        stop_process(worker)


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
    worker = start_worker(
        pipeline, log, metrics_port=port, command=FLAKY_WORKER, CXPULSE_TEST_HOTPATH_STALL=str(marker)
    )
    try:
        wait_for(lambda: readyz(port) == 200, "the worker ready", log)
        produce(settings, source)
        wait_for(lambda: readyz(port) == 503, "/readyz 503 while the hot path is stalled", log, timeout=30)
        wait_for(
            lambda: scrape(port).get('cxpulse_worker_stall_restarts_total{process="hotpath-0"}') == 1,
            "the stalled hot path restarted",
            log,
            timeout=60,
        )
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        wait_for(lambda: readyz(port) == 200, "ready again", log)
        assert "made no progress for" in log.read_text()
        stop_worker(worker, log)
    finally:
        stop_process(worker)
