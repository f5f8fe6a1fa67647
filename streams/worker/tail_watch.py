"""When an agent reads back the tail of a partition: the tail check shared by merge and the journey agent.

A message the consumer skipped in the middle of a partition shows itself by the next one (its offset range does
not follow on); one skipped at the *end* has no next message. So both agents compare, every
``TAIL_CHECK_SECONDS``, how far they got with how far the partition goes, and read the difference back. Reading
back too early costs dearly: in a backlog a partition waits its turn for minutes, and a read-back of its whole lag
is then read twice (``make bench-state --answers 3000000``: 164-220 partial messages in merge, a 16 MB read-back
that held the journeys process's event loop 40 s). :class:`TailWatch` decides when to wait:

- while the consumer has not handed the partition's end over yet (it is on its way there), up to
  ``TAIL_WAIT_CHECKS`` checks (a safety net: a consumer that stopped fetching is the stall watch's);
- while the agent is busy with other batches, up to ``TAIL_DEFER_CHECKS`` checks, so that a skip at the end is read
  back even under load.
"""

from __future__ import annotations

import time

TAIL_CHECK_SECONDS = 5.0  # how often a partition's tail is compared with how far the agent got
TAIL_DEFER_CHECKS = 6  # while other batches still come, a read-back is put off this many checks at most
TAIL_WAIT_CHECKS = 60  # while the consumer has not handed a partition's end over, at most this many
TRAILER = 2  # the last record and its transaction marker: an end this close is reached


class TailWatch:
    """The tail checks of one agent: when the next is due, and which read-backs to put off."""

    def __init__(self) -> None:
        self.checked_at = 0.0  # monotonic time of the last check
        self.deferred: dict[int, int] = {}  # partition -> checks its read-back was put off for

    def due(self, ready: bool = True) -> bool:
        """Whether a check is due (``TAIL_CHECK_SECONDS`` since the last, and the agent ``ready`` for one); if so,
        it is counted as made now."""
        now = time.monotonic()
        if not ready or now - self.checked_at < TAIL_CHECK_SECONDS:
            return False
        self.checked_at = now
        return True

    def put_off(self, partition: int, end: int, delivered: int | None, busy: bool) -> bool:
        """Whether the read-back of ``partition`` up to ``end`` waits for a later check: the consumer, which has
        ``delivered`` up to there (None: unknown), is still on its way to ``end``, or the agent is ``busy`` (each
        within its number of checks)."""
        on_its_way = delivered is not None and end - delivered > TRAILER
        checks = self.deferred.get(partition, 0)
        if (on_its_way and checks < TAIL_WAIT_CHECKS) or (busy and checks < TAIL_DEFER_CHECKS):
            self.deferred[partition] = checks + 1
            return True
        self.deferred.pop(partition, None)
        return False

    def moving(self, partition: int) -> None:
        """The agent is on ``partition`` again (caught up, or still moving): its count of checks starts over."""
        self.deferred.pop(partition, None)
