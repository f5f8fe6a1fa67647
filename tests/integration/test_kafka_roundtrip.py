"""Avro-encoded FeedbackEvents through the real broker: produced with confluent-kafka, consumed back equal."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from schemas.codec import FEEDBACK, FEEDBACK_RAW, LocalCatalog, decode_feedback, encode_confluent
from streams.kafka import consumer, producer
from tests.support import RunningBroker, event

CONSUME_TIMEOUT_SECONDS = 60.0


def _records(count: int) -> list[dict[str, Any]]:
    fields = [f["name"] for f in FEEDBACK_RAW["fields"]]
    records = []
    for i in range(count):
        record = dict.fromkeys(fields)
        record.update(
            event(
                event_id=f"e-{i}",
                occurred_at=1_700_000_000_000 + i,
                score=1 + i % 7,
                customer_id=f"c-{i % 17}",
                reason_codes=["hold"] if i % 3 else [],
            )
        )
        records.append(record)
    return records


def test_avro_events_roundtrip_through_kafka(kafka_broker: RunningBroker, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=3)
    catalog = LocalCatalog()
    schema_id = catalog.id_for(FEEDBACK_RAW)
    sent = _records(500)
    out = producer(kafka_broker.bootstrap)
    failures: list[str] = []
    for record in sent:
        out.produce(
            topic,
            encode_confluent(record, FEEDBACK, schema_id),
            key=record["customer_id"].encode(),
            on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
        )
    assert out.flush(30) == 0
    assert failures == []

    reader = consumer(kafka_broker.bootstrap, f"roundtrip-{uuid.uuid4().hex}")
    reader.subscribe([topic])
    received: list[dict[str, Any]] = []
    try:
        while len(received) < len(sent):
            batch = reader.consume(num_messages=500, timeout=CONSUME_TIMEOUT_SECONDS)
            assert batch, f"no message within {CONSUME_TIMEOUT_SECONDS} s; got {len(received)} of {len(sent)}"
            for message in batch:
                assert message.error() is None, message.error()
                got_id, record = decode_feedback(message.value(), catalog)
                assert got_id == schema_id
                received.append(record)
    finally:
        reader.close()
    assert sorted(received, key=lambda r: r["event_id"]) == sorted(sent, key=lambda r: r["event_id"])
