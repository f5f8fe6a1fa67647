"""Categories (docs/contract.md section 3), KPI values and moe95 (section 4), and the monoid laws of the state."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.aggregate import ZERO, State, aggregate_panes, contribution, kpi, merge, merge_all
from streams.core.validate import Feedback
from tests.support import feedbacks


@pytest.mark.parametrize(
    ("score", "promoter", "passive", "detractor"),
    [(0, 0, 0, 1), (6, 0, 0, 1), (7, 0, 1, 0), (8, 0, 1, 0), (9, 1, 0, 0), (10, 1, 0, 0)],
)
@pytest.mark.parametrize("metric", ["NPS", "NLS"])
def test_nps_categories(metric: str, score: int, promoter: int, passive: int, detractor: int) -> None:
    c = contribution(metric, score, 0, 10)
    assert (c.promoters, c.passives, c.detractors, c.positive, c.high_effort) == (
        promoter,
        passive,
        detractor,
        0,
        0,
    )


# top box: 4 * (s - lo) >= 3 * d
@pytest.mark.parametrize(
    ("lo", "hi", "positive_scores"),
    [(1, 5, {4, 5}), (1, 7, {6, 7}), (1, 10, {8, 9, 10}), (0, 10, {8, 9, 10})],
)
@pytest.mark.parametrize("metric", ["CSAT", "CAS"])
def test_top_box_boundaries(metric: str, lo: int, hi: int, positive_scores: set[int]) -> None:
    got = {s for s in range(lo, hi + 1) if contribution(metric, s, lo, hi).positive}
    assert got == positive_scores


# high effort: 2 * (s - lo) < d
@pytest.mark.parametrize(
    ("lo", "hi", "high_scores"),
    [(1, 7, {1, 2, 3}), (1, 5, {1, 2}), (1, 10, {1, 2, 3, 4, 5}), (0, 10, {0, 1, 2, 3, 4})],
)
def test_high_effort_boundaries(lo: int, hi: int, high_scores: set[int]) -> None:
    got = {s for s in range(lo, hi + 1) if contribution("CES", s, lo, hi).high_effort}
    assert got == high_scores


def test_nps_value_and_moe_by_hand() -> None:
    # 5 promoters, 3 passives, 2 detractors: NPS 30; p = .5, q = .2
    s = merge_all(
        [contribution("NPS", 10, 0, 10)] * 5 + [contribution("NPS", 7, 0, 10)] * 3 + [contribution("NPS", 3, 0, 10)] * 2
    )
    k = kpi("NPS", s)
    assert k.value == pytest.approx(30.0)
    assert k.moe95 == pytest.approx(196 * math.sqrt((0.5 + 0.2 - 0.09) / 10))
    assert k.moe95 == pytest.approx(48.4084, abs=1e-4)


def test_csat_value_and_moe_by_hand() -> None:
    s = merge_all([contribution("CSAT", 5, 1, 5)] * 3 + [contribution("CSAT", 2, 1, 5)])
    k = kpi("CSAT", s)
    assert k.value == pytest.approx(75.0)
    assert k.moe95 == pytest.approx(196 * math.sqrt(0.75 * 0.25 / 4))  # 42.4352
    assert k.moe95 == pytest.approx(42.4352, abs=1e-4)


def test_ces_value_and_moe_by_hand() -> None:
    # scores 1, 4, 7 on 1-7: x = 0, .5, 1; mean ease 1 + 6 * 1.5 / 3 = 4; v = (1.25 - 0.75) / 2 = .25
    s = merge_all([contribution("CES", v, 1, 7) for v in (1, 4, 7)])
    k = kpi("CES", s)
    assert k.value == pytest.approx(4.0)
    assert k.moe95 == pytest.approx(1.96 * 6 * math.sqrt(0.25 / 3))  # 3.3948
    assert k.high_effort_pct == pytest.approx(100 / 3)
    assert k.mean_normalized == pytest.approx(50.0)
    assert (s.sum_x, s.sum_x2) == (1.5, 1.25)


def test_moe_is_null_below_two() -> None:
    for metric, score, lo, hi in [("NPS", 9, 0, 10), ("CES", 3, 1, 7), ("CAS", 5, 1, 5)]:
        assert kpi(metric, contribution(metric, score, lo, hi)).moe95 is None


def test_ces_constant_answers_have_zero_moe() -> None:
    s = merge_all([contribution("CES", 6, 1, 7)] * 1000)
    assert kpi("CES", s).moe95 == 0.0


def test_sum_x_is_exact_on_default_scales() -> None:
    s = merge_all([contribution("CES", v, 1, 10) for v in range(1, 11)])
    assert s.sum_x == 5.0
    assert s.sx == 5 * 2520 * 10**6  # exactly 5 in fixed point


# --- properties -------------------------------------------------------------------------------------------


def states() -> st.SearchStrategy[State]:
    return st.lists(feedbacks(), max_size=30).map(
        lambda es: merge_all(contribution(e.metric, e.score, e.scale_min, e.scale_max) for e in es)
    )


@given(states(), states(), states())
def test_merge_is_associative_and_commutative_with_identity(a: State, b: State, c: State) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, b) == merge(b, a)
    assert merge(a, ZERO) == a == merge(ZERO, a)


@settings(max_examples=200)
@given(st.lists(feedbacks(), max_size=80), st.data())
def test_any_split_of_a_batch_merges_to_the_same_panes(events: list[Feedback], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    whole = aggregate_panes(events, 60_000)
    merged: dict[tuple[int, str, str, str], State] = {}
    for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
        for key, state in aggregate_panes(events[lo:hi], 60_000).items():
            merged[key] = merge(merged.get(key, ZERO), state)
    assert merged == whole
    assert sum(s.n for s in whole.values()) == len(events)


@given(st.lists(feedbacks(), min_size=1, max_size=80))
def test_values_stay_in_range(events: list[Feedback]) -> None:
    for (_, _, _, metric), state in aggregate_panes(events, 60_000).items():
        k = kpi(metric, state)
        assert 0.0 <= k.mean_normalized <= 100.0 + 1e-9
        if metric in ("NPS", "NLS"):
            assert -100.0 <= k.value <= 100.0
        elif metric == "CES":
            assert 1.0 - 1e-9 <= k.value <= 7.0 + 1e-9
            assert k.high_effort_pct is not None and 0.0 <= k.high_effort_pct <= 100.0
        else:
            assert 0.0 <= k.value <= 100.0
        assert k.moe95 is None or k.moe95 >= 0.0
        assert state.promoters + state.passives + state.detractors in (0, state.n)


def test_mentions_count_the_answers_of_each_group_that_mention_a_theme_by_hand() -> None:
    from streams.core.aggregate import aggregate_mentions, merge_mentions

    base = Feedback("e", 60_000, "s", "chat", "billing", "NPS", 9, 0, 10, "t", None, ())
    said = [
        base._replace(event_id="a", themes=("(any)", "waiting")),
        base._replace(event_id="b", themes=("(any)", "waiting", "transfers")),
        base._replace(event_id="c", themes=("(any)",)),
        base._replace(event_id="d"),  # no comment
        base._replace(event_id="e", occurred_at=120_001, themes=("(any)",)),  # the next pane
        base._replace(event_id="f", metric="CES", score=2, scale_min=1, scale_max=7, themes=("(any)",)),
    ]
    assert aggregate_mentions(said, 60_000) == {
        (60_000, "chat", "billing", "NPS"): {"(any)": 3, "waiting": 2, "transfers": 1},
        (120_000, "chat", "billing", "NPS"): {"(any)": 1},
        (60_000, "chat", "billing", "CES"): {"(any)": 1},
    }
    halves = [aggregate_mentions(said[:2], 60_000), aggregate_mentions(said[2:], 60_000)]
    key = (60_000, "chat", "billing", "NPS")
    assert merge_mentions(halves[0][key], halves[1][key]) == {"(any)": 3, "waiting": 2, "transfers": 1}
