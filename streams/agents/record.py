"""One consumed message as every consumer of cxpulse hands it on (the Faust agents, the ClickHouse sink's librdkafka
loop, the read-backs).  Faust-free: the sink process imports it without Faust (streams/processes/)."""

from __future__ import annotations

from typing import Any, NamedTuple

Headers = tuple[tuple[str, bytes | None], ...]


class Record(NamedTuple):
    """One input message: where it is, its value, its Kafka timestamp and its headers."""

    partition: int
    offset: int
    value: bytes
    timestamp_ms: int = 0  # the message's Kafka timestamp (0: unknown)
    headers: Headers = ()
    key: bytes | None = None


def headers_of(raw: Any) -> Headers:
    """Message headers as pairs (Faust gives a list or a dict, librdkafka a list or None)."""
    pairs = raw.items() if isinstance(raw, dict) else raw or ()
    return tuple((str(name), value) for name, value in pairs)
