"""Validation reasons of docs/contract.md section 2, one by one, and label normalisation."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import feedback_from_json
from streams.core.validate import Clock, Feedback, normalise_label, validate_batch, validate_record
from tests.support import event

NOW = 1_700_000_000_000
CLOCK = Clock(now_ms=NOW, future_tolerance_ms=300_000, retention_ms=7 * 86_400_000)


def reason_of(**overrides: Any) -> str | None:
    checked = validate_record(event(**{"occurred_at": NOW, **overrides}), CLOCK)
    return None if isinstance(checked, Feedback) else checked[0]


def test_valid_event_is_normalised_with_default_scale() -> None:
    checked = validate_record(event(channel="  Live   Chat ", journey="Billing", metric="CSAT", score=4))
    assert isinstance(checked, Feedback)
    assert (checked.channel, checked.journey, checked.scale_min, checked.scale_max) == (
        "live_chat",
        "billing",
        1,
        5,
    )


_STRINGS = ["event_id", "source", "channel", "journey", "metric"]


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, None) for f in [*_STRINGS, "occurred_at", "score"]] + [(f, "") for f in _STRINGS],
)
def test_missing_field(field: str, value: object) -> None:
    assert reason_of(**{field: value}) == "missing_field"


def test_whitespace_only_required_string_is_missing() -> None:
    assert reason_of(channel="   ") == "missing_field"


@pytest.mark.parametrize("metric", ["nps", "CSI", "EFFORT"])
def test_bad_metric(metric: str) -> None:
    assert reason_of(metric=metric) == "bad_metric"


@pytest.mark.parametrize(
    ("metric", "lo", "hi"),
    [
        ("CES", 5, 5),  # lo >= hi
        ("CES", 7, 1),
        ("CSAT", 1, 2),  # hi - lo < 2
        ("CSAT", -1, 5),  # lo < 0
        ("CAS", 0, 101),  # hi > 100
        ("NPS", 1, 10),  # NPS off 0-10
        ("NLS", 0, 5),
        ("NPS", 0, 100),
    ],
)
def test_bad_scale(metric: str, lo: int, hi: int) -> None:
    assert reason_of(metric=metric, scale_min=lo, scale_max=hi, score=max(lo, 0)) == "bad_scale"


@pytest.mark.parametrize(("metric", "lo", "hi"), [("CES", 1, 3), ("CAS", 0, 100), ("NPS", 0, 10), ("CSAT", 1, 10)])
def test_scales_at_the_limits_are_fine(metric: str, lo: int, hi: int) -> None:
    assert reason_of(metric=metric, scale_min=lo, scale_max=hi, score=lo) is None


@pytest.mark.parametrize(("metric", "score"), [("CES", 0), ("CES", 8), ("NPS", 11), ("NPS", -1), ("CSAT", 6)])
def test_score_out_of_range(metric: str, score: int) -> None:
    assert reason_of(metric=metric, score=score) == "score_out_of_range"


@pytest.mark.parametrize("label", ["-phone", "ph/one", "télé", "x" * 65, "_x", "a,b"])
def test_bad_label(label: str) -> None:
    assert reason_of(channel=label) == "bad_label"
    assert reason_of(journey=label) == "bad_label"


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("Live Chat", "live_chat"), (" PHONE ", "phone"), ("a \t b\nc", "a_b_c"), ("x" * 64, "x" * 64)],
)
def test_label_normalisation(raw: str, norm: str) -> None:
    assert normalise_label(raw) == norm
    assert reason_of(channel=raw) is None


def test_future_timestamp_only_beyond_five_minutes() -> None:
    assert reason_of(occurred_at=NOW + 300_000) is None
    checked = validate_record(event(occurred_at=NOW + 300_001), CLOCK)
    assert not isinstance(checked, Feedback) and checked[0] == "future_timestamp"


def test_too_old_only_beyond_retention() -> None:
    assert validate_record(event(occurred_at=NOW - CLOCK.retention_ms), CLOCK).__class__ is Feedback
    checked = validate_record(event(occurred_at=NOW - CLOCK.retention_ms - 1), CLOCK)
    assert not isinstance(checked, Feedback) and checked[0] == "too_old"


def test_stream_only_checks_are_off_without_a_clock() -> None:
    assert isinstance(validate_record(event(occurred_at=NOW + 10**12)), Feedback)
    assert isinstance(validate_record(event(occurred_at=0)), Feedback)


def test_first_failing_check_wins() -> None:
    # missing_field before bad_metric before bad_scale before score_out_of_range before bad_label
    assert reason_of(event_id="", metric="X") == "missing_field"
    assert reason_of(metric="X", channel="-") == "bad_metric"
    assert reason_of(scale_min=3, scale_max=3, score=9) == "bad_scale"
    assert reason_of(score=99, channel="-") == "score_out_of_range"


def test_validate_batch_keeps_order_and_indexes_rejections() -> None:
    records = [event(event_id="a"), event(metric="X"), event(event_id="c"), event(score=99)]
    valid, rejected = validate_batch(records)
    assert [v.event_id for v in valid] == ["a", "c"]
    assert [(r.at, r.reason) for r in rejected] == [(1, "bad_metric"), (3, "score_out_of_range")]


def test_json_form_parses_iso_with_offset() -> None:
    record = feedback_from_json('{"event_id":"x","occurred_at":"2023-11-14T23:13:20+01:00","score":3}')
    assert record["occurred_at"] == 1_700_000_000_000
