"""Detractor follow-ups: which answers are selected, what a record carries, and the rate limit."""

from __future__ import annotations

import json

import pytest

from streams.core.followups import TokenBucket, encode, select
from streams.core.validate import validate_batch
from tests.support import event

pytestmark = pytest.mark.unit


def answers(*events: dict) -> tuple[list, list[dict]]:
    valid, dead = validate_batch(list(events))
    assert not dead
    return valid, list(events)


def test_detractors_with_a_comment_or_a_customer_are_selected_with_their_fields() -> None:
    counted, records = answers(
        event(event_id="d1", metric="NPS", score=3, customer_id="c1", agent_id="a7", team="t2", reason_codes=["x"]),
        event(event_id="d2", metric="NLS", score=6, comment="never again"),
        event(event_id="d3", metric="NPS", score=2),  # nobody to call back
        event(event_id="p1", metric="NPS", score=9, customer_id="c2", comment="great"),  # a promoter
        event(event_id="s1", metric="CSAT", score=1, customer_id="c3", comment="bad"),  # not NPS/NLS
        event(event_id="d4", metric="NPS", score=4, scale_min=0, scale_max=10, customer_id="c4", interaction_id="i4"),
    )
    picked = select(counted, records)
    assert [f["event_id"] for f in picked] == ["d1", "d2", "d4"]
    first = picked[0]
    assert first == {
        "event_id": "d1",
        "occurred_at": 1_700_000_000_000,
        "channel": "phone",
        "journey": "billing",
        "touchpoint": None,
        "metric": "NPS",
        "score": 3,
        "customer_id": "c1",
        "interaction_id": None,
        "agent_id": "a7",
        "team": "t2",
        "reason_codes": ["x"],
        "comment": None,
    }
    assert picked[1]["comment"] == "never again" and picked[2]["interaction_id"] == "i4"
    key, value = encode(picked[1])
    assert key == b"d2" and json.loads(value) == picked[1]  # keyed by customer, else by event
    assert encode(first)[0] == b"c1"


def test_only_counted_answers_are_selected() -> None:
    """select() gets the batch's counted answers: a duplicate (not counted) gives no second follow-up."""
    counted, records = answers(event(event_id="d1", metric="NPS", score=0, customer_id="c1"))
    assert len(select(counted, [*records, *records])) == 1
    assert select([], records) == []


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(60, now_s=0.0)
    assert bucket.take(100, 0.0) == 60  # a full minute's burst
    assert bucket.take(10, 0.5) == 0  # half a token back
    assert bucket.take(10, 5.5) == 5  # one a second
    assert bucket.take(1000, 1000.0) == 60  # never more than the burst
    off = TokenBucket(0, now_s=0.0)
    assert off.take(5, 100.0) == 0
