"""The generated FeedbackEvent decoder returns exactly what fastavro returns, and hands everything else to it:
decode_batch equals fastavro on generated records and on mutated, truncated and random bytes."""

from __future__ import annotations

import io
import random
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import (
    FEEDBACK,
    FEEDBACK_RAW,
    JOURNEY_INSTANCE,
    JOURNEY_INSTANCE_RAW,
    WINDOW_RESULT,
    WINDOW_RESULT_RAW,
    LocalCatalog,
    decode_batch,
    decode_confluent,
    decode_confluent_values,
    encode,
    encode_confluent,
    encode_fast,
    encode_journey_row,
)
from schemas.fast_avro import Malformed, compile_decoder, compile_encoder, compile_values_decoder
from streams.errors import DecodeError

FIELDS: dict[str, Any] = {f["name"]: f.get("default") for f in FEEDBACK_RAW["fields"]}
text = st.text(max_size=20)
optional_text = st.none() | text
optional_int = st.none() | st.integers(-(2**31), 2**31 - 1)
records = st.fixed_dictionaries(
    {
        "event_id": text,
        "occurred_at": st.integers(-(2**63), 2**63 - 1),
        "source": text,
        "channel": text,
        "journey": text,
        "touchpoint": optional_text,
        "metric": st.sampled_from(["NPS", "CES", "CSAT", "NLS", "CAS"]),
        "score": st.integers(-(2**31), 2**31 - 1),
        "scale_min": optional_int,
        "scale_max": optional_int,
        "customer_id": optional_text,
        "interaction_id": optional_text,
        "agent_id": optional_text,
        "team": optional_text,
        "reason_codes": st.lists(text, max_size=4),
        "comment": optional_text,
    }
)


def by_fastavro(data: bytes, schema: Any = FEEDBACK) -> Any:
    """What the plain fastavro path makes of the bytes: the record, or the fact that it fails."""
    buffer = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(buffer, schema, None)
    except Exception:  # noqa: BLE001 - any failure is "undecodable"
        return "fails"
    return record if buffer.tell() == len(data) else "fails"


def by_batch(data: bytes) -> Any:
    decoded = decode_batch([b"\x00\x00\x00\x00\x01" + data], LocalCatalog())
    return decoded.records[0] if decoded.records else "fails"


@settings(max_examples=300, deadline=None)
@given(records)
def test_generated_records_decode_like_fastavro(record: dict[str, Any]) -> None:
    data = encode(record, FEEDBACK)
    assert by_batch(data) == by_fastavro(data) == record


@settings(max_examples=500, deadline=None)
@given(records, st.data())
def test_mutated_and_truncated_bytes_decode_like_fastavro(record: dict[str, Any], data: st.DataObject) -> None:
    for candidate in mutated(encode(record, FEEDBACK), data):
        assert by_batch(candidate) == by_fastavro(candidate)


def mutated(encoded: bytes, data: st.DataObject) -> tuple[bytes, bytes, bytes]:
    """A record's bytes with 1-4 bytes set to values that are edges of varints, union branches, enum indexes and
    booleans (or any byte): whole, cut short, and with a byte too many."""
    raw = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        edges = [0x00, 0x01, 0x02, 0x03, 0x04, 0x06, 0x7F, 0x80, 0xFF, data.draw(st.integers(0, 255))]
        raw[at] = data.draw(st.sampled_from(edges))
    cut = data.draw(st.integers(0, len(raw)))
    return bytes(raw), bytes(raw[:cut]), bytes(raw) + b"\x00"


def test_random_bytes_decode_like_fastavro() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        assert by_batch(data) == by_fastavro(data)


def test_overlong_varints_and_bad_branches_fall_back() -> None:
    decoder = compile_decoder(FEEDBACK_RAW)
    assert decoder is not None
    base = encode({**FIELDS, "event_id": "e", "occurred_at": 1, "source": "s", "channel": "c", "journey": "j",
                   "metric": "CES", "score": 3}, FEEDBACK)  # fmt: skip
    assert decoder(base, 0)["score"] == 3
    overlong = base[:2] + b"\xff" * 10 + b"\x01" + base[3:]  # occurred_at as an 11-byte varint
    for bad in (overlong, base[:-1] + b"\x04"):  # ... and a union branch that does not exist
        try:
            decoder(bad, 0)
        except (Malformed, IndexError):
            pass
        else:
            raise AssertionError(f"{bad!r} decoded")


def test_unsupported_schemas_get_no_decoder() -> None:
    assert compile_decoder({"type": "record", "name": "R", "fields": [{"name": "x", "type": "bytes"}]}) is None
    assert compile_decoder({"type": "enum", "name": "E", "symbols": ["A"]}) is None


def test_batch_reports_each_failure_with_its_index() -> None:
    good = encode_confluent({**FIELDS, "event_id": "e", "occurred_at": 1, "source": "s", "channel": "c",
                             "journey": "j", "metric": "NPS", "score": 9}, FEEDBACK, 1)  # fmt: skip
    decoded = decode_batch(
        [good, b"", b"\x00\x00", b"{nope", good + b"x", b'{"a": ' + b"[" * 5000, good], LocalCatalog()
    )
    assert decoded.kept == [0, 6]
    reasons = dict(decoded.failed)
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert "trailing bytes" in reasons[4] and "nested too deeply" in reasons[5]
    assert decoded.schema_ids == [1, 1]


longs = st.integers(-(2**63), 2**63 - 1)
doubles = st.floats(allow_nan=False) | st.integers(-(2**53), 2**53)  # ints in a double field: fastavro writes them
results = st.fixed_dictionaries(
    {
        "window_start": longs,
        "window_end": longs,
        "channel": text,
        "journey": text,
        "metric": st.sampled_from(["NPS", "CES", "CSAT", "NLS", "CAS"]),
        **{name: longs for name in ("n", "promoters", "passives", "detractors", "positive", "high_effort")},
        "sum_x": doubles,
        "sum_x2": doubles,
        "value": doubles,
        "moe95": st.none() | doubles,
        "mean_normalized": doubles,
        "version": longs,
        "drivers": st.lists(st.fixed_dictionaries({"name": text, "n": longs, "high_effort": longs}), max_size=3),
        "quotes": st.lists(st.fixed_dictionaries({"occurred_at": longs, "event_id": text, "text": text}), max_size=3),
        "themes": st.dictionaries(text, longs, max_size=5),
    }
)


@settings(max_examples=300, deadline=None)
@given(results)
def test_generated_result_encoder_writes_fastavros_bytes(record: dict[str, Any]) -> None:
    assert encode_fast(record, WINDOW_RESULT) == encode(record, WINDOW_RESULT)


instances = st.fixed_dictionaries(
    {
        "customer_id": text,
        "journey": text,
        "start": longs,
        "end": longs,
        "first_channel": text,
        **{name: longs for name in ("answers", "contacts", "channels", "channel_switches", "touchpoints", "ces_n")},
        "ces_high_effort": longs,
        "first_x": doubles,
        "last_x": doubles,
        "last_nps": st.sampled_from([None, "promoter", "passive", "detractor"]),
        **{name: st.booleans() | st.sampled_from([0, 1]) for name in ("one_stop", "recoverable", "recovered")},
        "closed": st.booleans(),
        "version": longs,
        "deleted": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(instances)
def test_generated_journey_instance_encoder_writes_fastavros_bytes(record: dict[str, Any]) -> None:
    """Booleans and the optional NPS category too (an int where a boolean goes: fastavro's bytes)."""
    assert encode_fast(record, JOURNEY_INSTANCE) == encode(record, JOURNEY_INSTANCE)


@settings(max_examples=300, deadline=None)
@given(instances)
def test_journey_instances_given_as_rows_are_fastavros_bytes(record: dict[str, Any]) -> None:
    """encode_journey_row (the record's values in the schema's order, what the journeys process sends) writes
    what encode_confluent writes of the record as a dict, also where fastavro decides (an int as a boolean, a long
    beyond 64 bits)."""
    row = tuple(record[field["name"]] for field in JOURNEY_INSTANCE_RAW["fields"])
    assert encode_journey_row(row, 7) == encode_confluent(record, JOURNEY_INSTANCE, 7)


def test_a_positional_encoder_reads_the_fields_by_their_place() -> None:
    """compile_encoder(positional=True) reads a record's values by their place in the schema; a schema with an
    array of records gets no positional encoder (its items are mappings)."""
    encoder = compile_encoder(JOURNEY_INSTANCE_RAW, positional=True)
    assert encoder is not None
    names = [field["name"] for field in JOURNEY_INSTANCE_RAW["fields"]]
    record = dict.fromkeys(names, 1) | {"customer_id": "c", "journey": "j", "first_channel": "chat",
                                        "first_x": 0.25, "last_x": 1.0, "last_nps": "passive"}  # fmt: skip
    record |= {name: False for name in ("one_stop", "recoverable", "recovered", "closed", "deleted")}
    assert encoder(tuple(record[name] for name in names)) == encode(record, JOURNEY_INSTANCE)
    swapped = [record[name] for name in names]
    swapped[0], swapped[5] = swapped[5], swapped[0]  # a long where the customer goes
    try:
        encoder(tuple(swapped))
    except (Malformed, AttributeError):
        pass
    else:
        raise AssertionError("a row out of order encoded")
    assert compile_encoder(WINDOW_RESULT_RAW, positional=True) is None


def test_encoder_leaves_what_it_does_not_expect_to_fastavro() -> None:
    encoder = compile_encoder(WINDOW_RESULT_RAW)
    assert encoder is not None
    record = {name: 1 for name in ("window_start", "window_end", "n", "promoters", "passives", "detractors",
                                   "positive", "high_effort", "version")}  # fmt: skip
    record |= {"channel": "c", "journey": "j", "metric": "CES", "sum_x": 1.0, "sum_x2": 1.0, "value": 7.0,
               "moe95": None, "mean_normalized": 100.0, "drivers": [], "quotes": [],
               "themes": {"(any)": 2}}  # fmt: skip
    assert encoder(record) == encode(record, WINDOW_RESULT)
    for odd in ({"value": 7}, {"n": 2**64}, {"metric": "XYZ"}, {"themes": {"waiting": 1.0}}):
        try:
            encoder({**record, **odd})
        except (Malformed, KeyError):
            pass
        else:
            raise AssertionError(f"{odd} encoded")
    assert compile_encoder({"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]}) is None


def fastavro_long(n: int) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", n)
    return out.getvalue()


def test_longs_are_fastavros_bytes_at_every_length_and_around_now() -> None:
    """Values of 2^21 and more take the looked-up path (the varint of their high bits, kept per value of them):
    every boundary of a group of 7 bits, both signs, and epoch milliseconds of the same minutes and of decades
    apart, twice (the second time from the table), equal fastavro's bytes; text lengths of 63, 64 and beyond too."""
    from schemas.fast_avro import _long

    edges = [sign * (2**bits + delta) for bits in range(0, 63) for delta in (-1, 0, 1) for sign in (1, -1)]
    rng = random.Random(5)
    now = 1_767_300_000_000
    times = [now + rng.randrange(3_600_000) for _ in range(2000)] + [rng.randrange(2**45) for _ in range(2000)]
    values = [v for v in edges if -(2**63) <= v < 2**63] + [-(2**63), 2**63 - 1] + times
    for value in values + values:
        assert _long(value) == fastavro_long(value), value
    record: dict[str, Any] = {
        "start": now, "end": now + 60_000, "first_channel": "chat", "answers": 2, "contacts": 64, "channels": 1,
        "channel_switches": 0, "touchpoints": 0, "ces_n": 1, "ces_high_effort": 0, "first_x": 0.5, "last_x": 1.0,
        "last_nps": None, "one_stop": False, "recoverable": False, "recovered": False, "closed": False,
        "version": now, "deleted": False,
    }  # fmt: skip
    for size in (0, 63, 64, 127, 128, 300):
        one = {**record, "customer_id": "x" * size, "journey": "é" * size}  # é: two bytes
        assert encode_fast(one, JOURNEY_INSTANCE) == encode(one, JOURNEY_INSTANCE)


JOURNEY_DECODER = compile_decoder(JOURNEY_INSTANCE_RAW)
VALUES_DECODER = compile_values_decoder(JOURNEY_INSTANCE_RAW)


def by_codec(data: bytes, schema: Any) -> Any:
    """What a reader of a topic gets (decode_confluent with the reader schema: the generated decoder, else
    fastavro): the sink of journey instances; the KPI view, the effort detector and the sink of pane results."""
    schema_id = LocalCatalog.FIXED_IDS[schema["name"].rsplit(".", 1)[-1]]
    try:
        return decode_confluent(b"\x00" + schema_id.to_bytes(4, "big") + data, LocalCatalog(), schema)[1]
    except DecodeError:
        return "fails"


def by_values(data: bytes, schema: Any) -> Any:
    """What the ClickHouse sink gets of journey instances (decode_confluent_values with the reader schema): the
    record's values in the schema's order."""
    schema_id = LocalCatalog.FIXED_IDS[schema["name"].rsplit(".", 1)[-1]]
    try:
        return decode_confluent_values(b"\x00" + schema_id.to_bytes(4, "big") + data, LocalCatalog(), schema)
    except DecodeError:
        return "fails"


def values_of(record: Any) -> Any:
    """A JourneyInstance record's values in the schema's order ("fails" stays)."""
    return record if record == "fails" else [record[field["name"]] for field in JOURNEY_INSTANCE_RAW["fields"]]


def same(a: Any, b: Any) -> bool:
    """Equal, a NaN equal to a NaN (a double field may hold any 8 bytes)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b) and type(a) is type(b)


@settings(max_examples=300, deadline=None)
@given(instances)
def test_journey_instances_decode_like_fastavro(record: dict[str, Any]) -> None:
    data = encode(record, JOURNEY_INSTANCE)
    assert same(by_codec(data, JOURNEY_INSTANCE), by_fastavro(data, JOURNEY_INSTANCE))
    assert same(
        JOURNEY_DECODER(data, 0), by_fastavro(data, JOURNEY_INSTANCE)
    )  # well-formed: the generated decoder reads it
    assert by_codec(data, JOURNEY_INSTANCE)["last_x"] == float(record["last_x"])
    assert same(by_values(data, JOURNEY_INSTANCE), values_of(by_fastavro(data, JOURNEY_INSTANCE)))
    assert same(VALUES_DECODER(data, 0), values_of(by_fastavro(data, JOURNEY_INSTANCE)))  # the generated one reads it


@settings(max_examples=500, deadline=None)
@given(instances, st.data())
def test_mutated_and_truncated_journey_instances_decode_like_fastavro(
    record: dict[str, Any], data: st.DataObject
) -> None:
    """Booleans of 2 or 0xFF (fastavro: true), union branches and enum indexes out of range, cut doubles."""
    for candidate in mutated(encode(record, JOURNEY_INSTANCE), data):
        assert same(by_codec(candidate, JOURNEY_INSTANCE), by_fastavro(candidate, JOURNEY_INSTANCE))
        assert same(by_values(candidate, JOURNEY_INSTANCE), values_of(by_fastavro(candidate, JOURNEY_INSTANCE)))


def test_values_of_an_older_writer_schema_are_resolved_to_the_current_one() -> None:
    """A journey instance written with another schema (here one without ``deleted``) goes through fastavro and
    comes out in the current schema's order, the missing field at its default; bytes that are not a record fail
    with DecodeError, as decode_confluent's."""
    older = {**JOURNEY_INSTANCE_RAW, "fields": [f for f in JOURNEY_INSTANCE_RAW["fields"] if f["name"] != "deleted"]}
    catalog = LocalCatalog({9: older})
    record = {field["name"]: 0 for field in older["fields"]}
    record.update(customer_id="c", journey="j", first_channel="chat", first_x=0.5, last_x=1.0, last_nps="passive")
    record.update(one_stop=True, recoverable=False, recovered=False, closed=True)
    data = b"\x00" + (9).to_bytes(4, "big") + encode(record, fastavro.parse_schema(older))
    assert decode_confluent_values(data, catalog, JOURNEY_INSTANCE) == [*record.values(), False]
    with pytest.raises(DecodeError):
        decode_confluent_values(data[:-3], catalog, JOURNEY_INSTANCE)


def test_the_journey_instance_decoder_is_generated_and_reads_doubles_booleans_and_the_category() -> None:
    decoder = JOURNEY_DECODER
    assert decoder is not None
    record: dict[str, Any] = {
        "customer_id": "c", "journey": "j", "start": 1, "end": 2, "first_channel": "chat", "answers": 2,
        "contacts": 1, "channels": 1, "channel_switches": 0, "touchpoints": 0, "ces_n": 1, "ces_high_effort": 0,
        "first_x": 0.25, "last_x": float("inf"), "last_nps": "detractor", "one_stop": True, "recoverable": True,
        "recovered": False, "closed": True, "version": 9, "deleted": False,
    }  # fmt: skip
    assert decoder(encode(record, JOURNEY_INSTANCE), 0) == record
    assert decoder(b"\xff" + encode(record, JOURNEY_INSTANCE), 1) == record  # from an offset
    flipped = encode({**record, "last_nps": None}, JOURNEY_INSTANCE)
    assert decoder(flipped, 0)["last_nps"] is None
    big = {"type": "record", "name": "R", "fields": [{"name": "e", "type": {"type": "enum", "name": "E",
           "symbols": [f"S{i}" for i in range(65)]}}]}  # fmt: skip
    assert compile_decoder(big) is None  # an index past 63 takes two bytes: fastavro's


RESULT_DECODER = compile_decoder(WINDOW_RESULT_RAW)


@settings(max_examples=300, deadline=None)
@given(results)
def test_window_results_decode_like_fastavro(record: dict[str, Any]) -> None:
    """Arrays of records (drivers, quotes) and the map of longs (themes) too."""
    data = encode(record, WINDOW_RESULT)
    expected = by_fastavro(data, WINDOW_RESULT)
    assert RESULT_DECODER is not None and same(RESULT_DECODER(data, 0), expected)
    assert same(by_codec(data, WINDOW_RESULT), expected)
    assert expected["drivers"] == record["drivers"] and expected["themes"] == record["themes"]


@settings(max_examples=500, deadline=None)
@given(results, st.data())
def test_mutated_and_truncated_window_results_decode_like_fastavro(record: dict[str, Any], data: st.DataObject) -> None:
    for candidate in mutated(encode(record, WINDOW_RESULT), data):
        assert same(by_codec(candidate, WINDOW_RESULT), by_fastavro(candidate, WINDOW_RESULT))


def test_blocks_with_their_size_and_keys_that_come_again_read_as_fastavro_reads_them() -> None:
    """A writer may put an array's or a map's items in several blocks, each a negative count and its size in
    bytes (fastavro writes one block of a positive count); a map's key that comes again replaces its value."""
    from schemas.fast_avro import _long

    record: dict[str, Any] = {
        "window_start": 0, "window_end": 60_000, "channel": "chat", "journey": "billing", "metric": "CES", "n": 2,
        "promoters": 0, "passives": 0, "detractors": 0, "positive": 1, "high_effort": 1, "sum_x": 1.0,
        "sum_x2": 1.0, "value": 4.0, "moe95": None, "mean_normalized": 50.0, "version": 3,
        "drivers": [], "quotes": [], "themes": {},
    }  # fmt: skip
    head = encode(record, WINDOW_RESULT)[:-3]  # the three empty blocks' zeros
    driver = lambda name, n: _long(len(name)) + name.encode() + _long(n) + _long(n)  # noqa: E731
    first, second = driver("hold", 2) + driver("transfer", 1), driver("ivr", 1)
    drivers = _long(-2) + _long(len(first)) + first + _long(-1) + _long(len(second)) + second + b"\x00"
    theme = lambda key, n: _long(len(key)) + key.encode() + _long(n)  # noqa: E731
    themes = _long(2) + theme("waiting", 1) + theme("waiting", 5) + _long(1) + theme("rude", 2) + b"\x00"
    data = head + drivers + b"\x00" + themes
    read = RESULT_DECODER(data, 0)  # type: ignore[misc]
    assert same(read, by_fastavro(data, WINDOW_RESULT))
    assert [d["name"] for d in read["drivers"]] == ["hold", "transfer", "ivr"]
    assert read["themes"] == {"waiting": 5, "rude": 2}
