"""A hot-path slot's state of a routed partition, restored when the partition is assigned (or a batch failed):
where its next batch starts, and the event ids it has counted.

The committed offsets are read first: with read_committed they are stable, i.e. any transaction of a previous
owner is over, so the seen-ids changelog read next holds everything that owner committed.  The remembered ids are
a streams.worker.seen.SeenIds per routed partition: fingerprints in sorted runs on local disk
(``<data dir>/hotpath/<worker id>-<slot>/seen-ids/p<N>``) up to a checkpoint into the changelog (same partition
number), which the restore reads on from there, to its high watermark.  Retried while Kafka is away, for at most
RESTORE_SECONDS; a transaction of our own that keeps the committed offsets unreadable is ended
(:meth:`SeenRestore.end_our_transaction`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.agents.health import CallGuard
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings
from streams.errors import CxPulseError
from streams.kafka import Kafka, read_range
from streams.kafka import consumer as new_consumer
from streams.worker.records import FROM_THE_START, decode_seen
from streams.worker.seen import Origin, SeenIds
from streams.worker.transactor import GUARD_MARGIN_SECONDS, KAFKA_TIMEOUT_SECONDS, FatalError, Transactor

LOG = logging.getLogger("cxpulse.hotpath")
RESTORE_SECONDS = 120.0  # reading one assignment's seen ids back (retried while Kafka is away)
UNSTABLE_SECONDS = 30.0  # committed offsets unreadable this long in a restore: a new producer ends our transaction


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

    def short(partition: int, stable: int) -> None:
        if partition not in held:
            held[partition] = (stable, time.monotonic())
            LOG.info("restoring %s[%d]: waiting for a transaction to finish (last stable offset %d, end %d)",
                     topic, partition, stable, ends[partition])  # fmt: skip

    def stuck(pending: set[int]) -> None:
        for partition, (stable, since) in held.items():
            if partition in pending and time.monotonic() - since > stuck_seconds:
                raise CxPulseError(
                    f"restoring {topic}[{partition}]: a transaction holds its last stable offset at {stable} "
                    f"(below its end {ends[partition]}) for more than {stuck_seconds:.0f} s"
                )

    ranges = {partition: (start, ends[partition]) for partition, start in starts.items()}
    try:
        for message in read_range(reader, topic, ranges, seconds, short=short, each_poll=stuck):
            store, offset = stores[message.partition() or 0], message.offset() or 0
            for bucket, ids in decode_seen(message.value() or b"{}").items():
                store.remember(bucket, ids, offset)
            entries += 1
    finally:
        reader.close()
    return entries


class SeenRestore:
    """The routed partitions' remembered ids of one slot, and their restore (see the module docstring).
    ``seen`` is shared with the batch step (streams.worker.ingest.Ingest.dedup)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        topic: str,
        seen_topic: str,
        state_dir: Path,
        bucket_ms: int,
        guard: CallGuard,
        metrics: WorkerMetrics,
        transactor: Transactor,
        consumer: Callable[[], Consumer],
        stopping: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.name = name
        self.topic = topic  # the routed topic: its committed offsets are where the batches start
        self.seen_topic = seen_topic
        self.state_dir = state_dir
        self.bucket_ms = bucket_ms
        self.guard = guard
        self.metrics = metrics
        self.transactor = transactor
        self.consumer = consumer
        self.stopping = stopping
        self.cluster_id = ""
        self.seen: dict[int, SeenIds] = {}  # assigned routed partition -> its remembered ids

    def restore(self, partitions: list[int]) -> dict[int, int]:
        """Committed offsets (where each partition's next batch starts; FROM_THE_START for none) and seen ids of
        ``partitions``, retried while Kafka is away (RESTORE_SECONDS)."""
        started = time.monotonic()
        deadline, renew_at = started + RESTORE_SECONDS, started + UNSTABLE_SECONDS
        while True:
            try:
                with self.guard("restoring state", RESTORE_SECONDS + GUARD_MARGIN_SECONDS):
                    return self._once(partitions)
            except (KafkaException, CxPulseError) as exc:
                if isinstance(exc, FatalError):
                    raise
                if time.monotonic() > deadline or self.stopping():
                    raise CxPulseError(f"{self.name}: restoring partitions {partitions}: {exc}") from exc
                LOG.debug("%s: restoring partitions %s failed (%s); retrying", self.name, partitions, exc)
                if time.monotonic() > renew_at:
                    renew_at = deadline
                    self.end_our_transaction(partitions, exc)
                self.transactor.sleep(1.0)

    def end_our_transaction(self, partitions: list[int], exc: Exception) -> None:
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
        id the group coordinator holds pending.  Aborted, it changes no committed offset
        (:meth:`Transactor.clear_pending_offsets`)."""
        LOG.warning(
            "%s: the committed offsets of partitions %s are still unreadable after %.0f s (%s); a new producer "
            "ends any transaction of %s the broker holds open",
            self.name,
            sorted(partitions),
            UNSTABLE_SECONDS,
            exc,
            self.transactor.transactional_id,
        )
        offsets = [TopicPartition(self.topic, partition, 0) for partition in partitions]
        self.transactor.clear_pending_offsets(offsets, self.consumer().consumer_group_metadata())

    def _once(self, partitions: list[int]) -> dict[int, int]:
        """Where each partition's next batch starts (its committed offset), and its remembered ids: the local
        state (streams.worker.seen) if it can be trusted, and the changelog past its checkpoint."""
        begun = time.monotonic()
        wanted = [TopicPartition(self.topic, p) for p in partitions]
        committed = self.consumer().committed(wanted, KAFKA_TIMEOUT_SECONDS)
        started = time.monotonic()
        ends = changelog_ends(self.settings.kafka, self.seen_topic, partitions)
        stores = {partition: self._store(partition, ends[partition]) for partition in partitions}
        for store in stores.values():
            store.forget_tail()
        local = sum(len(store) for store in stores.values())
        left = max(1.0, RESTORE_SECONDS - (time.monotonic() - begun))  # within this attempt's guard
        entries = read_seen_tails(self.settings.kafka, self.seen_topic, stores, ends, left)
        cutoff = int(time.time() * 1000) - self.settings.retention_seconds * 1000
        for store in stores.values():
            store.expire(cutoff)
        self.seen.update(stores)
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
        return {tp.partition: tp.offset if tp.offset >= 0 else FROM_THE_START for tp in committed}

    def _store(self, partition: int, changelog_end: int) -> SeenIds:
        """The partition's remembered ids: held already (a rewind), or opened from the local state."""
        store = self.seen.get(partition)
        if store is not None:
            return store
        origin = Origin(self.cluster_id, self.seen_topic, partition, self.bucket_ms)
        return SeenIds.open(self.state_dir / "seen-ids" / f"p{partition}", origin, changelog_end)

    def flush(self, partitions: Iterable[int], always: bool) -> None:
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

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their ids written to disk and let go."""
        partitions = list(partitions)
        self.flush(partitions, always=True)
        for partition in partitions:
            self.seen.pop(partition, None)
