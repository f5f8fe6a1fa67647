"""A hot-path slot's transactional producer: one Kafka transaction per batch, and what keeps it usable.

- ``transactional.id`` is stable per slot (``<app>-hotpath-<worker id>-<slot>``), so a restarted slot fences its
  dead predecessor at once instead of waiting for its open transaction to time out.
- :meth:`Transactor.transact` runs one batch: begin, queue its messages, send the input offsets, commit (retriable
  errors retried for COMMIT_SECONDS); a failure is TransactionAbortedError (abort and read the batch again) or
  ProducerLostError (a producer in a fatal state: a new one with the same id takes over, :meth:`replace`).
- Every call into librdkafka is bounded from outside (streams.agents.health.CallGuard): a call that never returns
  (librdkafka #5456, #5511, seen after broker restarts) ends the process, the worker restarts it, and Kafka aborts
  the open transaction.

Used by streams.worker.hotpath (the loop) and streams.worker.seen_restore (which ends a transaction of ours that
the broker keeps open).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.agents.health import CallGuard
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings
from streams.errors import CxPulseError
from streams.kafka import produce_waiting
from streams.kafka import producer as new_producer
from streams.topics import PARTIALS_MAX_MESSAGE_BYTES

LOG = logging.getLogger("cxpulse.hotpath")
TRANSACTION_TIMEOUT_MS = 8_000  # below the session timeout (DESIGN.md, known traps)
KAFKA_TIMEOUT_SECONDS = 15.0  # one transaction call (send offsets, commit, abort), a committed-offsets lookup
COMMIT_SECONDS = 20.0  # a commit is retried (retriable errors) for at most this long, then the batch is aborted
PRODUCE_SECONDS = 30.0  # queueing one batch's messages (a full queue drains as deliveries time out: 8 s)
GUARD_MARGIN_SECONDS = 10.0  # a guarded call that overruns its own timeout by this much ends the process
REFENCE_SECONDS = 60.0  # fenced again this soon after a new producer, with no commit between: two owners
FENCES_OF_TWO_OWNERS = 3  # fenced this often within REFENCE_SECONDS, commits between or not: two owners
CAUSE_CHARS = 200  # of a failure's message kept for the line that says batches commit again


class FatalError(CxPulseError):
    """The slot cannot go on (fenced by another producer with its transactional.id, or a fatal Kafka error)."""


class TransactionAbortedError(CxPulseError):
    """The batch's transaction could not commit; it was aborted and the batch is read again."""


class ProducerLostError(CxPulseError):
    """The transactional producer is in a fatal state; a new one (same transactional.id) takes over."""

    def __init__(self, message: str, fenced: bool) -> None:
        super().__init__(message)
        self.fenced = fenced


def transactional_id(settings: Settings, worker_id: str, slot: int) -> str:
    """The stable transactional.id of a hot-path slot."""
    return f"{settings.app_id}-hotpath-{worker_id}-{slot}"


@dataclass
class Recovery:
    """A slot's failure state: what it must do before its next batch, and how long it has been failing."""

    failures: int = 0  # batches failed since the last commit
    failing_since: float = 0.0  # monotonic time of the first of them
    needs_rewind: bool = False  # a batch failed: read again from the committed offsets before going on
    needs_producer: bool = False  # the producer is lost: a new one before going on
    reinit_at: float = -REFENCE_SECONDS  # monotonic time of the last new producer
    committed_since_reinit: bool = True
    backoff: float = 0.0  # seconds slept after the last failure (doubles up to the slot's maximum)
    recovery_told: bool = False  # a recovery that failed outside an outage was logged (once, until batches commit)
    fences: list[float] = field(default_factory=list)  # monotonic times this slot's producer was fenced, recently
    causes: dict[str, tuple[int, str]] = field(default_factory=dict)  # failed since the last commit: kind -> (n, last)

    def failed(self, exc: BaseException) -> None:
        """Count a failed batch and what failed it (retries after the first log at DEBUG: the line that says
        batches commit again names what they were)."""
        if self.failures == 0:
            self.failing_since = time.monotonic()
        self.failures += 1
        kind = type(exc).__name__
        self.causes[kind] = (self.causes.get(kind, (0, ""))[0] + 1, str(exc)[:CAUSE_CHARS])

    def committed(self) -> str | None:
        """A batch committed: the failure state is reset (failures, the once-told recovery, the backoff, the
        causes); returns what the failures since the last commit were, for the line that says batches commit
        again (``N failed tries in X s ...: what_failed()``), or None when there were none."""
        told = None
        if self.failures:
            told = (
                f"after {self.failures} failed tries in {time.monotonic() - self.failing_since:.1f} s (each read "
                f"again from the committed offsets: nothing skipped): {self.what_failed()}"
            )
        self.failures = 0
        self.causes = {}
        self.recovery_told = False
        self.backoff = 0.0
        self.committed_since_reinit = True
        return told

    def what_failed(self) -> str:
        """The failures since the last commit by kind, with the last message of each: ``RuntimeError x3 (last:
        ...)``."""
        return "; ".join(f"{kind} x{n} (last: {last})" for kind, (n, last) in self.causes.items())

    def two_owners(self, now: float) -> bool:
        """Fenced (now) by another producer with this transactional.id: is that a second live owner?  Yes when it
        happens again right after this slot took over with no commit between, or FENCES_OF_TWO_OWNERS times within
        REFENCE_SECONDS even with commits between (two workers under one CXPULSE_WORKER_ID take turns)."""
        self.fences = [at for at in self.fences if now - at < REFENCE_SECONDS] + [now]
        right_after = now - self.reinit_at < REFENCE_SECONDS and not self.committed_since_reinit
        return right_after or len(self.fences) >= FENCES_OF_TWO_OWNERS


class Transactor:
    """The transactional producer of one hot-path slot (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        transactional_id: str,
        guard: CallGuard,
        metrics: WorkerMetrics,
        recovery: Recovery,
        stopping: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.name = name
        self.transactional_id = transactional_id
        self.guard = guard
        self.metrics = metrics
        self.recovery = recovery
        self.stopping = stopping
        self.fatal: KafkaError | None = None  # the fatal error of the current producer, told by its error_cb
        self.producer: Producer = self.new_producer()

    def new_producer(self) -> Producer:
        self.fatal = None
        return new_producer(
            self.settings.kafka,
            error_cb=self._on_error,
            **{
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": PARTIALS_MAX_MESSAGE_BYTES,
                "client.id": f"{self.settings.app_id}-{self.name}",
            },
        )

    def init(self) -> None:
        """Register the producer's transactional.id (fencing a dead predecessor), waiting while Kafka is away."""
        while True:
            try:
                with self.guard("init_transactions", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                    self.producer.init_transactions(KAFKA_TIMEOUT_SECONDS)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise FatalError(f"{self.name}: cannot initialise transactions: {error.str()}") from exc
                if self.stopping():
                    raise CxPulseError(f"{self.name}: stopped before transactions could start") from exc
                LOG.debug("%s: init_transactions: %s; retrying", self.name, error.str())
                self.sleep(1.0)

    def replace(self) -> None:
        """A new producer with the same transactional.id takes over from a lost one (its epoch fences the old)."""
        old, self.producer = self.producer, self.new_producer()
        with self.guard("closing the lost producer", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
            old.flush(0)
        self.recovery.needs_producer = False
        self.init()
        self.recovery.reinit_at = time.monotonic()
        self.recovery.committed_since_reinit = False
        self.metrics.producer_reinits.inc()
        LOG.warning("%s: a new transactional producer took over (%s)", self.name, self.transactional_id)

    def transact(self, write: Callable[[], int], offsets: list[TopicPartition], group: Any) -> int:
        """One batch's transaction: begin, ``write`` (queues its messages; returns what it reports back), send
        ``offsets`` for the consumer ``group``, commit.  TransactionAbortedError or ProducerLostError on failure."""
        try:
            with self.guard("producing a batch", PRODUCE_SECONDS + GUARD_MARGIN_SECONDS):
                self.producer.begin_transaction()
                written = write()
            with self.guard("send_offsets_to_transaction", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.producer.send_offsets_to_transaction(offsets, group, KAFKA_TIMEOUT_SECONDS)
            with self.guard("commit_transaction", COMMIT_SECONDS + KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.commit()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError._FATAL:  # produce() refused: the producer failed, and says why next
                error = self._why_fatal(error)
            if error.fatal() or error.code() == KafkaError._FATAL:
                fenced = error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
                raise ProducerLostError(self.fatal_message(error), fenced) from exc
            raise TransactionAbortedError(error.str()) from exc
        return written

    def _why_fatal(self, error: KafkaError) -> KafkaError:
        """The fatal error behind a produce() that said only "Local: Fatal error": librdkafka queues it as an event
        that the next poll raises (seen in the fault suite: two workers under one worker id, each fenced this way,
        were never told so and took turns for minutes), or that the error callback kept."""
        try:
            self.producer.poll(0)
        except KafkaException as exc:
            return exc.args[0]  # type: ignore[no-any-return]
        return self.fatal or error

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback: keep a fatal error (a fenced producer is told here first; produce() then
        only says "Local: Fatal error"); the rest is logged by librdkafka's own log lines."""
        if error.fatal():
            self.fatal = error

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        timestamp: int = 0,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queue one message of the open transaction."""
        produce_waiting(
            self.producer,
            topic,
            value,
            key,
            partition=partition,
            headers=headers,
            timestamp=timestamp,
            on_delivery=on_delivery,
        )

    def commit(self) -> None:
        """Commit the transaction, retrying retriable errors for at most COMMIT_SECONDS."""
        deadline = time.monotonic() + COMMIT_SECONDS
        attempt = 0
        while True:
            try:
                self.producer.commit_transaction(KAFKA_TIMEOUT_SECONDS)
                self.metrics.transactions.labels("committed").inc()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or time.monotonic() > deadline:
                    raise
                LOG.debug("%s: commit of a transaction failed (%s); retrying", self.name, error.str())
                self.sleep(min(5.0, 0.2 * 2**attempt))
                attempt += 1

    def fatal_message(self, error: KafkaError) -> str:
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            return f"{self.name}'s producer was fenced ({error.str()})"
        return f"{self.name}: fatal producer error: {error.str()}"

    def abort(self) -> None:
        """Abort the open transaction; one that cannot be aborted is left to a new producer (which aborts it)."""
        try:
            with self.guard("abort_transaction", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.producer.abort_transaction(KAFKA_TIMEOUT_SECONDS)
            self.metrics.transactions.labels("aborted").inc()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                self.recovery.needs_producer = True  # an abort cannot complete: a new producer aborts it for us
            elif error.code() != KafkaError._STATE:
                LOG.debug("%s: abort_transaction: %s; a new producer takes over", self.name, error.str())
                self.recovery.needs_producer = True

    def clear_pending_offsets(self, offsets: list[TopicPartition], group: Any) -> None:
        """A new producer, and one transaction that sends ``offsets`` for the ``group`` and is aborted: ends any
        transaction of our transactional.id the broker holds open, and its abort marker on the group's
        ``__consumer_offsets`` partition drops every offset of our producer id the group coordinator holds
        pending.  Aborted, it changes no committed offset (streams.worker.seen_restore says when it is needed)."""
        self.replace()
        try:
            with self.guard("clearing pending offsets", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.producer.begin_transaction()
                self.producer.send_offsets_to_transaction(offsets, group, KAFKA_TIMEOUT_SECONDS)
        except KafkaException as error:
            LOG.debug("%s: clearing pending offsets: %s (the abort still ends the transaction)", self.name, error)
        self.abort()

    def sleep(self, seconds: float) -> None:
        """Wait, serving the producer's delivery reports (a fatal producer error found here: a new producer)."""
        deadline = time.monotonic() + seconds
        while not self.stopping() and time.monotonic() < deadline:
            self.poll(min(0.1, seconds))

    def poll(self, seconds: float) -> None:
        """Serve the producer's callbacks; a fatal error raised there marks the producer lost (a new one takes
        over before the next batch)."""
        try:
            self.producer.poll(seconds)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            self.recovery.needs_producer = True
            time.sleep(seconds)
