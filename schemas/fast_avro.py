"""Avro code specialised to one record schema, generated at import: the decoders of the hot path (FeedbackEvent),
of the readers of pane results and journey instances, and the encoders of merge's results and the journeys.

Why: fastavro interprets the schema for every record (dictionary lookups of field types, string compares of
type names); for a FeedbackEvent that is ~97,000 CPU instructions, two thirds of the hot path's cost
(callgrind, 15,000 records).  Straight-line Python generated from the schema needs ~52,000.

Only what fastavro would return is ever returned: the generated code accepts strictly well-formed bytes (union
branches 0/1, enum indexes in range, non-negative lengths within the message, varints below 2**63, valid
UTF-8, no trailing bytes) and raises :class:`Malformed` on anything else, and then the caller decodes the same
bytes with fastavro, which decides (its result or its error).  ``tests/unit/test_fast_avro.py`` checks
the equivalence on generated records and on mutated, truncated and random bytes.  Varints longer than 10 bytes
or beyond 64 bits are left to fastavro (it reads 64 bits).

Supported field types: string, int, long (logical types ignored), double, boolean, enum (up to 64 symbols), array
of string, array of records of strings and longs, map of longs, and unions of null with one of string, int, long,
double or an enum: a FeedbackEvent; a JourneyInstance, which the ClickHouse sink reads (3.0 us a record against
fastavro's 4.1); a WindowResult, which the KPI view, the effort detector and the sink read (3.0 against 3.9 us an
NPS result, 4.2 against 5.4 a CES result with two drivers; 2026-12-06).  :func:`compile_decoder` returns None for
any other schema.
:func:`compile_block_decoder` reads the records of an Avro container block the same way (``cxpulse replay``).

:func:`compile_encoder` does the reverse for records of string, int, long, double, boolean, enum, unions of null
with double, long or an enum, arrays of records of strings and longs, and maps of longs (a WindowResult: 8.4 us
a result with fastavro's writer, 4.9 with the generated one; a JourneyInstance: see codec.encode_fast); any
value it does not expect (a type, an out-of-range long, an unknown symbol) raises and the caller writes the
record with fastavro instead, so the bytes are always fastavro's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

Decoder = Callable[[bytes, int], dict[str, Any]]
BlockDecoder = Callable[[bytes, int], list[dict[str, Any]]]
ValuesDecoder = Callable[[bytes, int], list[Any]]  # a record's values in the schema's order
Encoder = Callable[[Any], bytes]  # a record: a mapping, or its values in the schema's order (``positional``)


_DOUBLE_AT = struct.Struct("<d").unpack_from


class Malformed(Exception):  # noqa: N818 - a signal to fall back, not an error for people
    """The bytes are not a strictly well-formed record of the schema: decode them with fastavro instead."""


_VARINT = """\
{i}b = data[pos]
{i}pos += 1
{i}if b < 0x80:
{i}    {var} = (b >> 1) ^ -(b & 1)
{i}else:
{i}    {var} = b & 0x7F
{i}    shift = 7
{i}    while b & 0x80:
{i}        b = data[pos]
{i}        pos += 1
{i}        {var} |= (b & 0x7F) << shift
{i}        shift += 7
{i}    if shift > 70 or {var} >= 18446744073709551616:
{i}        raise Malformed
{i}    {var} = ({var} >> 1) ^ -({var} & 1)
"""

_STRING = (
    _VARINT.replace("{var}", "n")
    + """\
{i}end = pos + n
{i}if n < 0 or end > size:
{i}    raise Malformed
{i}{var} = data[pos:end].decode()
{i}pos = end
"""
)


def _kind(field_type: Any) -> str | None:
    """The generator's name for a field type, or None when it is not supported."""
    if isinstance(field_type, dict):
        if field_type.get("type") == "enum":  # its index read as one byte: up to 64 symbols
            return "enum" if len(field_type.get("symbols", ())) <= 64 else None
        if field_type.get("type") == "array" and field_type.get("items") == "string":
            return "array_string"
        if field_type.get("type") == "array":  # of records of strings and longs (a WindowResult's drivers, quotes)
            items = field_type.get("items")
            if not isinstance(items, dict) or items.get("type") != "record":
                return None
            flat = all(_kind(f["type"]) in ("string", "long") and f["name"].isidentifier() for f in items["fields"])
            return "array_record" if flat else None
        if field_type.get("type") == "map":
            return "map_long" if _kind(field_type.get("values")) == "long" else None
        field_type = field_type.get("type")
    if field_type in ("string", "double", "boolean"):
        return str(field_type)
    if field_type in ("int", "long"):
        return "long"
    if isinstance(field_type, list) and len(field_type) == 2 and field_type[0] == "null":
        inner = _kind(field_type[1])
        return f"optional_{inner}" if inner in ("string", "long", "double", "enum") else None
    return None


def _blocks(i: str, read_item: str) -> str:
    """The code that reads an array's or a map's blocks: a count (negative: followed by the block's size in
    bytes, which is skipped), then that many items (``read_item``, indented one level more than ``i``), until a
    count of 0."""
    return (
        f"{i}while True:\n"
        + _VARINT.format(i=i + "    ", var="count")
        + f"{i}    if count == 0:\n{i}        break\n{i}    if count < 0:\n{i}        count = -count\n"
        + _VARINT.format(i=i + "        ", var="_")
        + f"{i}    for _ in range(count):\n"
        + read_item
    )


def _value_code(kind: str, field_type: Any, i: str, var: str) -> str:
    """The code that reads one value of a kind that is not a union or an array into ``var``."""
    if kind == "string":
        return _STRING.format(i=i, var=var)
    if kind == "long":
        return _VARINT.format(i=i, var=var)
    if kind == "double":  # 8 bytes little-endian, as fastavro reads them (NaN and infinities included)
        return f"{i}if pos + 8 > size:\n{i}    raise Malformed\n{i}{var} = _DOUBLE_AT(data, pos)[0]\n{i}pos += 8\n"
    if kind == "boolean":  # fastavro reads any byte but 0 as true: only 0 and 1 are taken here
        return f"{i}b = data[pos]\n{i}pos += 1\n{i}if b > 1:\n{i}    raise Malformed\n{i}{var} = b == 1\n"
    symbols = tuple(field_type["symbols"])  # an enum: its index, one byte for up to 64 symbols
    return (
        f"{i}b = data[pos]\n{i}pos += 1\n{i}if b & 1 or b >= {2 * len(symbols)}:\n{i}    raise Malformed\n"
        f"{i}{var} = {symbols!r}[b >> 1]\n"
    )


def _field_code(name: str, field_type: Any, kind: str) -> str:
    var = f"v_{name}"
    i = "    "
    if kind.startswith("optional_"):
        inner = _value_code(kind.removeprefix("optional_"), field_type[1], i * 2, var)
        return (
            f"{i}b = data[pos]\n{i}pos += 1\n{i}if b == 0:\n{i}    {var} = None\n{i}elif b == 2:\n"
            + inner
            + f"{i}else:\n{i}    raise Malformed\n"
        )
    if kind == "array_string":
        read = _STRING.format(i=i * 3, var="item") + f"{i * 3}{var}.append(item)\n"
        return f"{i}{var} = []\n" + _blocks(i, read)
    if kind == "array_record":
        fields = field_type["items"]["fields"]
        read = "".join(_value_code(str(_kind(f["type"])), f["type"], i * 3, f"i_{f['name']}") for f in fields)
        item = "{" + ", ".join(f"{f['name']!r}: i_{f['name']}" for f in fields) + "}"
        return f"{i}{var} = []\n" + _blocks(i, read + f"{i * 3}{var}.append({item})\n")
    if kind == "map_long":  # (key, value) pairs; a key that comes again replaces the value, as in fastavro
        read = _STRING.format(i=i * 3, var="key") + _VARINT.format(i=i * 3, var="item") + f"{i * 3}{var}[key] = item\n"
        return f"{i}{var} = {{}}\n" + _blocks(i, read)
    return _value_code(kind, field_type, i, var)


def compile_decoder(schema: Mapping[str, Any]) -> Decoder | None:
    """A decoder for records of ``schema`` (raw JSON form), or None when a field type is not supported.

    ``decode(data, pos)`` reads the record starting at ``pos`` to the end of ``data``; it returns the record
    as fastavro would, or raises Malformed (or IndexError, UnicodeDecodeError on truncated or invalid bytes).
    """
    return _compile(schema, whole=True)  # type: ignore[return-value]


def compile_values_decoder(schema: Mapping[str, Any]) -> ValuesDecoder | None:
    """:func:`compile_decoder`'s decoder, returning a record's values in the schema's order (a list) instead of a
    dict: what the ClickHouse sink makes a row of (a journey instance revision: no dict made and read again)."""
    return _compile(schema, whole=True, positional=True)  # type: ignore[return-value]


def compile_block_decoder(schema: Mapping[str, Any]) -> BlockDecoder | None:
    """A decoder for ``count`` consecutive records of ``schema`` (the body of an Avro container block), or None
    when a field type is not supported.

    ``decode(data, count)`` reads ``count`` records from the start of ``data``, which must end with the last of
    them; it returns them as fastavro would, or raises as :func:`compile_decoder`'s decoder does.
    """
    return _compile(schema, whole=False)  # type: ignore[return-value]


def _compile(
    schema: Mapping[str, Any], *, whole: bool, positional: bool = False
) -> Decoder | BlockDecoder | ValuesDecoder | None:
    if schema.get("type") != "record":
        return None
    if whole:
        lines = ["def decode(data, pos):", "    size = len(data)"]
    else:
        lines = ["def decode(data, records):", "    size = len(data)", "    pos = 0", "    out = []",
                 "    for _record in range(records):"]  # fmt: skip
    names = []
    for field in schema.get("fields", []):
        name = field["name"]
        kind = _kind(field["type"])
        if kind is None or not name.isidentifier():
            return None
        names.append(name)
        code = _field_code(name, field["type"], kind)
        lines.append(code if whole else "\n".join("    " + line for line in code.splitlines()))
    if positional:
        record = "[" + ", ".join(f"v_{name}" for name in names) + "]"
    else:
        record = "{" + ", ".join(f"{name!r}: v_{name}" for name in names) + "}"
    if whole:
        lines += ["    if pos != size:\n        raise Malformed", f"    return {record}"]
    else:
        lines += [f"        out.append({record})", "    if pos != size:\n        raise Malformed", "    return out"]
    namespace: dict[str, Any] = {"Malformed": Malformed, "_DOUBLE_AT": _DOUBLE_AT}
    kind_of = "decoder" if whole else "block decoder"
    exec(compile("\n".join(lines), f"<{kind_of} of {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - our own generated code
    decoder: Decoder | BlockDecoder | ValuesDecoder = namespace["decode"]
    return decoder


# --- encoding ----------------------------------------------------------------------------------------------

_SMALL = [bytes([(n << 1) & 0xFF]) for n in range(64)]  # zigzag of 0..63 in one byte
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_DOUBLE = struct.Struct("<d").pack


_HIGH: dict[int, bytes] = {}  # varint of z >> 21 -> its bytes: epoch milliseconds share them for ~17 minutes
_HIGH_KEPT = 4096


def _long(n: int) -> bytes:
    """A zigzag varint, as fastavro writes a long (Malformed outside 64 bits, where fastavro decides).

    A value of 2^21 and more (timestamps, versions: three in every journey instance and pane result) is its three
    low groups of 7 bits, each with the continuation bit, then the varint of the rest, looked up: the loop took
    ~1 µs for an epoch-millisecond value (py-spy of the journeys process: ``_long`` 5.9% of its samples)."""
    if 0 <= n < 64:
        return _SMALL[n]
    if n < _LONG_MIN or n > _LONG_MAX:
        raise Malformed
    z = (n << 1) ^ (n >> 63)
    if z >= 0x200000:
        high = z >> 21
        rest = _HIGH.get(high)
        if rest is None:
            if len(_HIGH) >= _HIGH_KEPT:
                _HIGH.clear()
            rest = _HIGH[high] = _varint(high)
        return bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, ((z >> 14) & 0x7F) | 0x80)) + rest
    return _varint(z)


def _varint(z: int) -> bytes:
    """The base-128 varint of z >= 0, low groups first."""
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _encode_kind(field_type: Any) -> str | None:
    if isinstance(field_type, dict):
        if field_type.get("type") == "enum":
            return "enum"
        if field_type.get("type") == "array":
            items = field_type.get("items")
            if not isinstance(items, dict) or items.get("type") != "record":
                return None
            if all(_encode_kind(f["type"]) in ("string", "long") for f in items["fields"]):
                return "array_record"
            return None
        if field_type.get("type") == "map":
            return "map_long" if _encode_kind(field_type.get("values")) == "long" else None
        field_type = field_type.get("type")
    if field_type in ("string", "double", "boolean"):
        return str(field_type)
    if field_type in ("int", "long"):
        return "long"
    if isinstance(field_type, list) and len(field_type) == 2 and field_type[0] == "null":
        inner = _encode_kind(field_type[1])
        return f"optional_{inner}" if inner in ("double", "long", "enum") else None
    return None


def _encode_field(name: str, field_type: Any, kind: str, get: str | None = None) -> str:
    get = get or f"r[{name!r}]"
    if kind == "array_record":  # one block of items, then the 0 that ends the array
        lines = [
            f"    items = {get}",
            "    if items:",
            "        out.append(_long(len(items)))",
            "        for r2 in items:",
        ]
        for field in field_type["items"]["fields"]:
            inner = _encode_field(field["name"], field["type"], str(_encode_kind(field["type"])))
            lines.extend("        " + line.replace("r[", "r2[") for line in inner.splitlines())
        lines.append("    out.append(b'\\x00')")
        return "\n".join(lines)
    if kind == "map_long":  # one block of (key, value) pairs, then the 0 that ends the map
        return "\n".join([
            f"    items = {get}",
            "    if items:",
            "        out.append(_long(len(items)))",
            "        for k, v in items.items():",
            "            k = k.encode()",
            "            if type(v) is not int:",
            "                raise Malformed",
            "            out.append(_long(len(k)))",
            "            out.append(k)",
            "            out.append(_long(v))",
            "    out.append(b'\\x00')",
        ])  # fmt: skip
    if kind == "long":  # 0..63 (counts, most numbers of a record) from the table, without a call
        check = f"    v = {get}\n    if type(v) is not int:\n        raise Malformed\n"
        return check + "    out.append(_SMALL[v] if 0 <= v < 64 else _long(v))"
    if kind == "double":
        return f"    v = {get}\n    if type(v) is not float:\n        raise Malformed\n    out.append(_DOUBLE(v))"
    if kind == "boolean":  # fastavro writes any truthy value as true; only a bool is taken here
        check = f"    v = {get}\n    if type(v) is not bool:\n        raise Malformed\n"
        return check + "    out.append(b'\\x01' if v else b'\\x00')"
    if kind == "string":
        length = "    n = len(v)\n    out.append(_SMALL[n] if n < 64 else _long(n))\n"
        return f"    v = {get}.encode()\n{length}    out.append(v)"
    if kind == "enum":
        index = {symbol: i for i, symbol in enumerate(field_type["symbols"])}
        return f"    out.append(_long({index!r}[{get}]))"
    if kind == "optional_enum":
        index = {symbol: i for i, symbol in enumerate(field_type[1]["symbols"])}
        return f"    v = {get}\n    out.append(b'\\x00' if v is None else b'\\x02' + _long({index!r}[v]))"
    inner = "_long(v)" if kind == "optional_long" else "_DOUBLE(v)"
    check = "int" if kind == "optional_long" else "float"
    return (
        f"    v = {get}\n    if v is None:\n        out.append(b'\\x00')\n    else:\n"
        f"        if type(v) is not {check}:\n            raise Malformed\n        out.append(b'\\x02' + {inner})"
    )


def compile_encoder(schema: Mapping[str, Any], *, positional: bool = False) -> Encoder | None:
    """An encoder of records of ``schema`` (raw JSON form) to schemaless Avro bytes, or None when a field type
    is not supported.  It raises (Malformed, KeyError, TypeError, AttributeError, IndexError) on a value it does
    not expect.  ``positional``: a record is given as its fields' values in the schema's order (a tuple: no dict
    built per record)."""
    if schema.get("type") != "record":
        return None
    lines = ["def encode(r):", "    out = []"]
    for at, field in enumerate(schema.get("fields", [])):
        kind = _encode_kind(field["type"])
        if kind is None or (positional and kind == "array_record"):
            return None
        lines.append(_encode_field(field["name"], field["type"], kind, f"r[{at}]" if positional else None))
    lines.append("    return b''.join(out)")
    namespace: dict[str, Any] = {"Malformed": Malformed, "_long": _long, "_DOUBLE": _DOUBLE, "_SMALL": _SMALL}
    exec(compile("\n".join(lines), f"<encoder of {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - our own generated code
    encoder: Encoder = namespace["encode"]
    return encoder
