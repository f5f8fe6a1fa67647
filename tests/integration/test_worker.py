"""The stream worker against the real broker: its latest pane results equal `cxpulse replay` of the same
events, to the last count; dead letters carry their reason and source."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from schemas.codec import WINDOW_RESULT, LocalCatalog, decode_confluent
from streams.broker import die_with_parent
from streams.config import Settings
from streams.kafka import admin_client, consumer, producer
from streams.produce import produce_file
from streams.replay import replay_file
from streams.synth import realistic_events
from streams.topics import ensure_topics, topic_specs
from streams.windows import WindowResult, result_json
from tests.support import RunningBroker, cxpulse_command, event, free_ports, stop_process

CONVERGE_SECONDS = 120.0  # the worker must reach replay's numbers within this long
PARTITIONS = 3


@dataclass
class Pipeline:
    """Fresh topics and settings for one worker test."""

    settings: Settings
    env: dict[str, str]


def make_pipeline(bootstrap: str, tmp_path: Path, **overrides: Any) -> Pipeline:
    """Fresh topics and settings (plus the env a worker process reads them from) for one worker test."""
    tag = uuid.uuid4().hex[:10]
    values = {
        "kafka_bootstrap": bootstrap,
        "app_id": f"cxw-{tag}",
        "feedback_topic": f"test-{tag}-feedback",
        "dlq_topic": f"test-{tag}-dlq",
        "results_topic": f"test-{tag}-panes",
        "alerts_topic": f"test-{tag}-alerts",
        "partitions": PARTITIONS,
        "data_dir": tmp_path / "state",
        "metrics_port": 0,
        **overrides,
    }
    settings = Settings(**values)
    ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    env = {
        **os.environ,
        **{f"CXPULSE_{k.upper()}": json.dumps(v) if isinstance(v, tuple) else str(v) for k, v in values.items()},
    }
    return Pipeline(settings, env)


@pytest.fixture()
def pipeline(kafka_broker: RunningBroker, tmp_path: Path) -> Pipeline:
    return make_pipeline(kafka_broker.bootstrap, tmp_path)


def start_worker(
    pipeline: Pipeline, log: Path, data_dir: Path | None = None, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = {**pipeline.env, "CXPULSE_METRICS_PORT": str(metrics_port)}
    if data_dir is not None:
        env["CXPULSE_DATA_DIR"] = str(data_dir)
    with log.open("ab") as out:
        return spawn_worker(env, out)


def spawn_worker(env: dict[str, str], out: Any, command: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`cxpulse worker` (or ``command``) as a child that dies with the test session, whatever happens to it."""
    return subprocess.Popen(
        command or cxpulse_command("worker"),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
    )


def mixed_events(path: Path, count: int) -> None:
    """Realistic events of the last hours (duplicates and invalid ones included), some arriving late, plus
    lines that are not events at all."""
    start = int(time.time() * 1000) - 3 * 3600 * 1000
    events = list(realistic_events(count, seed=11, start_ms=start, per_second=count / 7200))
    rng = random.Random(5)
    late = rng.sample(range(len(events)), count // 20)
    ordered = [e for i, e in enumerate(events) if i not in set(late)] + [events[i] for i in late]
    lines = [json.dumps(e) for e in ordered]
    lines[10:10] = ["not json", json.dumps({**ordered[0], "event_id": "bad-metric", "metric": "XYZ"})]
    path.write_text("\n".join(lines) + "\n")


def expected_results(path: Path, pane_seconds: int) -> tuple[dict[tuple[str, ...], dict[str, Any]], int]:
    replay = replay_file(path, pane_seconds * 1000, lambda dead: None)
    expected = {}
    for result in replay.results():
        record = result_json(result)
        record.pop("version")
        expected[(record["window_start"], record["channel"], record["journey"], record["metric"])] = record
    return expected, sum(replay.stats.dead_letters.values())


def latest_results(bootstrap: str, topic: str, until: Any, deadline: float) -> dict[tuple[str, ...], dict[str, Any]]:
    """Consume the results topic, keeping the highest version per group, until ``until(latest)`` holds."""
    reader = consumer(bootstrap, f"check-{uuid.uuid4().hex}")
    reader.subscribe([topic])
    latest: dict[tuple[str, ...], tuple[int, dict[str, Any]]] = {}
    catalog = LocalCatalog()
    try:
        while time.monotonic() < deadline:
            for message in reader.consume(num_messages=1000, timeout=1.0):
                if message.error() is not None:
                    continue
                _, record = decode_confluent(message.value(), catalog, WINDOW_RESULT)
                as_json = result_json(WindowResult(**record))
                version = as_json.pop("version")
                key = (as_json["window_start"], as_json["channel"], as_json["journey"], as_json["metric"])
                if key not in latest or latest[key][0] < version:
                    latest[key] = (version, as_json)
            current = {k: v for k, (_, v) in latest.items()}
            if until(current):
                return current
        return {k: v for k, (_, v) in latest.items()}
    finally:
        reader.close()


def dead_letters(bootstrap: str, topic: str, expected: int, deadline: float) -> list[dict[str, bytes]]:
    """The headers of every message on the DLQ, once ``expected`` of them have arrived (or at the deadline), plus
    any extra ones that arrive within a further second (so a duplicate shows)."""
    reader = consumer(bootstrap, f"dlq-{uuid.uuid4().hex}")
    reader.subscribe([topic])
    seen: list[dict[str, bytes]] = []
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            seen.extend(dict(m.headers() or []) for m in reader.consume(expected, 1.0) if m.error() is None)
        seen.extend(dict(m.headers() or []) for m in reader.consume(expected, 1.0) if m.error() is None)
    finally:
        reader.close()
    return seen


def assert_each_once(letters: list[dict[str, bytes]], invalid: int) -> None:
    sources = [(h["source_partition"], h["source_offset"]) for h in letters]
    assert (len(sources), len(set(sources))) == (invalid, invalid)  # every invalid event, each once


def test_stream_equals_replay(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    port = free_ports(1)[0]
    worker = start_worker(pipeline, tmp_path / "worker.log", metrics_port=port)
    try:
        produce_file(source, pipeline.settings.kafka_bootstrap, pipeline.settings.feedback_topic, LocalCatalog())
        deadline = time.monotonic() + CONVERGE_SECONDS
        got = latest_results(
            pipeline.settings.kafka_bootstrap,
            pipeline.settings.results_topic,
            lambda current: current == expected,
            deadline,
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        missing = expected.keys() - got.keys()
        wrong = [k for k in expected.keys() & got.keys() if expected[k] != got[k]]
        assert (len(missing), len(wrong), len(got.keys() - expected.keys())) == (0, 0, 0), (
            f"missing {sorted(missing)[:3]}, wrong {[(expected[k], got[k]) for k in wrong[:2]]}"
        )
        letters = dead_letters(pipeline.settings.kafka_bootstrap, pipeline.settings.dlq_topic, invalid, deadline)
        assert_each_once(letters, invalid)
        assert {h["reason"].decode() for h in letters} >= {"undecodable", "bad_metric", "missing_field"}
        assert all(h["source_topic"].decode() == pipeline.settings.feedback_topic for h in letters)
        # the worker's own counters agree: every answer is hours old, so each counted one is late
        sample = _scrape(port)
        assert sample["cxpulse_worker_late_events_total"] == sum(r["n"] for r in expected.values())
        lettered = sum(v for k, v in sample.items() if k.startswith("cxpulse_worker_dead_letters_total"))
        assert lettered == invalid
        # every table's changelog is a compacted topic with the pipeline's partitions
        assert _changelog_configs(pipeline.settings) == {
            f"{pipeline.settings.app_id}-{table}-changelog": ("compact", PARTITIONS)
            for table in ("source-panes", "seen-ids", "panes", "positions")
        }
    finally:
        stop_process(worker)


def _changelog_configs(settings: Settings) -> dict[str, tuple[str, int]]:
    admin = admin_client(settings.kafka_bootstrap)
    names = [
        t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{settings.app_id}-") and "changelog" in t
    ]
    metadata = admin.list_topics(timeout=10).topics
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    out = {}
    for resource, future in admin.describe_configs(resources).items():
        policy = future.result(timeout=30)["cleanup.policy"].value
        out[resource.name] = (policy, len(metadata[resource.name].partitions))
    return out


def _split(path: Path, parts: int) -> list[Path]:
    lines = path.read_text().splitlines(keepends=True)
    size = -(-len(lines) // parts)
    chunks = []
    for i in range(parts):
        chunk = path.with_name(f"chunk-{i}.jsonl")
        chunk.write_text("".join(lines[i * size : (i + 1) * size]))
        chunks.append(chunk)
    return chunks


def test_kill_9_three_times_still_equals_replay(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 8000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log)
    try:
        for round_, chunk in enumerate(_split(source, 4)):
            produce_file(chunk, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
            if round_ == 3:
                break
            # wait until the worker has published something of this round, then kill it mid-stream
            deadline = time.monotonic() + CONVERGE_SECONDS
            seen_before = len(latest_results(settings.kafka_bootstrap, settings.results_topic, bool, deadline))
            latest_results(
                settings.kafka_bootstrap,
                settings.results_topic,
                lambda current, n=seen_before: len(current) > n,
                deadline,
            )  # noqa: B023
            worker.kill()
            worker.wait()
            worker = start_worker(pipeline, log)
        _converge(settings, expected)
        deadline = time.monotonic() + CONVERGE_SECONDS
        assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)
    finally:
        stop_process(worker)


def _converge(settings: Settings, expected: dict[tuple[str, ...], dict[str, Any]]) -> None:
    deadline = time.monotonic() + CONVERGE_SECONDS
    got = latest_results(
        settings.kafka_bootstrap, settings.results_topic, lambda current: current == expected, deadline
    )
    wrong = [k for k in expected if got.get(k) != expected[k]]
    detail = [(k, expected[k]["n"], (got.get(k) or {}).get("n")) for k in wrong[:5]]
    assert (len(wrong), len(got.keys() - expected.keys())) == (0, 0), detail


def test_offsets_committed_but_never_processed_are_still_counted(pipeline: Pipeline, tmp_path: Path) -> None:
    """faust-streaming can commit offsets its agents never received (faust-streaming#216, #312; see streams/gaps.py).
    Simulated deterministically: before the worker starts, the group's offsets are committed ahead, partition 0
    at its end (no batch will ever reveal that gap: the gap timer must find it) and partition 1 halfway (the
    first batch reveals it).  Every event is still counted, every invalid one dead-lettered once."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 1500)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    produce_file(source, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
    group = consumer(settings.kafka_bootstrap, settings.app_id)
    try:
        ends = [group.get_watermark_offsets(TopicPartition(settings.feedback_topic, p), timeout=10)[1] for p in (0, 1)]
        assert min(ends) > 100
        ahead = [
            TopicPartition(settings.feedback_topic, 0, ends[0]),
            TopicPartition(settings.feedback_topic, 1, ends[1] // 2),
        ]
        group.commit(offsets=ahead, asynchronous=False)
    finally:
        group.close()
    worker = start_worker(pipeline, tmp_path / "worker.log")
    try:
        _converge(settings, expected)
        deadline = time.monotonic() + CONVERGE_SECONDS
        assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)
        log = (tmp_path / "worker.log").read_text()
        assert f"{settings.feedback_topic}[0] offsets [(0, {ends[0]})] that the consumer skipped" in log
        assert f"{settings.feedback_topic}[1] offsets [(0, {ends[1] // 2})] that the consumer skipped" in log
    finally:
        stop_process(worker)


def test_a_quiet_channel_gets_its_pane_without_a_later_event(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    now = int(time.time() * 1000)
    source.write_text(json.dumps(event_of(now, event_id="lonely", channel="quiet", metric="CSAT", score=5)) + "\n")
    worker = start_worker(pipeline, tmp_path / "worker.log")
    try:
        produce_file(source, pipeline.settings.kafka_bootstrap, pipeline.settings.feedback_topic, LocalCatalog())
        expected, _ = expected_results(source, pipeline.settings.pane_seconds)
        assert len(expected) == 1
        _converge(pipeline.settings, expected)
    finally:
        stop_process(worker)


def event_of(occurred_at: int, **fields: Any) -> dict[str, Any]:
    return event(occurred_at=occurred_at, **fields)


def test_wiped_local_state_recovers_from_the_changelogs(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 4000)
    first, second = _split(source, 2)
    settings = pipeline.settings
    worker = start_worker(pipeline, tmp_path / "worker.log")
    try:
        produce_file(first, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        _converge(settings, expected_results(first, settings.pane_seconds)[0])
        stop_process(worker)  # a clean stop (SIGTERM): nothing half-done may be committed
        shutil.rmtree(settings.data_dir)
        worker = start_worker(pipeline, tmp_path / "worker.log")
        produce_file(second, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        expected, invalid = expected_results(source, settings.pane_seconds)
        _converge(settings, expected)
        deadline = time.monotonic() + CONVERGE_SECONDS
        assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)
    finally:
        stop_process(worker)


def test_two_workers_one_joins_late_and_one_leaves(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 6000)
    chunks = _split(source, 3)
    settings = pipeline.settings
    first = start_worker(pipeline, tmp_path / "a.log", tmp_path / "a")
    second = None
    try:
        produce_file(chunks[0], settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        _converge(settings, expected_results(chunks[0], settings.pane_seconds)[0])
        second = start_worker(pipeline, tmp_path / "b.log", tmp_path / "b")  # joins late: partitions move
        produce_file(chunks[1], settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        stop_process(first)  # leaves: the other takes every partition over
        produce_file(chunks[2], settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        expected, invalid = expected_results(source, settings.pane_seconds)
        _converge(settings, expected)
        deadline = time.monotonic() + CONVERGE_SECONDS
        assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)


def _scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_state_stays_bounded_by_the_retention(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """A long run over many panes keeps only the retention's worth of state: 1 s panes, 3 s retention, events
    of four segments arriving for 30 s; the worker's own gauges are read from its /metrics endpoint."""
    port = free_ports(1)[0]
    pipeline = make_pipeline(
        kafka_broker.bootstrap, tmp_path, pane_seconds=1, windows_seconds=(2,), retention_seconds=3
    )
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log, metrics_port=port)
    segments = [("chat", "billing"), ("chat", "support"), ("phone", "billing"), ("phone", "support")]
    sender = producer(settings.kafka_bootstrap)
    try:
        # the worker is up once an answer has come out on the results topic; until then answers would turn
        # too_old (3 s retention) while it starts, so a fresh one is sent each round
        deadline = time.monotonic() + CONVERGE_SECONDS
        warm_up = 0
        while not latest_results(settings.kafka_bootstrap, settings.results_topic, bool, time.monotonic() + 2):
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-2000:]
            warm_up += 1
            _send_now(sender, settings.feedback_topic, f"warm-up-{warm_up}", segments[0])
        peaks: dict[str, float] = {}
        panes_sent: set[tuple[int, str, str]] = set()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 30:
            for segment in segments:
                for _ in range(5):
                    n += 1
                    panes_sent.add((_send_now(sender, settings.feedback_topic, f"e-{n}", segment) // 1000, *segment))
            sample = _scrape(port)
            for table in ("source-panes", "panes"):
                key = f'cxpulse_worker_state_keys{{table="{table}"}}'
                peaks[table] = max(peaks.get(table, 0.0), sample.get(key, 0.0))
            peaks["ids"] = max(peaks.get("ids", 0.0), sample.get("cxpulse_worker_remembered_ids", 0.0))
            time.sleep(0.2)  # pacing the producer (a real-time load), not synchronisation
        final = _scrape(port)
    finally:
        sender.flush(10)
        stop_process(worker)
    # panes live for the retention (3 s) + one sweep interval (1 s) + the processing delay: allow 8 s of them
    bound_panes = 8 * len(segments)
    assert len(panes_sent) > 3 * bound_panes  # the run really covered many more panes than are kept
    assert peaks["source-panes"] <= PARTITIONS * bound_panes, peaks  # one partial per source partition
    assert peaks["panes"] <= bound_panes, peaks
    assert peaks["ids"] <= 8 * 20 / 0.2, peaks  # ids of the last 8 s at 20 events per 0.2 s
    assert final['cxpulse_worker_expired_keys_total{table="seen-ids"}'] > 0
    assert final['cxpulse_worker_expired_keys_total{table="source-panes"}'] > 2 * PARTITIONS * bound_panes
    assert final['cxpulse_worker_expired_keys_total{table="panes"}'] > 2 * bound_panes


def _send_now(sender: Any, topic: str, event_id: str, segment: tuple[str, str]) -> int:
    now = int(time.time() * 1000)
    channel, journey = segment
    record = event(occurred_at=now, event_id=event_id, channel=channel, journey=journey, metric="CSAT", score=4)
    sender.produce(topic, key=event_id.encode(), value=json.dumps(record).encode())
    sender.poll(0)
    return now


def test_worker_without_kafka_fails_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        cxpulse_command("worker", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "CXPULSE_METRICS_PORT": "0"},
    )
    assert done.returncode == 1
    assert "worker: cannot reach Kafka at 127.0.0.1:1" in done.stderr


def test_worker_metrics_port_in_use_fails_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            cxpulse_command("worker", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path)),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "CXPULSE_METRICS_PORT": str(port)},
        )
    assert done.returncode == 1
    assert f"worker: metrics port {port} (CXPULSE_METRICS_PORT): Address already in use" in done.stderr


def test_a_failing_batch_is_processed_again_and_does_not_wedge_the_worker(pipeline: Pipeline, tmp_path: Path) -> None:
    """Processing raises on its first three batches (injected in validate_batch): the worker logs and counts the
    failures, the failed offsets are processed again, numbers still equal replay, each invalid event is dead-
    lettered once, and SIGTERM still stops the worker (an unacked batch would keep Faust waiting forever)."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 2000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    env = {**pipeline.env, "CXPULSE_METRICS_PORT": str(port), "CXPULSE_TEST_FAILURES": "3"}
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = spawn_worker(env, out, [sys.executable, "-m", "tests.integration.flaky_worker"])
    try:
        produce_file(source, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        _converge(settings, expected)
        deadline = time.monotonic() + CONVERGE_SECONDS
        assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)
        sample = _scrape(port)
        assert sample[f'cxpulse_worker_batch_errors_total{{topic="{settings.feedback_topic}"}}'] == 3
        assert log.read_text().count("injected failure") >= 3
        worker.terminate()
        assert worker.wait(timeout=60) is not None  # stopped on SIGTERM, not wedged
    finally:
        stop_process(worker)
