"""The transactor says a producer was fenced however librdkafka tells it: the fatal error raised by a call, or a
produce() that only says "Local: Fatal error" with the fenced error queued for the next poll (two workers under one
worker id were fenced that way and never told so: they took turns for minutes, CI)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from streams.agents.health import CallGuard
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings
from streams.worker.transactor import ProducerLostError, Recovery, TransactionAbortedError, Transactor

FENCED = KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))
REFUSED = KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error"))


class FakeProducer:
    """A transactional producer whose produce() fails with ``on_produce``; its next poll raises ``on_poll``."""

    def __init__(self, on_produce: KafkaException, on_poll: KafkaException | None) -> None:
        self.on_produce, self.on_poll = on_produce, on_poll

    def begin_transaction(self) -> None:
        pass

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise self.on_produce

    def poll(self, timeout: float) -> int:
        if self.on_poll is not None:
            raised, self.on_poll = self.on_poll, None
            raise raised
        return 0


def transactor(producer: FakeProducer) -> Transactor:
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    out = Transactor(settings, "hotpath-0", "app-hotpath-x-0", CallGuard("test"), WorkerMetrics(CollectorRegistry()),
                     Recovery(), lambda: False)  # fmt: skip
    out.producer = producer  # type: ignore[assignment]
    return out


def run(t: Transactor) -> None:
    t.transact(lambda: t.produce("topic", b"v", None, 0) or 1, [], None)


def test_a_produce_refused_after_a_fence_says_fenced() -> None:
    t = transactor(FakeProducer(REFUSED, FENCED))
    with pytest.raises(ProducerLostError) as lost:
        run(t)
    assert lost.value.fenced and "fenced" in str(lost.value)


def test_a_fence_raised_by_the_call_itself_says_fenced() -> None:
    with pytest.raises(ProducerLostError) as lost:
        run(transactor(FakeProducer(FENCED, None)))
    assert lost.value.fenced


def test_a_producer_lost_for_an_unknown_reason_is_lost_but_not_fenced_and_other_errors_abort() -> None:
    with pytest.raises(ProducerLostError) as lost:
        run(transactor(FakeProducer(REFUSED, None)))
    assert not lost.value.fenced
    with pytest.raises(TransactionAbortedError):
        run(transactor(FakeProducer(KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")), None)))
