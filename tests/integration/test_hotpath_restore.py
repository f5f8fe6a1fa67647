"""The hot path's restore on the real broker: committed offsets that a transaction of its own transactional.id
keeps unstable (KIP-447) are freed by a new producer, not waited for until the slot gives up."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from schemas.codec import catalog_for
from streams.agents.metrics import WorkerMetrics
from streams.kafka import consumer, producer
from streams.topics import ensure_topics, internal_topic_specs
from streams.worker import hotpath
from streams.worker.hotpath import HotPath
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
    monkeypatch.setattr(hotpath, "UNSTABLE_SECONDS", 3.0)
    monkeypatch.setattr(hotpath, "RESTORE_SECONDS", 60.0)
    settings = make_pipeline(kafka_broker.bootstrap, tmp_path).settings
    ensure_topics(settings.kafka, internal_topic_specs(settings, settings.partitions))  # what the worker creates
    group, topic = f"{settings.app_id}-hotpath", settings.feedback_topic
    committer = consumer(settings.kafka, group)
    committer.commit(offsets=[TopicPartition(topic, 1, 4)], asynchronous=False)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    hot = HotPath(settings, "w1", 0, catalog_for(settings), metrics)

    predecessor = producer(
        settings.kafka, **{"transactional.id": hot.transactional_id, "transaction.timeout.ms": 300_000}
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
    hot.producer.flush(0)
    hot.consumer.close()
