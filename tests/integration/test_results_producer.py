"""The Faust processes' producer on a real broker: ``ResultsProducer.produce_many`` (one librdkafka produce_batch
call per chunk) puts each message where ``produce`` would, in order, reports each delivery to the local copies, and
refuses what librdkafka refuses."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition

from streams.agents.local_tables import LocalTables
from streams.agents.results import ResultsProducer
from streams.kafka import consumer, read_range
from streams.topics import TopicSpec, ensure_topics
from tests.support import RunningBroker

pytestmark = pytest.mark.integration


def new_topic(broker: RunningBroker, suffix: str = "", partitions: int = 3) -> str:
    topic = f"test-{uuid.uuid4().hex[:10]}{suffix}"
    ensure_topics(broker.bootstrap, [TopicSpec(topic, partitions, {})])
    return topic


def read_all(broker: RunningBroker, topic: str, ends: dict[int, int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """Each partition's (key, value) in offset order, read up to ``ends``."""
    reader = consumer(broker.bootstrap, f"read-{uuid.uuid4().hex[:8]}")
    try:
        out: dict[int, list[tuple[bytes, bytes]]] = {partition: [] for partition in ends}
        for message in read_range(reader, topic, {p: (0, end) for p, end in ends.items()}, 30):
            out[message.partition() or 0].append((message.key() or b"", message.value() or b""))
        return out
    finally:
        reader.close()


def ends_of(broker: RunningBroker, topic: str, partitions: int = 3) -> dict[int, int]:
    reader = consumer(broker.bootstrap, f"ends-{uuid.uuid4().hex[:8]}")
    try:
        return {p: reader.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in range(partitions)}
    finally:
        reader.close()


def test_messages_to_one_partition_all_land_there_in_order(kafka_broker: RunningBroker) -> None:
    """confluent-kafka 2.16's produce_batch ignores a message's own partition (confluentinc/confluent-kafka-python
    #2069): the batch's is given.  A local queue of 20 messages, below two default chunks: chunks of 5, and
    without the wait for room between them a chunk would meet a full queue."""
    topic = new_topic(kafka_broker)
    results = ResultsProducer(kafka_broker.bootstrap, **{"queue.buffering.max.messages": 20})
    assert (results.chunk, results.queue_room) == (5, 10)
    messages = [(f"v{n}".encode(), f"k{n}".encode()) for n in range(40)]
    results.produce_many(topic, messages, 2)
    results.flush_now()
    assert results.queued == 40
    assert read_all(kafka_broker, topic, ends_of(kafka_broker, topic)) == {
        0: [],
        1: [],
        2: [(key, value) for value, key in messages],
    }


def test_keyed_messages_go_to_the_partitions_produce_picks(kafka_broker: RunningBroker) -> None:
    one, many = new_topic(kafka_broker), new_topic(kafka_broker)
    results = ResultsProducer(kafka_broker.bootstrap)
    messages = [(f"v{n}".encode(), f"customer-{n}|billing|{n * 7}".encode()) for n in range(200)]
    for value, key in messages:
        results.produce(one, value, key)
    results.produce_many(many, messages)
    results.flush_now()
    by_produce = read_all(kafka_broker, one, ends_of(kafka_broker, one))
    assert read_all(kafka_broker, many, ends_of(kafka_broker, many)) == by_produce
    assert sum(1 for rows in by_produce.values() if rows) == 3  # spread by key, not all on one


def test_the_deliveries_reach_the_local_copies(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    changelog = new_topic(kafka_broker, "-state-changelog", partitions=2)
    local = LocalTables(kafka_broker.bootstrap, tmp_path)
    items, offset = local.load(changelog, 1)  # opened: what is acknowledged from now on is copied
    assert list(items) == [] and offset is None
    results = ResultsProducer(kafka_broker.bootstrap, local)
    results.produce_many(changelog, [(b"[1]", b'"1|a"'), (b"[2]", b'"1|b"'), (b"[3]", b'"1|a"')], 1)
    results.flush_now()
    assert local.checkpoint() == 3
    items, offset = local.load(changelog, 1)
    assert dict(items) == {b'"1|a"': b"[3]", b'"1|b"': b"[2]"} and offset == 2
    local.close()


def test_a_message_librdkafka_refuses_raises(kafka_broker: RunningBroker) -> None:
    topic = new_topic(kafka_broker)
    results = ResultsProducer(kafka_broker.bootstrap)
    with pytest.raises(KafkaException, match="too large|MSG_SIZE_TOO_LARGE"):
        results.produce_many(topic, [(b"small", b"k"), (b"x" * 2_000_000, b"k")], 0)
