"""`cxpulse produce` against the real broker: every line or record arrives as sent; --validate refuses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import fastavro
import pytest

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


def test_every_line_arrives_byte_for_byte(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """A producer tool sends each line's bytes as they are: invalid UTF-8, a Windows line end, no newline at the
    end of the file (issue 11: \\xff\\xfe arrived as ef bf bd ef bf bd, a trailing \\r was dropped)."""
    topic = topic_factory()
    lines = [
        json.dumps(event(event_id="crlf")).encode() + b"\r",
        b"\xff\xfe not utf-8",
        b"caf\xc3\xa9 not json\r",
        json.dumps(event(event_id="last")).encode(),
    ]
    source = tmp_path / "bytes.jsonl"
    source.write_bytes(b"\n".join(lines))  # no newline after the last line
    done = _produce(kafka_broker, topic, source)
    assert done.returncode == 0, done.stderr
    got = _consume_all(kafka_broker.bootstrap, topic, len(lines))
    assert [value for _, value in got] == lines


def test_validate_refuses_invalid_events(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory()
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(LINES) + "\n")
    done = _produce(kafka_broker, topic, source, "--validate")
    assert done.returncode == 3
    refused = [json.loads(line) for line in done.stdout.splitlines()]  # machine output on stdout only
    assert not [line for line in done.stderr.splitlines() if line.startswith("{")]
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


@pytest.mark.parametrize("command", [["produce", "EVENTS"], ["topics"], ["read", "results"], ["simulate"]])
def test_unreachable_broker_fails_with_a_message_in_seconds(tmp_path: Path, command: list[str]) -> None:
    """Nothing listens at the address: said within seconds (it took 10.25 s: a metadata timeout), one line."""
    source = tmp_path / "events.jsonl"
    source.write_text(LINES[0] + "\n")
    args = [str(source) if arg == "EVENTS" else arg for arg in command]
    started = time.monotonic()
    done = subprocess.run(
        cxpulse_command(*args, "--bootstrap", "127.0.0.1:1"),
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    took = time.monotonic() - started
    assert done.returncode == 1
    assert f"{command[0]}: cannot reach Kafka at 127.0.0.1:1: " in done.stderr or (
        command[0] == "topics" and "cannot reach Kafka at 127.0.0.1:1: " in done.stderr
    )
    assert "Connection refused" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert took < 6.0, took  # Python's start included; the refusal itself is given 1 s


def test_missing_topic_fails_with_a_message(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(LINES[0] + "\n")
    done = _produce(kafka_broker, "no-such-topic", source)
    assert done.returncode == 1
    assert "topic no-such-topic does not exist" in done.stderr


def test_a_corrupt_container_says_what_was_sent_and_exits_1(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory()
    records = [event(event_id=f"r{i}") for i in range(3000)]
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(FEEDBACK_RAW), records, sync_interval=4000)  # many blocks
    data = buffer.getvalue()
    source = tmp_path / "truncated.avro"
    source.write_bytes(data[: len(data) * 2 // 3])
    done = _produce(kafka_broker, topic, source)
    assert done.returncode == 1, done.stderr
    sent = int(done.stderr.split("sent ")[1].split(" events")[0])
    assert 0 < sent < 3000
    assert "not sent" in done.stderr and "after record" in done.stderr and "Traceback" not in done.stderr
    assert len(_consume_all(kafka_broker.bootstrap, topic, sent)) == sent


def test_a_record_the_schema_cannot_carry_is_reported_not_a_traceback(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """A writer schema whose metric enum has a symbol the current FeedbackEvent lacks, at record 9,000."""
    topic = topic_factory()
    schema = json.loads(json.dumps(FEEDBACK_RAW))
    for field in schema["fields"]:
        if field["name"] == "metric" and isinstance(field["type"], dict):
            field["type"]["symbols"] = [*field["type"]["symbols"], "XYZ"]
    records = [event(event_id=f"r{i}", metric="XYZ" if i == 8999 else "CES") for i in range(9500)]
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(schema), records)
    source = tmp_path / "enum.avro"
    source.write_bytes(buffer.getvalue())
    done = _produce(kafka_broker, topic, source)
    assert done.returncode == 1, done.stderr
    assert "sent 9499 events" in done.stderr and "record 9000" in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_schema_registry_is_a_one_line_error(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """The registry option used to crash (ModuleNotFoundError: authlib): confluent-kafka[schemaregistry] now."""
    topic = topic_factory()
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(FEEDBACK_RAW), [event(event_id="r1")])
    source = tmp_path / "events.avro"
    source.write_bytes(buffer.getvalue())
    done = subprocess.run(
        cxpulse_command("produce", str(source), "--topic", topic, "--bootstrap", kafka_broker.bootstrap),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "CXPULSE_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"},
    )
    assert done.returncode == 1, done.stderr
    assert "Schema Registry at http://127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr
