"""Panes, rolling windows and rollups (docs/contract.md section 5): all of them merges of pane states."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.aggregate import aggregate_panes, merge_all
from streams.core.validate import Feedback
from streams.core.windows import ALL, iso_utc, pane_results, pane_start, rolling_window, rollup, window_bounds
from tests.support import fb, feedbacks

MIN = 60_000


def test_pane_start_is_epoch_aligned() -> None:
    assert pane_start(1_700_000_039_999, MIN) == 1_699_999_980_000
    assert pane_start(1_700_000_040_000, MIN) == 1_700_000_040_000
    assert pane_start(0, MIN) == 0


def test_window_ends_at_the_current_pane_boundary() -> None:
    assert window_bounds(10 * MIN + 5, 5 * MIN, MIN) == (5 * MIN, 10 * MIN)


def test_rolling_window_merges_the_closed_panes_inside_it() -> None:
    events = [fb("CES", 7, 1, 7, t=t * MIN + 1) for t in range(12)]  # one answer per pane, panes 0..11
    panes = aggregate_panes(events, MIN)
    window = rolling_window(panes, now_ms=10 * MIN + 30_000, window_ms=5 * MIN, pane_ms=MIN)
    assert window[("phone", "billing", "CES")].n == 5  # panes 5..9; pane 10 is still open, 11 is the future


@given(st.lists(feedbacks(), min_size=1, max_size=60))
def test_rollup_equals_the_aggregate_of_the_union(events: list[Feedback]) -> None:
    window = rolling_window(aggregate_panes(events, MIN), now_ms=11 * MIN, window_ms=11 * MIN, pane_ms=MIN)
    everything = rollup(window, by_channel=False, by_journey=False)
    per_journey = rollup(window, by_channel=False, by_journey=True)
    for metric in {e.metric for e in events}:
        union = [e for e in events if e.metric == metric]
        relabelled = [e._replace(channel=ALL, journey=ALL, occurred_at=0) for e in union]
        expected = merge_all(aggregate_panes(relabelled, MIN).values())
        assert everything[(ALL, ALL, metric)] == expected
        for journey in {e.journey for e in union}:
            part = [e._replace(channel=ALL, occurred_at=0) for e in union if e.journey == journey]
            assert per_journey[(ALL, journey, metric)] == merge_all(aggregate_panes(part, MIN).values())


def test_pane_results_skip_empty_groups_and_are_sorted() -> None:
    events = [fb("NPS", 10, 0, 10, t=2 * MIN, channel="chat"), fb("NPS", 0, 0, 10, t=MIN)]
    results = pane_results(aggregate_panes(events, MIN), MIN)
    assert [(r.window_start, r.window_end, r.channel, r.value) for r in results] == [
        (MIN, 2 * MIN, "phone", -100.0),
        (2 * MIN, 3 * MIN, "chat", 100.0),
    ]
    assert all(r.moe95 is None and r.version == 1 for r in results)


def test_iso_utc_keeps_milliseconds() -> None:
    assert iso_utc(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
