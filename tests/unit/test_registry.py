"""The Schema Registry path through confluent-kafka's own client (its in-memory ``mock://`` registry): subjects
by TopicNameStrategy, ids from the registry, and bytes that Confluent's AvroSerializer / AvroDeserializer and
cxpulse's codec read from each other."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.codec import (
    FEEDBACK,
    FEEDBACK_RAW,
    JOURNEY_INSTANCE,
    JOURNEY_INSTANCE_RAW,
    WINDOW_RESULT,
    WINDOW_RESULT_RAW,
    catalog_for,
    decode_batch,
    encode,
    encode_confluent,
)
from streams.config import Settings
from streams.core.windows import result_record, window_result
from streams.errors import SchemaError
from streams.produce import _DEFAULTS
from tests.support import event

pytestmark = pytest.mark.unit


def registry_catalog(url: str = "mock://cx") -> tuple[object, SchemaRegistryClient]:
    catalog = catalog_for(Settings(schema_registry_url=url))
    return catalog, catalog.client  # type: ignore[attr-defined]


def test_subjects_follow_the_topic_name_strategy_and_ids_come_from_the_registry() -> None:
    catalog, client = registry_catalog()
    other = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}
    client.register_schema("other-value", Schema(json.dumps(other), "AVRO"))  # takes the registry's first id
    feedback = catalog.id_for(FEEDBACK_RAW)  # type: ignore[attr-defined]
    results = catalog.id_for(WINDOW_RESULT_RAW)  # type: ignore[attr-defined]
    assert set(client.get_subjects()) == {"other-value", "cx.feedback-value", "cx.metrics.panes-value"}
    assert feedback != 1 or results != 2  # the registry's ids, not the local catalog's fixed ones
    assert client.get_latest_version("cx.feedback-value").schema_id == feedback


def test_bytes_from_confluents_serializer_are_read_by_the_hot_path_decoder() -> None:
    catalog, client = registry_catalog()
    serializer = AvroSerializer(client, json.dumps(FEEDBACK_RAW))
    record = {**_DEFAULTS, **event(event_id="x1", reason_codes=["hold_time"], customer_id="c9")}
    value = serializer(record, SerializationContext("cx.feedback", MessageField.VALUE))
    decoded = decode_batch([value], catalog)  # type: ignore[arg-type]
    assert decoded.failed == [] and decoded.records[0]["event_id"] == "x1"
    assert decoded.records[0]["reason_codes"] == ["hold_time"]
    assert decoded.schema_ids == [client.get_latest_version("cx.feedback-value").schema_id]


def test_results_cxpulse_writes_are_read_by_confluents_deserializer() -> None:
    from streams.core.aggregate import State

    catalog, client = registry_catalog()
    result = result_record(window_result(0, 60_000, "chat", "billing", "NPS", State(3, 2, 0, 1, 0, 0, 0, 0), 7))
    value = encode_confluent(result, WINDOW_RESULT, catalog.id_for(WINDOW_RESULT_RAW))  # type: ignore[attr-defined]
    read = AvroDeserializer(client)(value, SerializationContext("cx.metrics.panes", MessageField.VALUE))
    assert read["channel"] == "chat" and read["n"] == 3 and read["version"] == 7


def test_an_unreachable_registry_is_a_schema_error_naming_it() -> None:
    catalog, _ = registry_catalog("http://127.0.0.1:1")
    with pytest.raises(SchemaError, match=r"Schema Registry at http://127.0.0.1:1"):
        catalog.id_for(FEEDBACK_RAW)  # type: ignore[attr-defined]


def test_the_registrys_copy_of_a_current_schema_is_read_by_the_generated_decoders() -> None:
    """The registry's text of a current schema (docs and defaults its own) is the codec's parsed schema itself, so
    the generated decoders, chosen by identity, read its records; a schema that writes other bytes (a field
    moved) or reads other values (timestamp-micros) is parsed on its own and read by fastavro, with resolution."""
    catalog, client = registry_catalog()
    reworded = json.loads(json.dumps(FEEDBACK_RAW))
    reworded["doc"] = "worded by another team"
    reworded["fields"][0]["doc"] = "another doc"
    ids = {
        "feedback": catalog.id_for(FEEDBACK_RAW),  # type: ignore[attr-defined]
        "journeys": catalog.id_for(JOURNEY_INSTANCE_RAW),  # type: ignore[attr-defined]
        "reworded": client.register_schema("a-value", Schema(json.dumps(reworded), "AVRO")),
    }
    assert catalog.schema_for(ids["feedback"]) is FEEDBACK  # type: ignore[attr-defined]
    assert catalog.schema_for(ids["journeys"]) is JOURNEY_INSTANCE  # type: ignore[attr-defined]
    assert catalog.schema_for(ids["reworded"]) is FEEDBACK  # type: ignore[attr-defined]

    micros = json.loads(json.dumps(FEEDBACK_RAW))
    at = next(f for f in micros["fields"] if f["name"] == "occurred_at")
    at["type"] = {"type": "long", "logicalType": "timestamp-micros"}
    moved = json.loads(json.dumps(FEEDBACK_RAW))
    moved["fields"] = moved["fields"][1:] + moved["fields"][:1]
    for other in (micros, moved):
        schema_id = client.register_schema(f"{len(other['fields'])}-{id(other)}", Schema(json.dumps(other), "AVRO"))
        writer = catalog.schema_for(schema_id)  # type: ignore[attr-defined]
        assert writer is not FEEDBACK
        record = {**_DEFAULTS, **event(event_id="m1", customer_id="c1")}
        if other is micros:
            record["occurred_at"] = datetime.fromtimestamp(1_767_300_000, UTC)
        data = b"\x00" + schema_id.to_bytes(4, "big") + encode(record, writer)
        decoded = decode_batch([data], catalog)  # type: ignore[arg-type]
        assert decoded.failed == [] and decoded.records[0]["event_id"] == "m1"
