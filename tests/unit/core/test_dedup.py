"""De-duplication: the first event with an id counts; memory is bounded by expiring old hours."""

from __future__ import annotations

from streams.core.dedup import BUCKET_MS, Deduplicator, bucket_for_retention
from tests.support import fb


def test_first_event_with_an_id_wins() -> None:
    dedup = Deduplicator()
    events = [fb("CES", 1, 1, 7, event_id="a"), fb("CES", 7, 1, 7, event_id="a"), fb("CES", 2, 1, 7, event_id="b")]
    unique, duplicates = dedup.first_seen(events)
    assert [(e.event_id, e.score) for e in unique] == [("a", 1), ("b", 2)]
    assert duplicates == 1
    again, duplicates = dedup.first_seen([fb("CES", 3, 1, 7, event_id="b", t=5 * BUCKET_MS)])
    assert again == [] and duplicates == 1


def test_expiry_forgets_whole_old_hours_only() -> None:
    dedup = Deduplicator()
    dedup.first_seen([fb("CES", 1, 1, 7, event_id=f"old-{i}", t=i) for i in range(100)])
    dedup.first_seen([fb("CES", 1, 1, 7, event_id="new", t=3 * BUCKET_MS)])
    assert dedup.expire(older_than_ms=BUCKET_MS - 1) == 0  # the first hour is not over yet
    assert dedup.expire(older_than_ms=2 * BUCKET_MS) == 100
    assert len(dedup) == 1
    unique, _ = dedup.first_seen([fb("CES", 1, 1, 7, event_id="new", t=3 * BUCKET_MS)])
    assert unique == []


def test_ids_restored_from_a_changelog_count_as_seen_and_expire_with_their_bucket() -> None:
    counted = Deduplicator(bucket_ms=1000)
    unique, _ = counted.first_seen([fb("CES", 1, 1, 7, event_id=i, t=t) for i, t in (("a", 10), ("b", 1500))])
    entry = counted.buckets(unique)
    assert entry == {0: ["a"], 1000: ["b"]}
    restored = Deduplicator(bucket_ms=1000)
    for bucket, ids in entry.items():
        restored.remember(bucket, ids)
    again, duplicates = restored.first_seen(
        [fb("CES", 1, 1, 7, event_id="a"), fb("CES", 1, 1, 7, event_id="c", t=1500)]
    )
    assert [e.event_id for e in again] == ["c"] and duplicates == 1
    assert restored.expire(older_than_ms=1000) == 1  # "a"'s bucket [0, 1000) is over
    assert len(restored) == 2


def test_bucket_length_follows_the_retention() -> None:
    assert bucket_for_retention(7 * 86_400_000) == BUCKET_MS
    assert bucket_for_retention(3000) == 1000
    assert bucket_for_retention(3_600_000) == 150_000
