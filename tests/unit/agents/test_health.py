"""Ready means making progress: Progress, ProcessHealth, CallGuard and the /healthz, /readyz endpoints."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from streams.agents.health import CallGuard, FailureStreak, ProcessHealth, Progress, health_app


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_process_with_nothing_waiting_is_never_stalled() -> None:
    clock = Clock()
    progress = Progress(clock)
    clock.now = 1000
    assert progress.stalled() == 0.0


def test_a_batch_in_flight_stalls_until_it_is_done() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.begin()
    clock.now = 30
    assert progress.stalled() == 30
    progress.done()
    assert progress.stalled() == 0.0


def test_a_long_batch_that_advances_is_not_stalled_one_that_stops_is() -> None:
    """A batch of a backlog can take minutes: each part of it done is progress; the stall counts from the last."""
    clock = Clock()
    progress = Progress(clock)
    progress.begin()
    for _ in range(10):
        clock.now += 50
        progress.advanced()
    assert progress.stalled() == 0.0 and progress.busy_since == 0.0  # still in flight
    clock.now += 301
    assert progress.stalled() == 301


def test_lag_without_movement_stalls_and_movement_is_progress() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.observe("merge:0", position=10, lag=5)
    clock.now = 20
    progress.observe("merge:0", position=10, lag=7)
    assert progress.stalled() == 20
    clock.now = 25
    progress.observe("merge:0", position=12, lag=5)  # it moved: progress
    assert progress.stalled() == 0.0
    progress.forget("merge:0")
    clock.now = 99
    assert progress.stalled() == 0.0


def test_a_failed_batch_keeps_the_stall_running_while_input_waits() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.waiting = lambda: True
    progress.begin()
    clock.now = 5
    progress.failed()
    clock.now = 9
    assert progress.stalled() == 9


class Outage:
    def __init__(self, seconds: float) -> None:
        self.away = seconds

    def seconds(self) -> float:
        return self.away


def test_ready_needs_the_base_condition_progress_and_kafka() -> None:
    health = ProcessHealth(bound=10, outage=Outage(0))
    assert health.ready(True) and not health.ready(False)
    health.outage = Outage(11)
    assert not health.ready(True)


def test_the_guard_ends_the_process_when_a_call_overruns() -> None:
    exits: list[int] = []
    guard = CallGuard("test", exit=exits.append)
    with guard("send_offsets_to_transaction", 0.05):
        assert guard.overrun(time.monotonic()) is None
        problem = guard.overrun(time.monotonic() + 1)
        assert problem is not None and problem.startswith("send_offsets_to_transaction has not returned for")
    assert guard.overrun(time.monotonic() + 1) is None  # the call returned: nothing to bound
    guard.start()
    with guard("a call that hangs", 0.0):
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            time.sleep(0.05)  # the guard's thread looks every 0.5 s
    assert exits == [3]


def test_a_nested_guard_keeps_the_outer_bound() -> None:
    guard = CallGuard("test", exit=lambda code: None)
    with guard("outer", 100), guard("inner", 0.0):
        assert guard.overrun(time.monotonic() + 1) is None


def test_a_failure_streak_is_two_lines(caplog: Any) -> None:
    import logging

    log = logging.getLogger("test.streak")
    streak = FailureStreak(log, "reading offsets")
    with caplog.at_level(logging.WARNING, logger="test.streak"):
        for _ in range(5):
            streak.failed(TimeoutError())
        streak.succeeded()
        streak.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0] == "reading offsets failed (TimeoutError); retried quietly until it works again"
    assert lines[1].startswith("reading offsets works again after 5 failed tries in")


def _get(app: Any, path: str) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: status.append(s)))
    return status[0], body


def test_health_endpoints() -> None:
    registry = CollectorRegistry()
    Counter("cxpulse_test", "a counter", registry=registry).inc()
    ready = [False]
    page = lambda: generate_latest(registry)  # noqa: E731
    app = health_app(page, lambda: (ready[0], {"processes": {"hotpath-0": {"stalled_seconds": 61.0}}}))
    assert _get(app, "/healthz") == ("200 OK", b"alive\n")
    status, body = _get(app, "/readyz")
    assert status.startswith("503") and json.loads(body)["processes"]["hotpath-0"]["stalled_seconds"] == 61.0
    ready[0] = True
    assert _get(app, "/readyz")[0] == "200 OK"
    status, body = _get(app, "/metrics")
    assert status.startswith("200") and b"cxpulse_test_total 1.0" in body


def test_the_progress_page_holds_the_stall_and_readiness_gauges_only() -> None:
    """What the supervisor reads every 2 s: not the process's whole page (the merge process's KPI gauges)."""
    from streams.agents.metrics import WorkerMetrics

    metrics = WorkerMetrics(CollectorRegistry())
    metrics.process_stalled.labels("merge").set(3.0)
    metrics.process_ready.labels("merge").set(1.0)
    metrics.sink_errors.labels("prometheus").inc()
    app = health_app(metrics.page, lambda: (True, {}), metrics.progress_page)
    _, whole = _get(app, "/metrics")
    status, body = _get(app, "/progress")
    assert b"cxpulse_sink_errors_total" in whole and b"cxpulse_sink_errors_total" not in body
    assert status.startswith("200")
    assert b'cxpulse_worker_process_stalled_seconds{process="merge"} 3.0' in body
    assert b'cxpulse_worker_process_ready{process="merge"} 1.0' in body
