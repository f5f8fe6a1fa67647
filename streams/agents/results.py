"""The one producer of a Faust process's output: results, alerts and table changelogs, through librdkafka.

Everything an agent writes while it handles a batch goes through :meth:`ResultsProducer.produce` (a full local
queue is waited out, never an error), and the batch is acked only after :meth:`ResultsProducer.flush` has seen
every message delivered: "flush or fail before ack", written once.  Faust's own producer sends one message at a
time (~50 us each, cProfile); a batch of pane updates is thousands.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Producer

from streams.agents.local_tables import LocalTables
from streams.kafka import Kafka, produce_waiting
from streams.kafka import producer as new_producer

LOG = logging.getLogger("cxpulse.results")
FLUSH_TIMEOUT_SECONDS = 60.0


class DeliveryError(RuntimeError):
    """Kafka did not take every message of a batch: the batch is not acked, and is handled again."""


class ResultsProducer:
    """A librdkafka producer with produce-with-retry and flush-or-fail (see the module docstring)."""

    def __init__(self, kafka: Kafka, local: LocalTables | None = None, **config: Any) -> None:
        self.local = local  # table changelog messages Kafka acknowledged go to their local copies
        self.queued = 0  # messages queued so far (tables on disk note it with each write: streams.agents.stores)
        self.delivered_through = 0  # every message up to this count was delivered (by a flush that returned)
        self._failed = 0
        self._lock = threading.Lock()
        self.producer: Producer = new_producer(
            kafka, **{"linger.ms": 5, "compression.type": "lz4", **config, "on_delivery": self._delivered}
        )

    def _delivered(self, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            with self._lock:
                self._failed += 1
            LOG.error("a message to %s was not delivered: %s", message.topic(), error.str())
        elif self.local is not None and message.topic().endswith("-changelog"):
            self.local.delivered(message.topic(), message.partition(), message.offset(), message.key(), message.value())

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int = -1,
        timestamp: int = 0,
    ) -> None:
        """Queue one message (waiting while librdkafka's local queue is full)."""
        produce_waiting(self.producer, topic, value, key, partition=partition, timestamp=timestamp)
        self.queued += 1

    def flush_now(self) -> None:
        """Wait until Kafka has every message queued so far; DeliveryError when it did not take them all."""
        left = self.producer.flush(FLUSH_TIMEOUT_SECONDS)
        with self._lock:
            failed, self._failed = self._failed, 0
        if left or failed:
            raise DeliveryError(f"{left} messages still queued and {failed} not delivered after a flush")

    async def flush(self) -> None:
        """:meth:`flush_now` off the event loop (then every message queued before it was delivered)."""
        mark = self.queued
        await asyncio.to_thread(self.flush_now)
        self.delivered_through = max(self.delivered_through, mark)
