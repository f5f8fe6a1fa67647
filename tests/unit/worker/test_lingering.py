"""The hot path's batch in the making (streams/worker/hotpath.py, Lingering): a small batch waits for more, a full
one goes at once, a revoked partition's messages are dropped (their next owner reads them again)."""

from __future__ import annotations

from typing import Any

from streams.worker.hotpath import BATCH_MESSAGES, Lingering


class Msg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._at = (topic, partition, offset)

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]


def batch(n: int, topic: str = "t", partition: int = 0) -> list[Any]:
    return [Msg(topic, partition, i) for i in range(n)]


def test_a_small_batch_waits_its_linger_a_full_one_goes_at_once() -> None:
    now = [100.0]
    pending = Lingering(min_batch=1000, linger=0.5, clock=lambda: now[0])
    assert not pending and pending.timeout(0.05) == 0.05 and pending.room() == BATCH_MESSAGES
    pending.add(batch(10))
    assert not pending.due() and pending.timeout(0.05) == 0.05
    now[0] = 100.48
    pending.add(batch(10))  # more, later: the linger counts from the first
    assert not pending.due() and abs(pending.timeout(0.05) - 0.02) < 1e-9 and pending.room() == BATCH_MESSAGES - 20
    now[0] = 100.5
    assert pending.due() and pending.timeout(0.05) == 0.0
    assert len(pending.take()) == 20 and not pending and not pending.due()
    pending.add(batch(1000))  # a high rate: due at once
    assert pending.due()
    pending.take()
    pending.add([])  # nothing consumed: no batch begins
    now[0] = 200.0
    assert not pending.due()


def test_a_revoked_partitions_messages_are_dropped_from_a_waiting_batch() -> None:
    pending = Lingering(min_batch=1000, linger=0.5, clock=lambda: 0.0)
    pending.add(batch(3, "feedback", 0) + batch(2, "feedback", 1) + batch(4, "routed", 0))
    pending.drop({("feedback", 0), ("routed", 0)})
    assert [(m.topic(), m.partition()) for m in pending.take()] == [("feedback", 1), ("feedback", 1)]
