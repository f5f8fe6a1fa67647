"""The tail check's timing and deferral, alone (streams.worker.tail_watch), on a fake clock."""

from __future__ import annotations

import pytest

from streams.worker import tail_watch
from streams.worker.tail_watch import TAIL_CHECK_SECONDS, TAIL_DEFER_CHECKS, TAIL_WAIT_CHECKS, TailWatch


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(tail_watch.time, "monotonic", lambda: now[0])
    return now


def test_a_check_is_due_every_interval_and_only_when_the_agent_is_ready(clock: list[float]) -> None:
    watch = TailWatch()
    assert watch.due() and not watch.due()  # made now: the next one an interval later
    clock[0] += TAIL_CHECK_SECONDS
    assert not watch.due(ready=False)  # not ready: not counted as made either
    assert watch.due(ready=True)


def test_a_read_back_waits_while_the_consumer_is_on_its_way_to_the_end_then_is_made() -> None:
    watch = TailWatch()
    waits = 0
    while watch.put_off(3, end=100, delivered=40, busy=False):
        waits += 1
    assert waits == TAIL_WAIT_CHECKS  # a safety net: a consumer that never gets there does not hold it forever
    assert not watch.put_off(3, end=100, delivered=98, busy=False)  # the last record and its marker: reached


def test_a_busy_agent_puts_a_read_back_off_a_few_checks_and_starts_over_when_it_moves() -> None:
    watch = TailWatch()
    assert [watch.put_off(0, end=10, delivered=None, busy=True) for _ in range(TAIL_DEFER_CHECKS + 1)] == [
        *[True] * TAIL_DEFER_CHECKS,
        False,
    ]
    watch.put_off(0, end=10, delivered=None, busy=True)  # counted from zero again after the read-back
    assert watch.deferred == {0: 1}
    watch.moving(0)
    assert watch.deferred == {} and not watch.put_off(1, end=10, delivered=None, busy=False)
