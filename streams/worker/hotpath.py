"""The hot path: ``cx.feedback`` in; dead letters, routed answers, partials and seen ids out; one Kafka transaction
per batch.

A librdkafka (confluent-kafka) loop, no Faust: ``consume(num_messages=...)`` hands over thousands of messages
at once, streams.worker.ingest turns them into what the batch must write, and one transaction carries it all
together with the input offsets (``send_offsets_to_transaction``).  A batch is therefore either entirely out
(dead letters, routed answers, partials, seen ids, offsets) or not at all: no offset-gap repair, no dead-letter
recall.

- One consumer reads the feedback topic and ``<app>-routed``: feedback messages are validated and routed by
  event id (the route step), routed ones de-duplicated and counted (the count step), so that every copy of an
  answer meets the same de-duplicator whatever partition it arrived on (streams.worker.ingest).

- ``transactional.id`` is stable per slot (``<app>-hotpath-<worker id>-<slot>``), so a restarted slot fences
  its dead predecessor at once instead of waiting for its open transaction to time out.
- The consumer group ``<app>-hotpath`` uses the cooperative-sticky assignor: a rebalance moves only the
  partitions that change owner, and only those are restored.
- De-duplication state is a streams.worker.seen.SeenIds per routed partition: fingerprints in sorted runs on
  local disk (``<data dir>/hotpath/<worker id>-<slot>/seen-ids/p<N>``) up to a checkpoint into the seen-ids
  changelog (same partition number), which a restore reads on from there, after the group's committed offsets
  are stable.  A rewind after a failed batch drops what the runs do not hold and reads that tail again.
- A batch that fails is aborted and read again from the committed offsets, its partitions' state restored,
  after a backoff: nothing is skipped.  A poison message cannot fail a batch: ingest dead-letters any bytes.
- Every blocking Kafka call has a bound (streams.agents.health.CallGuard): a call that never returns (librdkafka
  #5456, #5511, seen after broker restarts) ends the process, the worker restarts it, Kafka aborts its open
  transaction.  A producer in a fatal state (its transaction timed out on the broker during an outage, say) is
  replaced by a new one with the same ``transactional.id``.  Ready means making progress (health.Progress).

Run by ``cxpulse worker`` (streams.worker.supervisor) as ``python -m streams.worker.hotpath SLOT METRICS_PORT``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from schemas.codec import SchemaCatalog, catalog_for
from streams.agents.health import CallGuard, Progress, serve
from streams.agents.metrics import WorkerMetrics
from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings, load_settings
from streams.dedup import bucket_for_retention
from streams.errors import (
    EXIT_PERMANENT,
    BrokerError,
    ConfigurationError,
    CxPulseError,
    KafkaRefusedError,
    NotAuthorizedError,
    TopicMissingError,
)
from streams.followups import TokenBucket
from streams.followups import encode as encode_followup
from streams.kafka import DRAIN_POLL_SECONDS, Kafka
from streams.kafka import consumer as new_consumer
from streams.kafka import producer as new_producer
from streams.outage import OutageLog
from streams.topics import PARTIALS_MAX_MESSAGE_BYTES, TOPIC_WAIT_SECONDS, KafkaWait, describe_topics, internal_topics
from streams.validate import Clock
from streams.worker.ingest import BatchOut, Ingest, reasons
from streams.worker.records import (
    FROM_THE_START,
    THROUGH_HEADER,
    Routed,
    Through,
    decode_seen,
    encode_answers,
    encode_partials,
    encode_routed,
    encode_routed_through,
    encode_seen,
    encode_through,
)
from streams.worker.seen import Origin, SeenIds

LOG = logging.getLogger("cxpulse.hotpath")
PARTITION_BY_KEY = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks by key
ANSWERS_MESSAGE_BYTES = PARTIALS_MAX_MESSAGE_BYTES // 2  # room for framing and compression overhead
BATCH_MESSAGES = 10_000  # messages per consume() call and transaction
POLL_SECONDS = 0.05  # a batch waits at most this long to fill: the latency floor at low rates
SESSION_TIMEOUT_MS = 10_000  # a slot killed with -9 keeps its partitions this long
TRANSACTION_TIMEOUT_MS = 8_000  # below the session timeout (DESIGN.md, known traps)
KAFKA_TIMEOUT_SECONDS = 15.0  # one transaction call (send offsets, commit, abort), a committed-offsets lookup
COMMIT_SECONDS = 20.0  # a commit is retried (retriable errors) for at most this long, then the batch is aborted
PRODUCE_SECONDS = 30.0  # queueing one batch's messages (a full queue drains as deliveries time out: 8 s)
GUARD_MARGIN_SECONDS = 10.0  # a guarded call that overruns its own timeout by this much ends the process
REACH_SECONDS = 10.0  # reading metadata at start (Kafka away: tried again)
RESTORE_SECONDS = 120.0  # reading one assignment's seen ids back (retried while Kafka is away)
UNSTABLE_SECONDS = 30.0  # committed offsets unreadable this long in a restore: a new producer ends our transaction
REFENCE_SECONDS = 60.0  # fenced again this soon after a new producer, with no commit between: two owners
HOUSEKEEPING_SECONDS = 1.0  # expiry of seen ids and gauges, at most this often
GC_THRESHOLDS = (50_000, 20, 20)  # allocations before a gen-0 collection, gen-0 runs per gen-1, gen-1 per gen-2
BACKOFF_MAX_SECONDS = 30.0  # a failing batch is retried after 0.5 s, 1 s, 2 s, ... up to this


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


def changelog_ends(kafka: Kafka, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """Each partition's high watermark: its end, records of unfinished transactions included.

    Asked through a read_uncommitted client on purpose: librdkafka asks ListOffsets with the client's own
    isolation level (rdkafka_request.c, rd_kafka_ListOffsetsRequest), so a read_committed client gets the last
    stable offset, which stops short of every entry of a transaction whose markers are not written yet.  A
    restore that took that as the end (and the read_committed reader's end-of-partition, also at the last
    stable offset) missed the seen ids of a batch that had committed: its duplicates counted twice (seen in
    CI, 2026-12-02, after broker restarts)."""
    probe = new_consumer(kafka, f"{topic}-restore", **{"isolation.level": "read_uncommitted"})
    try:
        return {
            partition: probe.get_watermark_offsets(TopicPartition(topic, partition), KAFKA_TIMEOUT_SECONDS, False)[1]
            for partition in partitions
        }
    finally:
        probe.close()


def read_seen_tails(
    kafka: Kafka,
    topic: str,
    stores: dict[int, SeenIds],
    ends: dict[int, int],
    seconds: float = RESTORE_SECONDS,
    stuck_seconds: float = UNSTABLE_SECONDS,
) -> int:
    """Read the seen-ids changelog of each partition from its store's tail to ``ends`` (high watermarks, see
    :func:`changelog_ends`) into the store, committed entries only; return how many entries were read.

    A read_committed reader reaches the end of a partition at its last stable offset.  Below ``ends`` that
    means a transaction is not finished yet (its markers are being written, or it is open): the read waits
    for it, since its entries may be committed ones, and fails (CxPulseError) when that takes longer than
    ``stuck_seconds`` or the whole read longer than ``seconds`` (the caller tries again)."""
    starts = {partition: store.tail for partition, store in stores.items() if store.tail < ends[partition]}
    if not starts:
        return 0
    reader = new_consumer(
        kafka, f"{topic}-restore", **{"enable.partition.eof": True, "isolation.level": "read_committed"}
    )
    entries = 0
    held: dict[int, tuple[int, float]] = {}  # partition -> (last stable offset it stopped at, since when)
    try:
        reader.assign([TopicPartition(topic, partition, offset) for partition, offset in starts.items()])
        pending = set(starts)
        started = time.monotonic()
        while pending:
            now = time.monotonic()
            if now - started > seconds:
                raise CxPulseError(f"restoring {topic} partitions {sorted(pending)}: no end in sight")
            for partition, (stable, since) in held.items():
                if partition in pending and now - since > stuck_seconds:
                    raise CxPulseError(
                        f"restoring {topic}[{partition}]: a transaction holds its last stable offset at {stable} "
                        f"(below its end {ends[partition]}) for more than {stuck_seconds:.0f} s"
                    )
            for message in reader.consume(num_messages=1000, timeout=DRAIN_POLL_SECONDS):
                error = message.error()
                partition = message.partition() or 0
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        stable = message.offset() or 0
                        if stable >= ends[partition]:
                            pending.discard(partition)
                        elif partition not in held:
                            held[partition] = (stable, time.monotonic())
                            LOG.info(
                                "restoring %s[%d]: waiting for a transaction to finish (last stable offset %d, end %d)",
                                topic,
                                partition,
                                stable,
                                ends[partition],
                            )
                        continue
                    raise CxPulseError(f"restoring {topic}: {error}")
                store, offset = stores[partition], message.offset() or 0
                for bucket, ids in decode_seen(message.value() or b"{}").items():
                    store.remember(bucket, ids, offset)
                entries += 1
    finally:
        reader.close()
    return entries


@dataclass
class Recovery:
    """A slot's failure state: what it must do before its next batch, and how long it has been failing."""

    failures: int = 0  # batches failed since the last commit
    failing_since: float = 0.0  # monotonic time of the first of them
    needs_rewind: bool = False  # a batch failed: read again from the committed offsets before going on
    needs_producer: bool = False  # the producer is lost: a new one before going on
    reinit_at: float = -REFENCE_SECONDS  # monotonic time of the last new producer
    committed_since_reinit: bool = True
    backoff: float = 0.0  # seconds slept after the last failure (doubles up to BACKOFF_MAX_SECONDS)


class HotPath:
    """One hot-path slot: its consumer, its transactional producer and the batch step's state."""

    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        slot: int,
        catalog: SchemaCatalog,
        metrics: WorkerMetrics,
        outage: OutageLog | None = None,
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.metrics = metrics
        self.outage = outage
        self.name = f"hotpath-{slot}"
        topics = internal_topics(settings)
        self.partials_topic = topics.partials
        self.routed_topic = topics.routed
        self.answers_topic = topics.answers
        self.journey_topic = topics.journey_answers
        self.seen_topic = topics.seen_ids
        self.retention_ms = settings.retention_seconds * 1000
        self.bucket_ms = bucket_for_retention(self.retention_ms)
        self.future_ms = DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000
        self.transactional_id = transactional_id(settings, worker_id, slot)
        self.state_dir = settings.data_dir / "hotpath" / f"{worker_id}-{slot}"
        self.seen: dict[int, SeenIds] = {}  # assigned routed partition -> its remembered ids (also ingest.dedup)
        self.seen_offsets: dict[int, int] = {}  # partition -> changelog offset of this batch's seen-ids entry
        self.cluster_id = ""
        self.stopping = False
        self.ready = False
        self._housekept = 0.0
        self.recovery = Recovery()
        self.lag: dict[tuple[str, int], int] = {}  # assigned (topic, partition) -> messages waiting (last measured)
        self.through: dict[int, int] = {}  # assigned feedback partition -> Kafka timestamp routed through (committed)
        self.counted: dict[int, dict[int, int]] = {}  # assigned routed partition -> {feedback p: ms counted through}
        self.guard = CallGuard(self.name)
        self.progress = self._watched_progress()
        self.consumer: Consumer = self._new_consumer()
        self.producer: Producer = self._new_producer()
        partials_partitions, self.dlq_partitions, journey_partitions, self.routed_partitions = self._partition_counts()
        self.ingest = self._new_ingest(catalog, partials_partitions, journey_partitions, self.routed_partitions)
        self.followup_bucket = TokenBucket(settings.followups_per_minute, time.monotonic())

    def _watched_progress(self) -> Progress:
        """Progress of this slot, waiting while it has work (lag, a rewind or a producer to replace); its ready
        and stalled gauges read it."""
        progress = Progress()
        progress.waiting = lambda: self.recovery.needs_rewind or self.recovery.needs_producer or any(self.lag.values())
        self.metrics.process_ready.labels(self.name).set_function(lambda: 1.0 if self.is_ready() else 0.0)
        self.metrics.process_stalled.labels(self.name).set_function(progress.stalled)
        return progress

    def _new_consumer(self) -> Consumer:
        return new_consumer(
            self.settings.kafka,
            f"{self.settings.app_id}-hotpath",
            **{
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": 2000,
                "max.poll.interval.ms": 300_000,
                "client.id": f"{self.settings.app_id}-{self.name}",
            },
        )

    def _new_ingest(
        self, catalog: SchemaCatalog, partials_partitions: int, journey_partitions: int, routed_partitions: int
    ) -> Ingest:
        settings = self.settings
        return Ingest(
            settings.feedback_topic,
            catalog,
            settings.pane_seconds * 1000,
            partials_partitions,
            routed_partitions,
            followups=settings.followups_per_minute > 0,
            answers=bool(settings.clickhouse_url),
            journey_partitions=journey_partitions if settings.journeys else 0,
            customer_key=settings.customer_id_key.get_secret_value().encode(),
        )

    def _new_producer(self) -> Producer:
        return new_producer(
            self.settings.kafka,
            **{
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": PARTIALS_MAX_MESSAGE_BYTES,
                "client.id": f"{self.settings.app_id}-{self.name}",
            },
        )

    def is_ready(self) -> bool:
        """Holding partitions with their state restored, and making progress (health.Progress), with Kafka
        reachable (an outage longer than CXPULSE_STALL_SECONDS is not ready either)."""
        bound = self.settings.stall_seconds
        away = self.outage.seconds() if self.outage is not None else 0.0
        return self.ready and self.progress.stalled() < bound and away < bound

    def _partition_counts(self) -> tuple[int, int, int, int]:
        """Partitions of the partials, DLQ, journey-answers and routed topics, once every partition has a leader.
        Kafka away or topics without a leader at start: waits for them (not ready meanwhile; streams.topics.KafkaWait,
        logged once); refused credentials, a missing ACL or a missing topic are fatal."""
        topics = (self.routed_topic, self.partials_topic, self.seen_topic, self.settings.dlq_topic)
        wait = KafkaWait(log=LOG, reached=True)
        while True:
            try:
                bound = TOPIC_WAIT_SECONDS + 5 * REACH_SECONDS + GUARD_MARGIN_SECONDS
                with self.guard("reading topic metadata", bound):
                    found = describe_topics(self.settings.kafka, [*topics, self.journey_topic], wait)
                break
            except (KafkaRefusedError, NotAuthorizedError, TopicMissingError) as exc:
                raise FatalError(str(exc)) from exc
            except BrokerError as exc:  # waited TOPIC_WAIT_SECONDS: go on waiting (not ready), quietly
                if self.stopping:
                    raise CxPulseError(f"{self.name}: stopped before Kafka could be used") from exc
        self.cluster_id = found.cluster_id
        routed, partials, seen, dlq, journeys = (found.partitions[t] for t in (*topics, self.journey_topic))
        if seen != routed:
            raise FatalError(
                f"{self.seen_topic} has {seen} partitions but {self.routed_topic} has {routed}: "
                "the seen-ids changelog needs one partition per routed partition"
            )
        return partials, dlq, journeys, routed

    # --- group membership ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore the state of newly assigned routed partitions: where their next batch starts, and their seen ids
        (a feedback partition needs none: the consumer starts at its committed offset).

        The committed offsets are read first: with read_committed they are stable, i.e. any transaction of a
        previous owner is over, so the changelog read next holds everything that owner committed."""
        routed = self._routed(partitions)
        if routed:
            self._restore(routed)
        self.ready = True
        LOG.info("%s assigned %s", self.name, _names(partitions))

    def _routed(self, partitions: Iterable[TopicPartition]) -> list[int]:
        return sorted(tp.partition for tp in partitions if tp.topic == self.routed_topic)

    def _restore(self, partitions: list[int]) -> None:
        """Committed offsets and seen ids of ``partitions``, retried while Kafka is away (RESTORE_SECONDS)."""
        started = time.monotonic()
        deadline, renew_at = started + RESTORE_SECONDS, started + UNSTABLE_SECONDS
        while True:
            try:
                with self.guard("restoring state", RESTORE_SECONDS + GUARD_MARGIN_SECONDS):
                    self._restore_once(partitions)
                return
            except (KafkaException, CxPulseError) as exc:
                if isinstance(exc, FatalError):
                    raise
                if time.monotonic() > deadline or self.stopping:
                    raise CxPulseError(f"{self.name}: restoring partitions {partitions}: {exc}") from exc
                LOG.debug("%s: restoring partitions %s failed (%s); retrying", self.name, partitions, exc)
                if time.monotonic() > renew_at:
                    renew_at = deadline
                    self._end_our_transaction(partitions, exc)
                self._sleep(1.0)

    def _end_our_transaction(self, partitions: list[int], exc: Exception) -> None:
        """Committed offsets asked for as stable (read_committed, KIP-447) stay unreadable while a transaction
        that sent offsets for the group is open or its markers are not written: the broker answers
        UNSTABLE_OFFSET_COMMIT and librdkafka asks again until its timeout.  A transaction of our own
        transactional.id that the broker keeps open past the transaction timeout (seen in the fault suite: a
        broker stopped 25 s and started again, the hot path's restore unable to read its offsets for the next
        two minutes, until the slot was restarted and its init_transactions ended that transaction) is ended by
        a new producer: InitProducerId bumps the epoch, and the coordinator completes or aborts whatever this
        id left open.  Outside a batch no transaction of ours is meant to be open, so nothing is lost.

        A new producer was not always enough: in the same test the slot restarted, its init_transactions done and
        the transaction coordinator holding nothing open for its id (state Empty), the group coordinator still
        answered UNSTABLE_OFFSET_COMMIT for minutes (offsets of our producer id left pending there, with no
        marker to come).  So the new producer then runs one transaction that sends offsets for the group and is
        aborted: its abort marker on the group's __consumer_offsets partition drops every offset of our producer
        id the group coordinator holds pending.  Aborted, it changes no committed offset."""
        LOG.warning(
            "%s: the committed offsets of partitions %s are still unreadable after %.0f s (%s); a new producer "
            "ends any transaction of %s the broker holds open",
            self.name,
            sorted(partitions),
            UNSTABLE_SECONDS,
            exc,
            self.transactional_id,
        )
        self._replace_producer()
        topic = self.routed_topic
        try:
            with self.guard("clearing pending offsets", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.producer.begin_transaction()
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(topic, partition, 0) for partition in partitions],
                    self.consumer.consumer_group_metadata(),
                    KAFKA_TIMEOUT_SECONDS,
                )
        except KafkaException as error:
            LOG.debug("%s: clearing pending offsets: %s (the abort still ends the transaction)", self.name, error)
        self._abort()

    def _restore_once(self, partitions: list[int]) -> None:
        """Where each partition's next batch starts (its committed offset), and its remembered ids: the local
        state (streams.worker.seen) if it can be trusted, and the changelog past its checkpoint."""
        begun = time.monotonic()
        topic = self.routed_topic
        committed = self.consumer.committed([TopicPartition(topic, p) for p in partitions], KAFKA_TIMEOUT_SECONDS)
        started = time.monotonic()
        ends = changelog_ends(self.settings.kafka, self.seen_topic, partitions)
        stores = {partition: self._seen_store(partition, ends[partition]) for partition in partitions}
        for store in stores.values():
            store.forget_tail()
        local = sum(len(store) for store in stores.values())
        left = max(1.0, RESTORE_SECONDS - (time.monotonic() - begun))  # within this attempt's guard
        entries = read_seen_tails(self.settings.kafka, self.seen_topic, stores, ends, left)
        cutoff = int(time.time() * 1000) - self.retention_ms
        for store in stores.values():
            store.expire(cutoff)
        for tp in committed:
            self.ingest.starts[tp.partition] = tp.offset if tp.offset >= 0 else FROM_THE_START
            self.ingest.dedup[tp.partition] = self.seen[tp.partition] = stores[tp.partition]
        self.metrics.restored.labels("seen-ids", "local").inc(local)
        self.metrics.restored.labels("seen-ids", "changelog").inc(entries)
        LOG.info(
            "%s: partitions %s restored in %.1f s: %d ids from local state, %d changelog entries read after it",
            self.name,
            sorted(partitions),
            time.monotonic() - started,
            local,
            entries,
        )

    def _seen_store(self, partition: int, changelog_end: int) -> SeenIds:
        """The partition's remembered ids: held already (a rewind), or opened from the local state."""
        store = self.seen.get(partition)
        if store is not None:
            return store
        origin = Origin(self.cluster_id, self.seen_topic, partition, self.bucket_ms)
        return SeenIds.open(self.state_dir / "seen-ids" / f"p{partition}", origin, changelog_end)

    def _flush_seen(self, partitions: Iterable[int], always: bool) -> None:
        """Write the committed recent ids of ``partitions`` to disk (``always``, or when due).  A disk that fails
        is logged; the ids stay in memory (and in the changelog)."""
        for partition in partitions:
            store = self.seen.get(partition)
            if store is None or store.pending or not (always or store.due()):
                continue  # a batch in flight (the process stopping on an error): its ids are not committed
            try:
                store.flush()
            except OSError as exc:
                LOG.warning("%s: cannot write the remembered ids of partition %d: %s", self.name, partition, exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Forget revoked (or lost) partitions; no transaction is open here (callbacks run inside consume)."""
        routed = self._routed(partitions)
        self._flush_seen(routed, always=True)
        for partition in routed:
            self.ingest.starts.pop(partition, None)
            self.ingest.dedup.pop(partition, None)
            self.seen.pop(partition, None)
            self.counted.pop(partition, None)
        for tp in partitions:
            self.lag.pop((tp.topic, tp.partition), None)
            if tp.topic == self.settings.feedback_topic:
                self.through.pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # never measured
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        LOG.info("%s revoked %s", self.name, _names(partitions))

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume and process batches until asked to stop; the batch in flight is finished and committed."""
        self.guard.start()
        self._init_transactions()
        self.consumer.subscribe(
            [self.settings.feedback_topic, self.routed_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        # A batch allocates tens of thousands of short-lived containers: Python's default gen-0 threshold (700)
        # collects dozens of times per batch, and the older generations' collections walk the de-duplication
        # index.  Measured on the batch step alone: 39,000 -> 46,000 events/s.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            while not self.stopping:
                if not self._recovered():
                    continue
                messages = self.consumer.consume(num_messages=BATCH_MESSAGES, timeout=POLL_SECONDS)
                good = [message for message in messages if not self._is_error(message)]
                if good:
                    self.process(good)
                elif not messages:
                    self.progress.idle()
                self._housekeeping()
        finally:
            self.ready = False
            self._flush_seen(list(self.seen), always=True)
            with self.guard("leaving the group", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.consumer.close()  # leaves the group: the partitions move on without waiting for a timeout

    def _init_transactions(self) -> None:
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
                if self.stopping:
                    raise CxPulseError(f"{self.name}: stopped before transactions could start") from exc
                LOG.debug("%s: init_transactions: %s; retrying", self.name, error.str())
                self._sleep(1.0)

    def _recovered(self) -> bool:
        """After a failed batch: a new producer if the old one is lost, then back to the committed offsets.  False
        (after a backoff) while that cannot be done yet, the broker being away, say."""
        if not (self.recovery.needs_producer or self.recovery.needs_rewind):
            return True
        try:
            if self.recovery.needs_producer:
                self._replace_producer()
            if self.recovery.needs_rewind:
                self._rewind()
                self.recovery.needs_rewind = False
            return True
        except (KafkaException, CxPulseError) as exc:
            if isinstance(exc, FatalError):
                raise
            LOG.debug("%s: recovery after a failed batch: %s; retrying", self.name, exc)
            self._back_off()
            return False

    def _replace_producer(self) -> None:
        old, self.producer = self.producer, self._new_producer()
        with self.guard("closing the lost producer", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
            old.flush(0)
        self.recovery.needs_producer = False
        self._init_transactions()
        self.recovery.reinit_at = time.monotonic()
        self.recovery.committed_since_reinit = False
        self.metrics.producer_reinits.inc()
        LOG.warning("%s: a new transactional producer took over (%s)", self.name, self.transactional_id)

    def _is_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.fatal():
            raise FatalError(f"{self.name}: fatal consumer error: {error.str()}")
        LOG.debug("%s: consumer: %s", self.name, error.str())
        return True

    def process(self, messages: list[Message]) -> None:
        """One batch: ingest, then one transaction; on failure abort, rewind and back off (nothing skipped)."""
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        self.progress.begin()
        try:
            out = self.ingest.batch(messages, Clock(now_ms, self.future_ms, self.retention_ms))
            through = self._through_after(messages, now_ms)
            sent = self._transact(out, max(message.timestamp()[1] for message in messages), through)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: abort, read the batch again (nothing skipped)
            self._failed(messages, exc)
            return
        if self.recovery.failures:
            LOG.warning(
                "%s: batches commit again, after %d failed tries in %.1f s (each read again from the committed "
                "offsets: nothing skipped)",
                self.name,
                self.recovery.failures,
                time.monotonic() - self.recovery.failing_since,
            )
        self.recovery.failures = 0
        self.recovery.backoff = 0.0
        self.recovery.committed_since_reinit = True
        self.through.update(through)
        for partition, counted in out.through.items():
            held = self.counted.setdefault(partition, {})
            for source, ms in counted.items():
                held[source] = max(held.get(source, ms), ms)
        self.progress.done()
        self._count(out, sent)
        self.metrics.batch_seconds.labels("hotpath").observe(time.perf_counter() - started)

    def _failed(self, messages: list[Message], exc: Exception) -> None:
        """A batch failed: count it, abort (or replace the producer), read it again from the committed offsets."""
        self.metrics.batch_errors.labels(self.settings.feedback_topic).inc()
        self.progress.failed()
        if self.recovery.failures == 0:
            self.recovery.failing_since = time.monotonic()
        self.recovery.failures += 1
        quiet = self.recovery.failures > 1 or (self.outage is not None and self.outage.active)
        LOG.log(
            logging.DEBUG if quiet else logging.WARNING if isinstance(exc, CxPulseError) else logging.ERROR,
            "%s: a batch of %d messages failed (%s: %s); it is read again from the committed offsets (the next "
            "line says when batches commit again)",
            self.name,
            len(messages),
            type(exc).__name__,
            exc,
            exc_info=not isinstance(exc, CxPulseError | KafkaException),
        )
        if isinstance(exc, ProducerLostError):
            recovery = self.recovery
            refenced = time.monotonic() - recovery.reinit_at < REFENCE_SECONDS and not recovery.committed_since_reinit
            if exc.fenced and refenced:
                raise FatalError(
                    f"{self.name} was fenced again right after taking over: another process runs with "
                    f"transactional.id {self.transactional_id} (two workers with the same CXPULSE_WORKER_ID?)"
                ) from exc
            self.recovery.needs_producer = True
        else:
            self._abort()
        self.recovery.needs_rewind = True
        self._back_off()

    def _back_off(self) -> None:
        self.recovery.backoff = min(BACKOFF_MAX_SECONDS, max(0.5, 2 * self.recovery.backoff))
        self._sleep(self.recovery.backoff)

    def _through_after(self, messages: list[Message], now_ms: int) -> dict[int, int]:
        """Per assigned feedback partition, the Kafka timestamp up to which every message is routed once this batch
        commits: the batch's time where nothing more waits, else its last message's timestamp (messages of a
        partition come in timestamp order), else what an earlier batch reached (0: nothing yet, a backlog waits).
        Sent on with the routed messages, counted, and sent on with the partials (records.Through): the effort
        detector evaluates panes in event time up to the lowest (sinks/effort_detector.py)."""
        feedback = self.settings.feedback_topic
        last: dict[int, int] = {}
        for message in messages:
            if message.topic() == feedback:
                last[message.partition() or 0] = message.timestamp()[1]
        out = {}
        assigned = [tp for tp in self.consumer.assignment() if tp.topic == feedback]
        for tp in self.consumer.position(assigned) if assigned else []:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and 0 <= tp.offset and high - tp.offset <= 0:
                out[tp.partition] = now_ms
            else:
                out[tp.partition] = last.get(tp.partition, self.through.get(tp.partition, 0))
        return out

    def _transact(self, out: BatchOut, newest_ms: int, through: dict[int, int]) -> int:
        """Dead letters, routed answers and partials (both stamped with the batch's newest event timestamp, for the
        latency metric; each with how far it says answers are routed or counted), seen ids, detractor follow-ups
        (as many as the rate allows; how many is returned) and the input offsets in one transaction."""
        producer = self.producer
        try:
            with self.guard("producing a batch", PRODUCE_SECONDS + GUARD_MARGIN_SECONDS):
                producer.begin_transaction()
                sent = self._produce_batch(out, newest_ms, through)
            offsets = [TopicPartition(topic, p, offset) for (topic, p), offset in out.offsets.items()]
            with self.guard("send_offsets_to_transaction", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), KAFKA_TIMEOUT_SECONDS
                )
            with self.guard("commit_transaction", COMMIT_SECONDS + KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self._commit()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                fenced = error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
                raise ProducerLostError(self._fatal_message(error), fenced) from exc
            raise TransactionAbortedError(error.str()) from exc
        self.ingest.committed(out.offsets)
        self._poll(0)  # the delivery reports: where this batch's seen-ids entries are
        for partition, store in self.seen.items():
            store.committed(self.seen_offsets.pop(partition, None))
        return sent

    def _counted_through(self, out: BatchOut) -> Through:
        """How far this slot's routed partitions are counted once this batch commits (records.Through)."""
        at: dict[tuple[int, int], int] = {}
        for partition in set(self.counted) | set(out.through):
            held, now = self.counted.get(partition, {}), out.through.get(partition, {})
            for source in set(held) | set(now):
                at[(partition, source)] = max(held.get(source, 0), now.get(source, 0))
        return Through(self.routed_partitions, at)

    def _produce_batch(self, out: BatchOut, newest_ms: int, through: dict[int, int]) -> int:
        routed_headers: list[tuple[str, str | bytes | None]] = [(THROUGH_HEADER, encode_routed_through(through))]
        for partition, answers in out.routed.items():
            for run in answer_chunks(answers, ANSWERS_MESSAGE_BYTES, routed_size) or [[]]:
                self._produce(
                    self.routed_topic, encode_routed(run), None, partition, routed_headers, timestamp=newest_ms
                )
        partial_headers: list[tuple[str, str | bytes | None]] = [
            (THROUGH_HEADER, encode_through(self._counted_through(out)))
        ]
        for letter in out.dead_letters:
            self._produce(
                self.settings.dlq_topic,
                letter.value,
                letter.key,
                letter.source_partition % self.dlq_partitions,
                letter.headers,
            )
        for partition, batch in out.partials.items():
            self._produce(
                self.partials_topic, encode_partials(batch), None, partition, partial_headers, timestamp=newest_ms
            )
        self.seen_offsets.clear()
        for partition, buckets in out.seen.items():
            self._produce(self.seen_topic, encode_seen(buckets), None, partition, on_delivery=self._seen_delivered)
        for partition, values in out.answers.items():
            for chunk in answer_chunks(values, ANSWERS_MESSAGE_BYTES, len):
                self._produce(self.answers_topic, encode_answers(chunk), None, partition)
        for partition, rows in out.journeys.items():
            for chunk in answer_chunks(rows, ANSWERS_MESSAGE_BYTES, len):
                self._produce(self.journey_topic, b"[" + b",".join(chunk) + b"]", None, partition)
        sent = self.followup_bucket.take(len(out.followups), time.monotonic()) if out.followups else 0
        for followup in out.followups[:sent]:
            key, value = encode_followup(followup)
            self._produce(self.settings.followups_topic, value, key, PARTITION_BY_KEY)
        return sent

    def _commit(self) -> None:
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
                self._sleep(min(5.0, 0.2 * 2**attempt))
                attempt += 1

    def _fatal_message(self, error: KafkaError) -> str:
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            return f"{self.name}'s producer was fenced ({error.str()})"
        return f"{self.name}: fatal producer error: {error.str()}"

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        timestamp: int = 0,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    headers=headers,
                    timestamp=timestamp,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain (or time out), then go on
                self.producer.poll(0.1)

    def _seen_delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.seen_offsets[message.partition() or 0] = message.offset() or 0

    def _abort(self) -> None:
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

    def _rewind(self) -> None:
        """Go back to the committed offsets of every assigned partition and restore their state from Kafka."""
        assigned = self.consumer.assignment()
        if not assigned:
            return
        routed = self._routed(assigned)
        if routed:
            self._restore(routed)
        with self.guard("reading committed offsets", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
            committed = self.consumer.committed(assigned, KAFKA_TIMEOUT_SECONDS)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _sleep(self, seconds: float) -> None:
        """Wait, serving the producer's delivery reports (a fatal producer error found here: a new producer)."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            self._poll(min(0.1, seconds))

    def _poll(self, seconds: float) -> None:
        """Serve the producer's callbacks; a fatal error raised there marks the producer lost (a new one takes
        over before the next batch)."""
        try:
            self.producer.poll(seconds)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                raise
            self.recovery.needs_producer = True
            time.sleep(seconds)

    def _count(self, out: BatchOut, followups_sent: int) -> None:
        metrics = self.metrics
        if out.followups:
            metrics.followups.labels("sent").inc(followups_sent)
            metrics.followups.labels("rate_limited").inc(len(out.followups) - followups_sent)
        metrics.records.labels(self.settings.feedback_topic).inc(out.records)
        for reason, count in reasons(out.dead_letters).items():
            metrics.dead_letters.labels(reason).inc(count)
        metrics.duplicates.inc(out.duplicates)
        metrics.late_events.inc(out.late)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._housekept < HOUSEKEEPING_SECONDS:
            return
        self._housekept = now
        cutoff = int(time.time() * 1000) - self.retention_ms
        expired = sum(dedup.expire(cutoff) for dedup in self.ingest.dedup.values())
        if expired:
            self.metrics.expired.labels("seen-ids").inc(expired)
        self._flush_seen(list(self.seen), always=False)
        self.metrics.remembered_ids.set(sum(len(dedup) for dedup in self.ingest.dedup.values()))
        self._measure_lag()
        self._poll(0)

    def _measure_lag(self) -> None:
        """Per assigned partition: the end offset librdkafka saw in its last fetch (no broker round trip) minus the
        next offset to process."""
        assigned = self.consumer.assignment()
        if not assigned:
            return
        for tp in self.consumer.position(assigned):
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                lag = self.lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)


def _names(partitions: Iterable[TopicPartition]) -> str:
    """``topic[0, 1], other[2]`` for a log line."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{topic}{sorted(found)}" for topic, found in sorted(by_topic.items())) or "nothing"


def routed_size(answer: Routed) -> int:
    """At least the framed bytes of a routed answer: its bytes, and its validated form and follow-up context as JSON
    (fields none of which is longer than in the bytes, written at most three times as long: quotes, escapes)."""
    return 6 * len(answer.raw) + 300


T = TypeVar("T")


def answer_chunks(values: list[T], limit: int, size_of: Callable[[T], int]) -> list[list[T]]:
    """The answers of one partition in runs of at most ``limit`` framed bytes (``size_of`` one, without its 4-byte
    frame; a batch of large answers, long comments say, must not make one message over the topic's
    max.message.bytes: the transaction would abort and repeat forever)."""
    chunks: list[list[T]] = [[]]
    size = 0
    for value in values:
        framed = size_of(value) + 4
        if chunks[-1] and size + framed > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(value)
        size += framed
    return chunks if chunks[-1] else []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one slot: ``python -m streams.worker.hotpath SLOT METRICS_PORT`` (settings from the
    environment, CXPULSE_WORKER_ID set by the supervisor)."""
    args = list(sys.argv[1:] if argv is None else argv)
    slot, port = int(args[0]), int(args[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"cxpulse worker: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    outage = OutageLog.install(settings.kafka_bootstrap)
    metrics = WorkerMetrics(CollectorRegistry())
    worker_id = settings.worker_id or "local"
    hot: HotPath | None = None

    def readiness() -> tuple[bool, dict[str, object]]:
        return (hot is not None and hot.is_ready()), {}

    if port:
        serve(port, "127.0.0.1", metrics.page, readiness)
    try:
        hot = HotPath(settings, worker_id, slot, catalog_for(settings), metrics, outage)
        _run_until_stopped(hot)
    except FatalError as exc:
        LOG.critical("%s", exc)
        return EXIT_PERMANENT
    except CxPulseError as exc:
        LOG.critical("%s", exc)
        return 1
    LOG.info("%s stopped", hot.name)
    return 0


def _run_until_stopped(hot: HotPath) -> None:
    """Run the slot; SIGTERM or SIGINT finishes the batch in flight and returns."""

    def stop(signum: int, frame: FrameType | None) -> None:
        LOG.info("%s: %s: finishing the batch in flight", hot.name, signal.Signals(signum).name)
        hot.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    hot.run()


if __name__ == "__main__":
    sys.exit(main())
