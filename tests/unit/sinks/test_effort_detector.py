"""The effort detector's clock: panes close in event time, once their answers are merged and applied."""

from __future__ import annotations

from sinks.effort_detector import EventClock


def test_nothing_closes_before_the_first_watermark_is_covered() -> None:
    clock = EventClock()
    assert clock.now(10_000, None, {0: 5}, {0: 5}) is None
    assert clock.now(10_000, 4_000, {0: 5}, {0: 5}) is None  # this watermark's results are noted next tick
    assert clock.now(11_000, 6_000, {0: 9}, {0: 9}) == 4_000


def test_a_backlog_waits_for_its_results_and_the_processing_clock_caps_it() -> None:
    clock = EventClock()
    clock.now(100_000, 50_000, {0: 0}, {0: 0})
    assert clock.now(100_000, 60_000, {0: 30, 1: 7}, {0: 10, 1: 7}) is None  # 50_000's results not applied yet
    assert clock.now(100_000, 99_000, {0: 40, 1: 7}, {0: 30, 1: 7}) == 50_000
    assert clock.now(100_000, 120_000, {0: 40, 1: 7}, {0: 40, 1: 7}) == 99_000
    assert clock.now(100_500, 130_000, {0: 40, 1: 7}, {0: 40, 1: 7}) == 100_500  # never ahead of the wall


def test_a_steady_load_never_stalls_it() -> None:
    """Results keep coming (the agent is always a few behind the end): each watermark still becomes safe one tick
    after the one that noted its ends."""
    clock = EventClock()
    closed = []
    for tick in range(10):
        end = 100 * (tick + 1)
        closed.append(clock.now(1_000_000, 1_000 * tick, {0: end}, {0: end - 3 if tick else 0}))
    assert closed[-1] is not None and closed[-1] >= 7_000


def test_it_never_goes_back() -> None:
    clock = EventClock()
    clock.now(100_000, 50_000, {}, {})
    clock.now(100_000, 40_000, {}, {})
    assert clock.now(100_000, 40_000, {}, {}) == 50_000
