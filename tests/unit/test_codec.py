"""The codec: schemaless Avro, the Confluent wire format, the JSON form, and schema evolution."""

from __future__ import annotations

import copy
import struct
from typing import Any

import pytest

from schemas.codec import (
    FEEDBACK,
    FEEDBACK_RAW,
    LocalCatalog,
    decode,
    decode_confluent,
    decode_feedback,
    encode,
    encode_confluent,
    feedback_from_json,
    feedback_to_json,
    parse,
)
from streams.errors import DecodeError
from tests.support import event


def full(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {name["name"]: None for name in FEEDBACK_RAW["fields"]}
    record.update(event(reason_codes=["hold_time", "transfer"], touchpoint="ivr"), **overrides)
    return record


def test_schemaless_roundtrip_keeps_epoch_millis() -> None:
    record = full()
    assert decode(encode(record, FEEDBACK), FEEDBACK) == record


def test_confluent_wire_format_roundtrip() -> None:
    catalog = LocalCatalog()
    data = encode_confluent(full(), FEEDBACK, catalog.id_for(FEEDBACK_RAW))
    assert data[:5] == struct.pack(">bI", 0, 1)
    assert decode_confluent(data, catalog, FEEDBACK) == (1, full())


def test_unknown_schema_id_is_undecodable() -> None:
    data = struct.pack(">bI", 0, 999) + encode(full(), FEEDBACK)
    with pytest.raises(DecodeError, match="unknown schema id 999"):
        decode_feedback(data, LocalCatalog())


@pytest.mark.parametrize("data", [b"\x02", b"garbage that is not avro", encode(full(), FEEDBACK)[:-3], b"\x00\x00"])
def test_truncated_or_foreign_bytes_are_undecodable(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_feedback(data, LocalCatalog())


def test_trailing_bytes_are_undecodable() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(encode(full(), FEEDBACK) + b"\x00", FEEDBACK)


def test_decode_feedback_detects_all_three_forms() -> None:
    catalog = LocalCatalog()
    record = full()
    assert decode_feedback(encode(record, FEEDBACK), catalog) == (None, record)
    assert decode_feedback(encode_confluent(record, FEEDBACK, 1), catalog) == (1, record)
    schema_id, from_json = decode_feedback(feedback_to_json(record).encode(), catalog)
    assert schema_id is None and from_json == record


def _older_writer() -> dict[str, Any]:
    """FeedbackEvent as a first version had it: no touchpoint, team or reason codes."""
    raw = copy.deepcopy(FEEDBACK_RAW)
    raw["fields"] = [f for f in raw["fields"] if f["name"] not in ("touchpoint", "team", "reason_codes")]
    return raw


def _newer_writer() -> dict[str, Any]:
    """A later FeedbackEvent with an extra optional field (language) that this reader does not know."""
    raw = copy.deepcopy(FEEDBACK_RAW)
    raw["fields"].append({"name": "language", "type": ["null", "string"], "default": None})
    return raw


def test_current_reader_reads_an_older_writer() -> None:
    old = parse(_older_writer())
    record = {k: v for k, v in full().items() if k not in ("touchpoint", "team", "reason_codes")}
    catalog = LocalCatalog(extra={7: _older_writer()})
    _, got = decode_feedback(encode_confluent(record, old, 7), catalog)
    assert got == {**record, "touchpoint": None, "team": None, "reason_codes": []}


def test_current_reader_reads_a_newer_writer() -> None:
    new = parse(_newer_writer())
    catalog = LocalCatalog(extra={8: _newer_writer()})
    _, got = decode_feedback(encode_confluent({**full(), "language": "fr"}, new, 8), catalog)
    assert got == full()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"score": "7"}', "score must be an integer"),
        ('{"score": true}', "score must be an integer"),
        ('{"channel": 3}', "channel must be a string"),
        ('{"reason_codes": "x"}', "reason_codes"),
        ('{"occurred_at": "2023-11-14T22:13:20"}', "no UTC offset"),
        ('{"occurred_at": "yesterday"}', "not ISO-8601"),
        ("[1, 2]", "JSON object"),
        ("{nope", "not JSON"),
    ],
)
def test_json_type_errors_are_undecodable(text: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        feedback_from_json(text)
