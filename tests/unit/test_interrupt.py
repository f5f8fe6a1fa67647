"""Ctrl-C while librdkafka runs a delivery report: the commands that produce (produce, import --to-kafka, simulate)
and read take SIGINT and SIGTERM as a flag (streams.commands.base.stop_on_signals) instead of a KeyboardInterrupt,
which, raised inside the callback, confluent-kafka loses: poll() raises SystemError "returned NULL without setting
an exception" (confluent-kafka-python#150; reproduced with 2.16.1: a `produce` interrupted in CI exited 1 with that
traceback instead of 130)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from streams.commands.base import stop_on_signals


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def interrupted_in_a_delivery_report(signum: int) -> None:
    """Poll a producer whose one message fails at once (no broker at 127.0.0.1:1); its delivery report sends
    ``signum`` to this process and runs on, so Python's handler runs inside the callback."""
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 10, "log_level": 0})
    reports: list[bool] = []

    def delivered(error: object, message: object) -> None:
        os.kill(os.getpid(), signum)
        reports.append(sum(range(1000)) > 0)  # bytecode after the signal: the handler runs here

    producer.produce("t", b"v", on_delivery=delivered)
    while not reports:
        producer.poll(0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_a_delivery_report_sets_the_flag_and_raises_nothing(handlers: None, signum: int) -> None:
    stop = stop_on_signals()
    try:
        interrupted_in_a_delivery_report(signum)
    except (KeyboardInterrupt, SystemError) as exc:  # what a raising handler gives: a failure, not an abort
        pytest.fail(f"the signal raised {exc!r}")
    assert stop.is_set()
