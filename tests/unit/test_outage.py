"""The outage log: a flood of client connection errors becomes one line when it starts and one when it ends."""

from __future__ import annotations

import logging

import pytest

from streams import outage as streams_outage
from streams.outage import OutageLog, bootstrap_addresses


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


REFUSED = "FAIL [x#producer-1] 127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"


def test_an_outage_is_two_lines_however_many_attempts(caplog: pytest.LogCaptureFixture) -> None:
    up = [False]
    clock = Clock()
    outage = OutageLog(lambda: up[0], clock)
    with caplog.at_level(logging.WARNING, logger="cxpulse.outage"):
        written = [outage.filter(record("cxpulse.kafka", REFUSED)) for _ in range(500)]
        written += [outage.filter(record("aiokafka.conn", "Unable connect to node with id 1")) for _ in range(300)]
        outage.check()  # the brokers do not answer: confirmed
        clock.now += 12.5
        outage.check()  # still away: nothing more
        up[0] = True
        outage.check()  # back
    assert not any(written)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Kafka connection lost (cxpulse.kafka: FAIL")
    assert lines[1] == (
        "Kafka connection back after 12.5 s (800 failed connection attempts, 800 client warnings and errors not "
        "written)"
    )
    assert outage.outages == 1 and not outage.active


def test_a_failure_the_probe_does_not_confirm_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    outage = OutageLog(lambda: True, Clock())
    with caplog.at_level(logging.WARNING, logger="cxpulse.outage"):
        assert outage.filter(record("cxpulse.kafka", REFUSED)) is False
        outage.check()
    assert caplog.records == [] and not outage.active and outage.outages == 0


def test_other_records_pass_outside_an_outage_and_clients_are_held_during_one() -> None:
    outage = OutageLog(lambda: False, Clock())
    assert outage.filter(record("cxpulse.hotpath", "a batch failed")) is True  # not a client: always written
    assert outage.filter(record("aiokafka", "Heartbeat failed for group x", logging.WARNING)) is True
    assert outage.filter(record("aiokafka.conn", "debug chatter", logging.DEBUG)) is True
    assert outage.filter(record("faust.transport", REFUSED)) is False  # starts an outage
    assert outage.filter(record("aiokafka", "Heartbeat failed for group x", logging.WARNING)) is False
    assert outage.filter(record("cxpulse.hotpath", "a batch failed")) is True
    outage.check()
    assert outage.active and outage.seconds() == 0.0


def test_seconds_counts_a_confirmed_outage_only() -> None:
    clock = Clock()
    outage = OutageLog(lambda: False, clock)
    outage.filter(record("cxpulse.kafka", REFUSED))
    clock.now += 5
    assert outage.seconds() == 0.0  # suspected, not confirmed yet
    outage.check()
    clock.now += 3
    assert outage.seconds() == 8.0


def test_bootstrap_addresses() -> None:
    assert bootstrap_addresses("a:1, b:2,[::1]:3,bad") == [("a", 1), ("b", 2), ("::1", 3)]


def test_coordinator_retries_right_after_an_outage_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """A restarted broker accepts connections before it has loaded its groups: aiokafka's three lines per heartbeat
    until it has (30 a second, seen in the fault suite) are counted for SETTLE_SECONDS and said in one line."""
    up = [False]
    clock = Clock()
    outage = OutageLog(lambda: up[0], clock)
    retries = [
        "Heartbeat failed for group g: coordinator (node 1) is either not started or not valid",
        "Marking the coordinator dead (node 1)for group g.",
        "Heartbeat session expired - marking coordinator dead",
    ]
    with caplog.at_level(logging.WARNING, logger="cxpulse.outage"):
        outage.filter(record("cxpulse.kafka", REFUSED))
        outage.check()  # confirmed
        up[0] = True
        outage.check()  # back
        written = [outage.filter(record("aiokafka.consumer.group_coordinator", m)) for m in retries * 10]
        assert outage.filter(record("aiokafka", "Heartbeat failed for group g", logging.WARNING)) is True  # other
        clock.now += streams_outage.SETTLE_SECONDS - 0.1
        outage.check()  # still settling: nothing yet
        assert len(caplog.records) == 2
        clock.now += 0.2
        outage.check()
        late = outage.filter(record("aiokafka.consumer.group_coordinator", retries[0]))
    assert not any(written) and late is True  # after the settling a coordinator retry is written again
    lines = [r.getMessage() for r in caplog.records]
    assert lines[2] == (
        "Kafka's group coordinators took their groups back: 30 client retries in the 5 s after the outage not written"
    )
    assert len(lines) == 3


def test_coordinator_retries_without_an_outage_are_written() -> None:
    outage = OutageLog(lambda: True, Clock())
    message = "Heartbeat failed for group g: coordinator (node 1) is either not started or not valid"
    assert outage.filter(record("aiokafka.consumer.group_coordinator", message, logging.WARNING)) is True


class Wake:
    """The watcher's event, recording how long each rest would wait."""

    def __init__(self) -> None:
        self.flag = False
        self.waits: list[float] = []

    def set(self) -> None:
        self.flag = True

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.flag


def test_the_watcher_rests_until_an_outage_is_suspected_and_probes_while_kafka_is_away() -> None:
    """No poll: outside an outage the watcher waits on its event (WATCH_SECONDS at most, to attach handlers added
    later, less when a settling ends sooner), and the first connection failure sets it; during an outage it probes
    every PROBE_SECONDS."""
    up = [False]
    clock = Clock()
    outage = OutageLog(lambda: up[0], clock)
    wake = outage.wake = Wake()  # type: ignore[assignment]
    outage.rest()
    assert wake.waits == [streams_outage.WATCH_SECONDS] and not wake.flag
    assert outage.filter(record("cxpulse.kafka", REFUSED)) is False
    assert wake.flag  # suspected: the rest in progress ends at once
    outage.filter(record("cxpulse.kafka", REFUSED))
    outage.check()  # confirmed
    outage.rest()
    assert wake.waits[-1] == streams_outage.PROBE_SECONDS
    up[0] = True
    outage.check()  # back: a settling of SETTLE_SECONDS starts
    clock.now += streams_outage.SETTLE_SECONDS - 0.25
    outage.rest()
    assert wake.waits[-1] == pytest.approx(0.25)
