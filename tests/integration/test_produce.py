"""`cxpulse produce` against the real broker: every line or record arrives as sent; --validate refuses."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import fastavro

from schemas.codec import FEEDBACK_RAW, LocalCatalog, decode_feedback
from streams.kafka import consumer
from tests.support import RunningBroker, cxpulse_command, event

CONSUME_TIMEOUT_SECONDS = 60.0

LINES = [
    json.dumps(event(event_id="a", customer_id="c1")),
    json.dumps(event(event_id="b", metric="XYZ")),  # bad_metric: still sent without --validate
    "not json at all",  # undecodable: still sent as it is
    json.dumps(event(event_id="c", score=99)),  # score_out_of_range
    json.dumps(event(event_id="d")),
]


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes]]:
    reader = consumer(bootstrap, f"produce-{uuid.uuid4().hex}")
    reader.subscribe([topic])
    got: list[tuple[bytes | None, bytes]] = []
    try:
        while len(got) < expected:
            batch = reader.consume(num_messages=expected - len(got), timeout=CONSUME_TIMEOUT_SECONDS)
            assert batch, f"no message within {CONSUME_TIMEOUT_SECONDS} s; got {len(got)} of {expected}"
            got.extend((m.key(), m.value()) for m in batch if m.error() is None)
        extra = reader.consume(num_messages=10, timeout=1.0)  # nothing more than expected was sent
        assert [m for m in extra if m.error() is None] == []
    finally:
        reader.close()
    return got


def _produce(broker: RunningBroker, topic: str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cxpulse_command("produce", str(path), "--topic", topic, "--bootstrap", broker.bootstrap, *extra),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_json_lines_are_sent_as_they_are(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory()
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(LINES) + "\n\n")
    done = _produce(kafka_broker, topic, source)
    assert done.returncode == 0, done.stderr
    assert f"sent 5 events to {topic}" in done.stderr
    got = _consume_all(kafka_broker.bootstrap, topic, 5)
    assert [value.decode() for _, value in got] == LINES  # one partition: order kept
    assert got[0][0] == b"c1" and got[3][0] == b"c"  # keyed by customer_id, else event_id


def test_validate_refuses_invalid_events(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory()
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(LINES) + "\n")
    done = _produce(kafka_broker, topic, source, "--validate")
    assert done.returncode == 3
    refused = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(r["reason"], r["position"]) for r in refused] == [
        ("bad_metric", "line 2"),
        ("undecodable", "line 3"),
        ("score_out_of_range", "line 4"),
    ]
    got = _consume_all(kafka_broker.bootstrap, topic, 2)
    assert [json.loads(value)["event_id"] for _, value in got] == ["a", "d"]


def test_avro_records_arrive_in_the_confluent_wire_format(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory(partitions=2)
    records = [event(event_id=f"r{i}", score=1 + i % 7, reason_codes=["x"] * (i % 2)) for i in range(40)]
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(FEEDBACK_RAW), records)
    source = tmp_path / "events.avro"
    source.write_bytes(buffer.getvalue())
    done = _produce(kafka_broker, topic, source)
    assert done.returncode == 0, done.stderr
    decoded = [decode_feedback(value, LocalCatalog()) for _, value in _consume_all(kafka_broker.bootstrap, topic, 40)]
    assert {schema_id for schema_id, _ in decoded} == {1}
    by_id = {record["event_id"]: record for _, record in decoded}
    assert [(by_id[r["event_id"]]["score"], by_id[r["event_id"]]["occurred_at"]) for r in records] == [
        (r["score"], r["occurred_at"]) for r in records
    ]


def test_unreachable_broker_fails_with_a_message(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(LINES[0] + "\n")
    done = subprocess.run(
        cxpulse_command("produce", str(source), "--bootstrap", "127.0.0.1:1"),
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert done.returncode == 1
    assert "produce: cannot reach Kafka at 127.0.0.1:1" in done.stderr


def test_missing_topic_fails_with_a_message(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(LINES[0] + "\n")
    done = _produce(kafka_broker, "no-such-topic", source)
    assert done.returncode == 1
    assert "topic no-such-topic does not exist" in done.stderr
