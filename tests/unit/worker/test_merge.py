"""The merge step: deltas absorbed once per source batch, chains followed, gaps found, results versioned."""

from __future__ import annotations

from typing import Any

from streams.core.aggregate import State, merge
from streams.worker.merge import Link, MergeStep, absorb, follow, merged_results
from streams.worker.records import (
    FROM_THE_START,
    PanePartial,
    PaneState,
    PartialBatch,
    Position,
    SourceRange,
    pane_state_from_table,
    pane_state_to_table,
)

PANE = 1_767_225_600_000
ONE = State(1, 0, 0, 0, 1, 0, 2_520_000_000, 6_350_400_000)  # a CSAT top-box answer (x = 1)
TWO = merge(ONE, ONE)


def batch(ranges: list[tuple[int, int, int]], panes: list[tuple[str, int, State]]) -> PartialBatch:
    """A partial message: source ranges, and (channel, source partition, CSAT state) deltas of one pane."""
    return PartialBatch(
        tuple(SourceRange(*r) for r in ranges),
        tuple(PanePartial(channel, "billing", PANE, source, {"CSAT": state}) for channel, source, state in panes),
    )


def test_follow_tells_next_repeat_gap_and_break() -> None:
    assert follow(None, SourceRange(0, FROM_THE_START, 10)) is Link.NEXT
    assert follow(None, SourceRange(0, 10, 20)) is Link.GAP  # the partition's first message was not seen
    at = Position(20, 7)
    assert follow(at, SourceRange(0, 20, 30)) is Link.NEXT
    assert follow(at, SourceRange(0, 10, 20)) is Link.REPEAT
    assert follow(at, SourceRange(0, 25, 30)) is Link.GAP
    assert follow(at, SourceRange(0, 15, 30)) is Link.BREAK
    assert follow(at, SourceRange(0, FROM_THE_START, 30)) is Link.BREAK


def test_absorb_takes_a_batch_once() -> None:
    pane = PaneState()
    delta = PanePartial("chat", "billing", PANE, 3, {"CSAT": ONE})
    assert absorb(pane, delta, end=10)
    assert not absorb(pane, delta, end=10)  # delivered again
    assert not absorb(pane, delta, end=8)  # an older batch arriving late
    assert absorb(pane, delta, end=11)
    assert pane == PaneState({3: 11}, {"CSAT": TWO})
    assert pane_state_from_table(pane_state_to_table(pane)) == pane


def test_results_merge_sources_and_version_grows() -> None:
    pane = PaneState({0: 10, 1: 5}, {"CSAT": merge(ONE, TWO)})
    (result,) = merged_results("chat", "billing", PANE, 60_000, pane, ["CSAT"])
    assert (result.n, result.positive, result.value, result.version) == (3, 3, 100.0, 15)
    pane.ends[1] = 6
    assert merged_results("chat", "billing", PANE, 60_000, pane, ["CSAT"])[0].version == 16


def test_a_step_writes_each_pane_once_and_repeats_change_nothing() -> None:
    panes: dict[str, Any] = {}
    positions: dict[str, Any] = {}
    first = batch([(0, FROM_THE_START, 5), (1, FROM_THE_START, 3)], [("chat", 0, ONE), ("chat", 1, ONE)])
    second = batch([(0, 5, 9)], [("chat", 0, TWO)])
    step = MergeStep(2, 60_000, panes, positions)
    step.apply(first, 100)
    step.apply(second, 101)
    (result,) = step.finish()
    assert (result.n, result.version) == (4, 9 + 3)
    assert positions == {}  # not before the results are out
    step.advance()
    assert positions == {"2|0": [9, 101], "2|1": [3, 100]}
    written = dict(panes)
    again = MergeStep(2, 60_000, panes, positions)
    again.apply(first, 100)  # redelivered after a crash
    again.apply(second, 101)
    assert again.finish() == [result]  # the same result again (its first emission may have been lost)
    assert panes == written and again.breaks == 0


def test_a_skipped_message_is_found_and_read_back_from_the_last_one_followed() -> None:
    panes: dict[str, Any] = {}
    positions: dict[str, Any] = {}
    messages = [
        batch([(0, FROM_THE_START, 5)], [("chat", 0, ONE)]),
        batch([(0, 5, 9)], [("chat", 0, ONE)]),
        batch([(0, 9, 12)], [("chat", 0, ONE)]),
    ]
    step = MergeStep(0, 60_000, panes, positions)
    assert step.read_back_from(messages[0]) is None
    step.apply(messages[0], 40)
    step.finish()
    step.advance()
    assert step.read_back_from(messages[2]) == 41  # offset 41.. was skipped
    step.apply(messages[1], 43)  # read back
    assert step.read_back_from(messages[2]) is None
    step.apply(messages[2], 45)
    assert step.finish()[0].n == 3 and step.breaks == 0
    step.advance()
    assert positions == {"0|0": [12, 45]}
    fresh = MergeStep(1, 60_000, {}, {})
    assert fresh.read_back_from(messages[1]) == 0  # nothing followed yet: from the start of the partition


def test_a_range_that_never_links_is_counted_and_logged() -> None:
    step = MergeStep(0, 60_000, {}, {})
    step.apply(batch([(0, 20, 30)], [("chat", 0, ONE)]), 7)
    assert step.breaks == 1
    assert step.finish()[0].n == 1  # counted as it is: losing it would be worse


def test_deltas_for_expired_panes_are_dropped() -> None:
    step = MergeStep(0, 60_000, {}, {}, ignore_before=PANE + 60_000)
    step.apply(batch([(0, FROM_THE_START, 2)], [("chat", 0, ONE)]), 0)
    assert step.finish() == [] and step.stale == 1
