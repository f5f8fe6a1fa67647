"""The hot path's restore on the real broker: committed offsets that a transaction of its own transactional.id
keeps unstable (KIP-447) are freed by a new producer, not waited for until the slot gives up; the seen-ids
changelog is read to its high watermark, past transactions that are not finished."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from schemas.codec import catalog_for
from streams.agents.metrics import WorkerMetrics
from streams.errors import CxPulseError
from streams.kafka import consumer, producer
from streams.topics import ensure_topics, internal_topic_specs, internal_topics
from streams.worker import seen_restore
from streams.worker.hotpath import HotPath
from streams.worker.records import encode_seen
from streams.worker.seen import Origin, SeenIds
from tests.support import RunningBroker
from tests.workers import make_pipeline


def test_a_restore_held_up_by_our_own_open_transaction_ends_it_with_a_new_producer(
    kafka_broker: RunningBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer with the slot's transactional.id (a predecessor the broker still thinks alive) sent offsets for
    the hot path's group in a transaction it never ends (timeout 300 s): the group's offsets are unstable.  The
    restore gives up after RESTORE_SECONDS (here 60 s); before that, after UNSTABLE_SECONDS (here 3 s), a new
    producer fences the predecessor, its transaction is aborted, and the restore reads the offsets committed
    before it."""
    monkeypatch.setattr(seen_restore, "UNSTABLE_SECONDS", 3.0)
    monkeypatch.setattr(seen_restore, "RESTORE_SECONDS", 60.0)
    settings = make_pipeline(kafka_broker.bootstrap, tmp_path).settings
    ensure_topics(settings.kafka, internal_topic_specs(settings, settings.partitions))  # what the worker creates
    group, topic = f"{settings.app_id}-hotpath", internal_topics(settings).routed  # the count step's input
    committer = consumer(settings.kafka, group)
    committer.commit(offsets=[TopicPartition(topic, 1, 4)], asynchronous=False)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    hot = HotPath(settings, "w1", 0, catalog_for(settings), metrics)

    predecessor = producer(
        settings.kafka, **{"transactional.id": hot.transactor.transactional_id, "transaction.timeout.ms": 300_000}
    )
    predecessor.init_transactions(30)
    predecessor.begin_transaction()
    predecessor.send_offsets_to_transaction([TopicPartition(topic, 1, 9)], committer.consumer_group_metadata(), 30)
    committer.close()

    hot._restore([0, 1, 2])  # noqa: SLF001 - the step under test, as the rebalance callback runs it

    assert hot.ingest.starts[1] == 4  # the aborted transaction's offset (9) never counted
    assert registry.get_sample_value("cxpulse_worker_producer_reinits_total") == 1
    with pytest.raises(KafkaException) as fenced:
        predecessor.commit_transaction(30)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].txn_requires_abort()
    hot.transactor.producer.flush(0)
    hot.consumer.close()


def test_the_seen_ids_restore_reads_past_a_transaction_that_is_not_finished(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    """A seen-ids entry committed after the first record of a transaction that is still open (another producer's,
    or one whose markers are not written yet, as after a broker restart): a read_committed client's end of the
    partition is the last stable offset, before both.  The restore takes the high watermark as the end, waits
    for the transaction instead of stopping there (and says so when it waits too long), then holds the
    committed ids and none of the aborted ones."""
    settings = make_pipeline(kafka_broker.bootstrap, tmp_path).settings
    ensure_topics(settings.kafka, internal_topic_specs(settings, settings.partitions))
    topic = internal_topics(settings).seen_ids
    bucket = 3_600_000

    def transactional(name: str) -> Producer:
        made = producer(settings.kafka, **{"transactional.id": f"{settings.app_id}-{name}"})
        made.init_transactions(30)
        made.begin_transaction()
        return made

    open_one = transactional("open")
    open_one.produce(topic, encode_seen({bucket: ["aborted-1"]}), partition=0)
    open_one.flush(30)
    committed_one = transactional("committed")
    committed_one.produce(topic, encode_seen({bucket: ["kept-1", "kept-2"]}), partition=0)
    committed_one.commit_transaction(30)

    stable = consumer(settings.kafka, "probe", **{"isolation.level": "read_committed"})
    assert stable.get_watermark_offsets(TopicPartition(topic, 0), 30, False)[1] == 0  # the last stable offset
    stable.close()
    ends = seen_restore.changelog_ends(settings.kafka, topic, [0])
    assert ends == {0: 3}  # the open record, the committed one, its marker

    def store() -> SeenIds:
        return SeenIds(tmp_path / "seen", Origin("cluster", topic, 0, bucket))

    waiting = store()
    with pytest.raises(CxPulseError, match="a transaction holds its last stable offset at 0"):
        seen_restore.read_seen_tails(settings.kafka, topic, {0: waiting}, ends, seconds=60.0, stuck_seconds=2.0)

    open_one.abort_transaction(30)
    restored = store()
    assert seen_restore.read_seen_tails(settings.kafka, topic, {0: restored}, ends, seconds=60.0) == 1
    assert (len(restored), restored.tail) == (2, 2)  # kept-1 and kept-2; the aborted entry never read
