"""Offset-gap arithmetic of the worker's repair path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.gaps import Record, complete, missing_ranges


def test_no_gap_when_the_batch_starts_at_the_expected_offset() -> None:
    assert missing_ranges([5, 6, 7], 5) == []


def test_a_skipped_head_and_holes_in_the_middle_are_found() -> None:
    assert missing_ranges([8, 9, 12, 13, 15], 5) == [(5, 8), (10, 12), (14, 15)]


def test_re_delivered_offsets_below_the_expected_one_are_not_gaps() -> None:
    assert missing_ranges([1, 2, 3, 7], 6) == [(6, 7)]


@given(st.sets(st.integers(0, 200), min_size=1), st.integers(0, 200))
def test_ranges_cover_exactly_the_missing_offsets(offsets: set[int], expected: int) -> None:
    ordered = sorted(offsets)
    covered = {o for start, end in missing_ranges(ordered, expected) for o in range(start, end)}
    assert covered == set(range(expected, max(ordered))) - offsets


def test_complete_orders_by_offset_and_keeps_one_record_per_offset() -> None:
    def rec(offset: int, value: bytes) -> Record:
        return Record("t", 0, offset, None, value)

    merged = complete([rec(9, b"faust"), rec(7, b"faust")], [rec(8, b"read"), rec(7, b"read")])
    assert [(r.offset, r.value) for r in merged] == [(7, b"faust"), (8, b"read"), (9, b"faust")]
