"""``cxpulse read``: a topic's records as JSON lines, decoded, for people and for programs.

Each record becomes ``{"partition", "offset", "timestamp", "key", "value"[, "headers"]}``: ``value`` is the
decoded record for the Confluent wire format (WindowResult, EffortAlert, FeedbackEvent, by schema id) and for
JSON; the bytes in base64 (``value_base64``) for anything else.  Timestamps are epoch ms.  Reads committed
records only, from the beginning (or the end) of every partition, without a consumer group's commit; stops at
the end unless ``follow``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from schemas.codec import SchemaCatalog, decode_confluent
from streams.errors import BrokerError
from streams.kafka import DRAIN_POLL_SECONDS, Kafka, consumer
from streams.topics import partition_count


def record_json(message: Message, catalog: SchemaCatalog) -> dict[str, Any]:
    """One message as a JSON-ready dict (see the module docstring)."""
    out: dict[str, Any] = {
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp()[1],
        "key": _text(message.key()),
    }
    value = message.value()
    if value is None:
        out["value"] = None  # a tombstone
    elif value[:1] == b"\x00":
        try:
            schema_id, record = decode_confluent(value, catalog, None)
            out["value"], out["schema_id"] = record, schema_id
        except Exception:  # noqa: BLE001 - not decodable after all: the bytes, for a person to look at
            out["value_base64"] = base64.b64encode(value).decode()
    else:
        try:
            out["value"] = json.loads(value)
        except (ValueError, RecursionError):
            out["value_base64"] = base64.b64encode(value).decode()
    headers = message.headers()
    if headers:
        pairs = headers.items() if isinstance(headers, dict) else headers
        out["headers"] = {str(name): _text(raw) for name, raw in pairs}
    return out


def _text(raw: bytes | str | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def read(
    kafka: Kafka,
    topic: str,
    catalog: SchemaCatalog,
    *,
    from_end: bool = False,
    follow: bool = False,
    limit: int | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Iterator[dict[str, Any]]:
    """The topic's records, partition by partition interleaved as they arrive."""
    partitions = partition_count(kafka, topic)
    reader = consumer(
        kafka,
        f"cxpulse-read-{uuid.uuid4().hex[:8]}",
        **{"enable.partition.eof": True, "isolation.level": "read_committed", "enable.auto.commit": False},
    )
    start = OFFSET_END if from_end else OFFSET_BEGINNING
    reader.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    ended: set[int] = set()
    count = 0
    try:
        while not stopping():
            for message in reader.consume(num_messages=500, timeout=DRAIN_POLL_SECONDS):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ended.add(message.partition() or 0)
                        continue
                    raise BrokerError(f"reading {topic}: {error.str()}")
                ended.discard(message.partition() or 0)
                yield record_json(message, catalog)
                count += 1
                if limit is not None and count >= limit:
                    return
            if not follow and len(ended) >= partitions:
                return
    except KafkaException as exc:
        raise BrokerError(f"reading {topic}: {exc.args[0].str()}") from exc
    finally:
        reader.close()
