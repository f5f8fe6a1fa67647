"""A hot-path slot that cannot recover after a failed batch while Kafka is up says so once, as a warning (it
committed nothing for minutes, silently, before); while Kafka is away the outage log speaks for it."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from streams.errors import CxPulseError
from streams.worker.hotpath import HotPath
from streams.worker.transactor import Recovery

recovered = HotPath._recovered  # noqa: SLF001 - the slot's recovery step, on a stand-in for the slot


def slot(failures: int, outage_active: bool | None) -> Any:
    """What HotPath._recovered uses of a slot: a rewind that fails ``failures`` times, then works."""
    left = [failures]

    def rewind() -> None:
        if left[0] > 0:
            left[0] -= 1
            raise CxPulseError("committed offsets: timed out")

    outage = None if outage_active is None else SimpleNamespace(active=outage_active)
    return SimpleNamespace(
        name="hotpath-0",
        recovery=Recovery(needs_rewind=True),
        transactor=SimpleNamespace(replace=lambda: None),
        outage=outage,
        _rewind=rewind,
        _back_off=lambda: None,
    )


@pytest.mark.parametrize("outage", [None, False])
def test_a_recovery_that_keeps_failing_with_kafka_up_warns_once(caplog: Any, outage: bool | None) -> None:
    hot = slot(3, outage)
    with caplog.at_level(logging.DEBUG, logger="cxpulse.hotpath"):
        tries = [recovered(hot) for _ in range(4)]
    assert tries == [False, False, False, True] and not hot.recovery.needs_rewind
    levels = [r.levelno for r in caplog.records if "recovery after a failed batch failed" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "committed offsets: timed out" in caplog.records[0].getMessage()


def test_while_kafka_is_away_the_outage_log_speaks_for_it(caplog: Any) -> None:
    hot = slot(2, True)
    with caplog.at_level(logging.DEBUG, logger="cxpulse.hotpath"):
        assert [recovered(hot) for _ in range(3)] == [False, False, True]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert not hot.recovery.recovery_told


def test_after_a_confirmed_outage_the_slot_takes_a_new_producer_once() -> None:
    """The producer that lived through an outage can hang in its first send_offsets_to_transaction
    (confluentinc/librdkafka#5511): once the outage log says Kafka is back, the next batch waits for a new one; not
    during the outage, not twice for one outage, not without one."""
    outage = SimpleNamespace(active=False, outages=0)
    hot = SimpleNamespace(outage=outage, outages_seen=0, recovery=Recovery())
    step = HotPath._after_an_outage  # noqa: SLF001
    step(hot)
    assert not hot.recovery.needs_producer  # no outage yet
    outage.active, outage.outages = True, 1
    step(hot)
    assert not hot.recovery.needs_producer  # still away: nothing to take over yet
    outage.active = False
    step(hot)
    assert hot.recovery.needs_producer and hot.outages_seen == 1
    hot.recovery.needs_producer = False  # (what Transactor.replace does)
    step(hot)
    assert not hot.recovery.needs_producer  # once per outage
    step(SimpleNamespace(outage=None, outages_seen=0, recovery=Recovery()))  # no outage log: nothing to do


def test_the_line_that_says_batches_commit_again_names_what_failed() -> None:
    """Only a slot's first failure is logged above DEBUG; the retries' causes are counted by kind, with the last
    message of each, for the line that says batches commit again, and forgotten after it."""
    recovery = Recovery()
    for exc in [RuntimeError("bad 1"), CxPulseError("send timed out"), RuntimeError("bad 2")]:
        recovery.failed(exc)
    assert recovery.failures == 3
    assert recovery.what_failed() == "RuntimeError x2 (last: bad 2); CxPulseError x1 (last: send timed out)"
    recovery.recovery_told, recovery.backoff, recovery.committed_since_reinit = True, 4.0, False
    told = recovery.committed()
    assert told is not None and told.startswith("after 3 failed tries in ")
    assert told.endswith("nothing skipped): RuntimeError x2 (last: bad 2); CxPulseError x1 (last: send timed out)")
    assert (recovery.failures, recovery.recovery_told, recovery.backoff) == (0, False, 0.0)
    assert recovery.committed_since_reinit and recovery.committed() is None  # nothing failed since
    recovery.failed(ValueError("x" * 500))
    assert recovery.what_failed() == f"ValueError x1 (last: {'x' * 200})"
