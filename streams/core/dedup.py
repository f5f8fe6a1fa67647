"""De-duplication by event_id with bounded memory (docs/contract.md section 2: the first event with an id counts).

The one rule, used by ``cxpulse replay`` and by the stream's hot path (one Deduplicator per source partition).
Ids are remembered together with the bucket (an hour by default) of their occurred_at;
:meth:`Deduplicator.expire` forgets the buckets older than the retention of pane state.  That is safe because
an event older than the retention is rejected as ``too_old`` before it reaches the de-duplicator, so a
forgotten id can never count twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from streams.core.validate import Feedback

BUCKET_MS = 3_600_000  # ids are expired an hour at a time


def bucket_for_retention(retention_ms: int) -> int:
    """The bucket length for a retention: an hour, or a 24th of a shorter retention (at least a second)."""
    return max(1000, min(BUCKET_MS, retention_ms // 24))


def ids_by_bucket(events: Iterable[Feedback], bucket_ms: int) -> dict[int, list[str]]:
    """The ids of ``events`` by the start of their expiry bucket (the seen-ids changelog entry of a batch)."""
    out: dict[int, list[str]] = {}
    for event in events:
        bucket = event.occurred_at - event.occurred_at % bucket_ms
        ids = out.get(bucket)
        if ids is None:
            out[bucket] = [event.event_id]
        else:
            ids.append(event.event_id)
    return out


class Dedup(Protocol):
    """What the batch step needs of one partition's de-duplication state: this module's in-memory
    Deduplicator, or the hot path's on-disk streams.worker.seen.SeenIds."""

    def __len__(self) -> int: ...

    def first_seen(self, events: Sequence[Feedback]) -> tuple[list[Feedback], int]: ...

    def buckets(self, events: Iterable[Feedback]) -> dict[int, list[str]]: ...

    def expire(self, older_than_ms: int) -> int: ...


class Deduplicator:
    """Remembers the event ids it has let through; drops later events with the same id."""

    def __init__(self, bucket_ms: int = BUCKET_MS) -> None:
        self._bucket_ms = bucket_ms
        self._bucket_of: dict[str, int] = {}
        self._ids_in: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self._bucket_of)

    @property
    def bucket_ms(self) -> int:
        return self._bucket_ms

    def remember(self, bucket: int, event_ids: Iterable[str]) -> None:
        """Remember ids counted elsewhere (a changelog being restored) under their bucket; first one wins."""
        seen = self._bucket_of
        fresh = [event_id for event_id in event_ids if event_id not in seen]
        for event_id in fresh:
            seen[event_id] = bucket
        if fresh:
            self._ids_in.setdefault(bucket, []).extend(fresh)

    def buckets(self, events: Iterable[Feedback]) -> dict[int, list[str]]:
        """The ids of ``events`` by their bucket: what a changelog entry records for a batch."""
        return ids_by_bucket(events, self._bucket_ms)

    def first_seen(self, events: Iterable[Feedback]) -> tuple[list[Feedback], int]:
        """The events whose id was not seen before (in order), and how many duplicates were dropped."""
        seen = self._bucket_of
        unique: list[Feedback] = []
        duplicates = 0
        bucket_ms = self._bucket_ms
        for event in events:
            event_id = event.event_id
            if event_id in seen:
                duplicates += 1
                continue
            bucket = event.occurred_at - event.occurred_at % bucket_ms
            seen[event_id] = bucket
            ids = self._ids_in.get(bucket)
            if ids is None:
                self._ids_in[bucket] = [event_id]
            else:
                ids.append(event_id)
            unique.append(event)
        return unique, duplicates

    def expire(self, older_than_ms: int) -> int:
        """Forget the ids of every bucket that ends at or before ``older_than_ms``; return how many."""
        forgotten = 0
        for bucket in [b for b in self._ids_in if b + self._bucket_ms <= older_than_ms]:
            for event_id in self._ids_in.pop(bucket):
                if self._bucket_of.get(event_id) == bucket:
                    del self._bucket_of[event_id]
                    forgotten += 1
        return forgotten
