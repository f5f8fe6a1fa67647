"""The hot path: ``cx.feedback`` in; dead letters, routed answers, partials and seen ids out; one Kafka transaction
per batch.

A librdkafka (confluent-kafka) loop, no Faust: ``consume(num_messages=...)`` hands over thousands of messages
at once, streams.worker.ingest turns them into what the batch must write, and one transaction carries it all
together with the input offsets (``send_offsets_to_transaction``).  A batch is therefore either entirely out
(dead letters, routed answers, partials, seen ids, offsets) or not at all: no offset-gap repair, no dead-letter
recall.  A slot is four parts, each with one job:

- :class:`HotPath` (here): the consumer and the loop: batches, failures and recovery (a failed batch is aborted
  and read again from the committed offsets after a backoff: nothing is skipped), progress and lag;
- streams.worker.transactor.Transactor: the transactional producer (one transaction per batch, a new producer
  when one is lost, every librdkafka call bounded);
- streams.worker.seen_restore.SeenRestore: a routed partition's committed offset and remembered ids, restored
  when it is assigned or a batch failed;
- streams.worker.outputs.BatchOutputs: what a batch writes, topic by topic.

- One consumer reads the feedback topic and ``<app>-routed``: feedback messages are validated and routed by
  event id (the route step), routed ones de-duplicated and counted (the count step), so that every copy of an
  answer meets the same de-duplicator whatever partition it arrived on (streams.worker.ingest).
- The consumer group ``<app>-hotpath`` uses the cooperative-sticky assignor: a rebalance moves only the
  partitions that change owner, and only those are restored.  Ready means making progress (health.Progress).

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
from types import FrameType

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from schemas.codec import SchemaCatalog, catalog_for
from streams.agents.health import CallGuard, Progress, serve
from streams.agents.metrics import WorkerMetrics
from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings, load_settings
from streams.core.dedup import bucket_for_retention
from streams.core.validate import Clock
from streams.errors import (
    EXIT_PERMANENT,
    BrokerError,
    ConfigurationError,
    CxPulseError,
    KafkaRefusedError,
    NotAuthorizedError,
    TopicMissingError,
)
from streams.kafka import FETCH_MIN_BYTES
from streams.kafka import consumer as new_consumer
from streams.outage import OutageLog
from streams.runtime import tune_gc
from streams.themes import theme_matcher
from streams.topics import (
    TOPIC_PROPAGATION_SECONDS,
    TOPIC_WAIT_SECONDS,
    KafkaWait,
    TopicsFound,
    describe_topics,
    internal_topics,
)
from streams.worker.ingest import BatchOut, Ingest
from streams.worker.outputs import BatchOutputs, count_batch
from streams.worker.positions import measure_lag, partition_names, routed_through
from streams.worker.seen_restore import SeenRestore
from streams.worker.transactor import (
    GUARD_MARGIN_SECONDS,
    KAFKA_TIMEOUT_SECONDS,
    FatalError,
    ProducerLostError,
    Recovery,
    Transactor,
    transactional_id,
)

LOG = logging.getLogger("cxpulse.hotpath")
BATCH_MESSAGES = 10_000  # messages per consume() call and transaction
POLL_SECONDS = 0.05  # a batch waits at most this long to fill: the latency floor at low rates
SESSION_TIMEOUT_MS = 10_000  # a slot killed with -9 keeps its partitions this long
REACH_SECONDS = 10.0  # reading metadata at start (Kafka away: tried again)
HOUSEKEEPING_SECONDS = 1.0  # expiry of seen ids and gauges, at most this often
BACKOFF_MAX_SECONDS = 30.0  # a failing batch is retried after 0.5 s, 1 s, 2 s, ... up to this


class HotPath:
    """One hot-path slot: its consumer and loop, and its parts (see the module docstring)."""

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
        self.metrics = metrics
        self.outage = outage
        self.name = f"hotpath-{slot}"
        topics = internal_topics(settings)
        self.routed_topic = topics.routed
        self.retention_ms = settings.retention_seconds * 1000
        self.future_ms = DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000
        self.stopping = False
        self.ready = False
        self._housekept = 0.0
        self.recovery = Recovery()
        self.lag: dict[tuple[str, int], int] = {}  # assigned (topic, partition) -> messages waiting (last measured)
        self.through: dict[int, int] = {}  # assigned feedback partition -> Kafka timestamp routed through (committed)
        self.guard = CallGuard(self.name)
        self.progress = self._watched_progress()
        self.consumer: Consumer = slot_consumer(settings, self.name)
        stopping = lambda: self.stopping  # noqa: E731 - the parts ask the loop whether it stops
        tid = transactional_id(settings, worker_id, slot)
        self.transactor = Transactor(settings, self.name, tid, self.guard, metrics, self.recovery, stopping)
        found = slot_topics(settings, self.guard, stopping, self.name)
        state_dir = settings.data_dir / "hotpath" / f"{worker_id}-{slot}"
        bucket_ms = bucket_for_retention(self.retention_ms)
        self.restore = SeenRestore(
            settings, self.name, topics.routed, topics.seen_ids, state_dir, bucket_ms, self.guard, metrics,
            self.transactor, lambda: self.consumer, stopping,
        )  # fmt: skip
        self.restore.cluster_id = found.cluster_id
        self.outputs = BatchOutputs(settings, found.partitions, self.transactor)
        self.ingest = self._new_ingest(catalog, found.partitions)
        self.outages_seen = 0 if outage is None else outage.outages  # see :meth:`_after_an_outage`

    def _watched_progress(self) -> Progress:
        """Progress of this slot, waiting while it has work (lag, a rewind or a producer to replace); its ready
        and stalled gauges read it."""
        progress = Progress()
        progress.waiting = lambda: self.recovery.needs_rewind or self.recovery.needs_producer or any(self.lag.values())
        self.metrics.process_ready.labels(self.name).set_function(lambda: 1.0 if self.is_ready() else 0.0)
        self.metrics.process_stalled.labels(self.name).set_function(progress.stalled)
        return progress

    def _new_ingest(self, catalog: SchemaCatalog, partitions: dict[str, int]) -> Ingest:
        settings, topics = self.settings, internal_topics(self.settings)
        return Ingest(
            settings.feedback_topic,
            catalog,
            settings.pane_seconds * 1000,
            partitions[topics.partials],
            partitions[topics.routed],
            followups=settings.followups_per_minute > 0,
            answers=bool(settings.clickhouse_url),
            journey_partitions=partitions[topics.journey_answers] if settings.journeys else 0,
            customer_key=settings.customer_id_key.get_secret_value().encode(),
            comments=settings.comments,
            matcher=theme_matcher(settings),
        )

    def is_ready(self) -> bool:
        """Holding partitions with their state restored, and making progress (health.Progress), with Kafka
        reachable (an outage longer than CXPULSE_STALL_SECONDS is not ready either)."""
        bound = self.settings.stall_seconds
        away = self.outage.seconds() if self.outage is not None else 0.0
        return self.ready and self.progress.stalled() < bound and away < bound

    # --- group membership ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore the state of newly assigned routed partitions (a feedback partition needs none: the consumer
        starts at its committed offset)."""
        routed = self._routed(partitions)
        if routed:
            self._restore(routed)
        self.ready = True
        LOG.info("%s assigned %s", self.name, partition_names(partitions))

    def _routed(self, partitions: Iterable[TopicPartition]) -> list[int]:
        return sorted(tp.partition for tp in partitions if tp.topic == self.routed_topic)

    def _restore(self, partitions: list[int]) -> None:
        """Where the routed partitions' next batches start and their remembered ids (streams.worker.seen_restore),
        handed to the batch step."""
        self.ingest.starts.update(self.restore.restore(partitions))
        for partition in partitions:
            self.ingest.dedup[partition] = self.restore.seen[partition]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Forget revoked (or lost) partitions; no transaction is open here (callbacks run inside consume)."""
        routed = self._routed(partitions)
        self.restore.forget(routed)
        self.outputs.forget(routed)
        for partition in routed:
            self.ingest.starts.pop(partition, None)
            self.ingest.dedup.pop(partition, None)
        for tp in partitions:
            self.lag.pop((tp.topic, tp.partition), None)
            if tp.topic == self.settings.feedback_topic:
                self.through.pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # never measured
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        LOG.info("%s revoked %s", self.name, partition_names(partitions))

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume and process batches until asked to stop; the batch in flight is finished and committed."""
        self.guard.start()
        self.transactor.init()
        self.consumer.subscribe(
            [self.settings.feedback_topic, self.routed_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        # what the slot made while starting is never walked again (streams.runtime: the collector's thresholds,
        # set in main; on the batch step alone they made 39,000 -> 46,000 events/s)
        gc.freeze()
        try:
            while not self.stopping:
                self._after_an_outage()
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
            self.restore.flush(list(self.restore.seen), always=True)
            with self.guard("leaving the group", KAFKA_TIMEOUT_SECONDS + GUARD_MARGIN_SECONDS):
                self.consumer.close()  # leaves the group: the partitions move on without waiting for a timeout

    def _after_an_outage(self) -> None:
        """Once a confirmed Kafka outage is over, a new transactional producer before the next batch.  The one that
        lived through it hung in its first send_offsets_to_transaction after a broker restart (25 s, then the guard
        restarted the process): 3 of 3 restarts of the fault suite's test with CXPULSE_FETCH_WAIT_MS=1000, 1 of 3 at
        250 ms (2026-12-06); with a new producer after each outage, 0 of 3.  librdkafka ignores that call's timeout
        (confluentinc/librdkafka#5456) and can keep a group coordinator it no longer talks to (#5511), which fits;
        a new producer looks its coordinators up afresh, for one init_transactions per outage."""
        outage = self.outage
        if outage is None or outage.active or outage.outages == self.outages_seen:
            return
        self.outages_seen = outage.outages
        self.recovery.needs_producer = True

    def _recovered(self) -> bool:
        """After a failed batch: a new producer if the old one is lost, then back to the committed offsets.  False
        (after a backoff) while that cannot be done yet, the broker being away, say."""
        if not (self.recovery.needs_producer or self.recovery.needs_rewind):
            return True
        try:
            if self.recovery.needs_producer:
                self.transactor.replace()
            if self.recovery.needs_rewind:
                self._rewind()
                self.recovery.needs_rewind = False
            return True
        except (KafkaException, CxPulseError) as exc:
            if isinstance(exc, FatalError):
                raise
            # Kafka away: the outage log says when it starts and ends; otherwise the first failure is a warning
            # (a slot that cannot recover with the broker up committed nothing for minutes, silently, before this)
            quiet = self.recovery.recovery_told or (self.outage is not None and self.outage.active)
            LOG.log(
                logging.DEBUG if quiet else logging.WARNING,
                "%s: recovery after a failed batch failed (%s); retried with a backoff, quietly (the next line says "
                "when batches commit again)",
                self.name,
                exc,
            )
            self.recovery.recovery_told = self.recovery.recovery_told or not quiet
            self._back_off()
            return False

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
            through = routed_through(self.consumer, self.settings.feedback_topic, messages, now_ms, self.through)
            sent = self._transact(out, max(message.timestamp()[1] for message in messages), through)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: abort, read the batch again (nothing skipped)
            self._failed(messages, exc)
            return
        told = self.recovery.committed()
        if told:
            LOG.warning("%s: batches commit again, %s", self.name, told)
        self.through.update(through)
        self.outputs.committed(out)
        self.progress.done()
        count_batch(self.metrics, out, sent, self.settings.feedback_topic)
        self.metrics.batch_seconds.labels("hotpath").observe(time.perf_counter() - started)

    def _transact(self, out: BatchOut, newest_ms: int, through: dict[int, int]) -> int:
        """The batch's output (streams.worker.outputs) and its input offsets in one transaction; return how many
        follow-ups went out."""
        offsets = [TopicPartition(topic, p, offset) for (topic, p), offset in out.offsets.items()]
        group = self.consumer.consumer_group_metadata()
        sent = self.transactor.transact(lambda: self.outputs.write(out, newest_ms, through), offsets, group)
        self.ingest.committed(out.offsets)
        self.transactor.poll(0)  # the delivery reports: where this batch's seen-ids entries are
        for partition, store in self.restore.seen.items():
            store.committed(self.outputs.seen_offsets.pop(partition, None))
        return sent

    def _failed(self, messages: list[Message], exc: Exception) -> None:
        """A batch failed: count it, abort (or replace the producer), read it again from the committed offsets."""
        self.metrics.batch_errors.labels(self.settings.feedback_topic).inc()
        self.progress.failed()
        self.recovery.failed(exc)
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
            if exc.fenced and self.recovery.two_owners(time.monotonic()):
                raise FatalError(
                    f"{self.name} keeps being fenced (again right after taking over, or {len(self.recovery.fences)} "
                    f"times in a minute): another process runs with transactional.id "
                    f"{self.transactor.transactional_id} (two workers with the same CXPULSE_WORKER_ID?)"
                ) from exc
            self.recovery.needs_producer = True
        else:
            self.transactor.abort()
        self.recovery.needs_rewind = True
        self._back_off()

    def _back_off(self) -> None:
        self.recovery.backoff = min(BACKOFF_MAX_SECONDS, max(0.5, 2 * self.recovery.backoff))
        self.transactor.sleep(self.recovery.backoff)

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

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._housekept < HOUSEKEEPING_SECONDS:
            return
        self._housekept = now
        cutoff = int(time.time() * 1000) - self.retention_ms
        expired = sum(dedup.expire(cutoff) for dedup in self.ingest.dedup.values())
        if expired:
            self.metrics.expired.labels("seen-ids").inc(expired)
        self.restore.flush(list(self.restore.seen), always=False)
        self.metrics.remembered_ids.set(sum(len(dedup) for dedup in self.ingest.dedup.values()))
        measure_lag(self.consumer, self.metrics, self.lag)
        self.transactor.poll(0)


def slot_topics(settings: Settings, guard: CallGuard, stopping: Callable[[], bool], name: str) -> TopicsFound:
    """The partition counts of the topics a slot writes, once every partition has a leader.  Kafka away or topics
    without a leader at start: waits for them (not ready meanwhile; streams.topics.KafkaWait, logged once); refused
    credentials, a missing ACL or a missing topic are fatal."""
    topics = internal_topics(settings)
    wanted = [topics.routed, topics.partials, topics.seen_ids, settings.dlq_topic, topics.journey_answers]
    wait = KafkaWait(log=LOG, reached=True)
    while True:
        try:
            with guard("reading topic metadata", TOPIC_WAIT_SECONDS + 5 * REACH_SECONDS + GUARD_MARGIN_SECONDS):
                # the supervisor saw them: a broker that does not know one yet is waited for (not missing)
                found = describe_topics(settings.kafka, wanted, wait, TOPIC_PROPAGATION_SECONDS)
            break
        except (KafkaRefusedError, NotAuthorizedError, TopicMissingError) as exc:
            raise FatalError(str(exc)) from exc
        except BrokerError as exc:  # waited TOPIC_WAIT_SECONDS: go on waiting (not ready), quietly
            if stopping():
                raise CxPulseError(f"{name}: stopped before Kafka could be used") from exc
    routed, seen = found.partitions[topics.routed], found.partitions[topics.seen_ids]
    if seen != routed:
        raise FatalError(
            f"{topics.seen_ids} has {seen} partitions but {topics.routed} has {routed}: "
            "the seen-ids changelog needs one partition per routed partition"
        )
    return found


def slot_consumer(settings: Settings, name: str) -> Consumer:
    """The consumer of a slot: group ``<app>-hotpath``, read_committed, cooperative-sticky."""
    return new_consumer(
        settings.kafka,
        f"{settings.app_id}-hotpath",
        **{
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 2000,
            "max.poll.interval.ms": 300_000,
            # At low rates the broker holds a fetch until it has 64 KB or CXPULSE_FETCH_WAIT_MS passed, so a batch
            # gathers what came meanwhile: at 200 answers a second a batch every 50 ms was 20 transactions a
            # second, each a revision of every pane it touched through merge, the gauges, the detector, the store
            # and journeys (issue 35's quiet run: the worker 69% of a core; 33% with a 250 ms wait and the longer
            # batch windows of the journeys and the sink; on 2026-12-06 at 250 / 500 / 1000 ms: 21.5 / 16.1 /
            # 12.2%, event to result p50 522 / 913 / 1,682 ms: 1000 is the default).  At high rates 64 KB come at
            # once: event to result
            # at 20,000/s p50 546 ms, p99 801 ms (584 / 870 before any wait).  Held at the broker, not here: a
            # batch that waited in this loop across consume() calls (7edef33) lost the count step's commits after
            # broker restarts in the fault suite.
            "fetch.min.bytes": FETCH_MIN_BYTES,
            "fetch.wait.max.ms": settings.fetch_wait_ms,
            "client.id": f"{settings.app_id}-{name}",
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one slot: ``python -m streams.worker.hotpath SLOT METRICS_PORT`` (settings from the
    environment, CXPULSE_WORKER_ID set by the supervisor)."""
    args = list(sys.argv[1:] if argv is None else argv)
    slot, port = int(args[0]), int(args[1])
    tune_gc()
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
        serve(port, "127.0.0.1", metrics.page, readiness, metrics.progress_page)
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
