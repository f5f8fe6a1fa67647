"""The stream worker against the real broker: its latest pane results equal `cxpulse replay` of the same
events, to the last count, through crashes of the whole worker or of one of its processes, rebalances, wiped
state, skipped messages and failing batches; every invalid event is on the dead-letter topic exactly once; and
SIGTERM stops the worker by itself within 10 s."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
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
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import WINDOW_RESULT, LocalCatalog, decode_confluent
from streams.broker import die_with_parent, pid_alive
from streams.config import Settings
from streams.kafka import admin_client, consumer, producer
from streams.produce import produce_file
from streams.replay import replay_file
from streams.synth import realistic_events
from streams.topics import ensure_topics, internal_topics, topic_specs
from streams.windows import result_from_record, result_json
from streams.worker.supervisor import prepare_topics
from tests.support import RunningBroker, cxpulse_command, event, free_ports, stop_process

CONVERGE_SECONDS = 120.0  # the worker must reach replay's numbers within this long
STOP_SECONDS = 10.0  # SIGTERM must stop a worker within this long, by itself
PARTITIONS = 3
DEEP = '{"event_id": ' + "[" * 5000  # a poison message: JSON nested thousands deep


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
        "followups_topic": f"test-{tag}-followups",
        "partitions": PARTITIONS,
        "data_dir": tmp_path / "state",
        "metrics_port": 0,
        "clickhouse_url": "",  # no ClickHouse sink unless a test asks for one (tests/integration/test_store.py)
        **overrides,
    }
    settings = Settings(**values)
    ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    env = {
        **os.environ,
        **{f"CXPULSE_{k.upper()}": json.dumps(v) if isinstance(v, tuple) else str(v) for k, v in values.items()},
    }
    return Pipeline(settings, env)


def start_worker(
    pipeline: Pipeline,
    log: Path,
    data_dir: Path | None = None,
    metrics_port: int = 0,
    command: list[str] | None = None,
    **env: str,
) -> subprocess.Popen[bytes]:
    """`cxpulse worker` (or ``command``) as a child that dies with the test session, whatever happens to it."""
    environment = {**pipeline.env, "CXPULSE_METRICS_PORT": str(metrics_port), **env}
    if data_dir is not None:
        environment["CXPULSE_DATA_DIR"] = str(data_dir)
    with log.open("ab") as out:
        return subprocess.Popen(
            command or cxpulse_command("worker"),
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
        )


def stop_worker(worker: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, and the worker must be gone within STOP_SECONDS by itself, with exit code 0."""
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        pytest.fail(f"the worker was still running {STOP_SECONDS} s after SIGTERM:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


def children(pid: int) -> dict[str, int]:
    """The worker's processes by name (hotpath-N, merge), from /proc."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"streams.worker.hotpath" in command:
            out[f"hotpath-{command[command.index(b'streams.worker.hotpath') + 1].decode()}"] = int(child)
        elif b"streams.worker.app" in command:
            out["merge"] = int(child)
    return out


def mixed_events(path: Path, count: int) -> None:
    """Realistic events of the last hours (duplicates and invalid ones included), some arriving late, plus
    lines that are not events at all, one of them a poison message."""
    start = int(time.time() * 1000) - 3 * 3600 * 1000
    events = list(realistic_events(count, seed=11, start_ms=start, per_second=count / 7200))
    rng = random.Random(5)
    late = set(rng.sample(range(len(events)), count // 20))
    ordered = [e for i, e in enumerate(events) if i not in late] + [events[i] for i in sorted(late)]
    lines = [json.dumps(e) for e in ordered]
    lines[10:10] = ["not json", json.dumps({**ordered[0], "event_id": "bad-metric", "metric": "XYZ"}), DEEP]
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
    reader = consumer(bootstrap, f"check-{uuid.uuid4().hex}", **{"isolation.level": "read_committed"})
    reader.subscribe([topic])
    latest: dict[tuple[str, ...], tuple[int, dict[str, Any]]] = {}
    catalog = LocalCatalog()
    try:
        while time.monotonic() < deadline:
            for message in reader.consume(num_messages=1000, timeout=1.0):
                if message.error() is not None:
                    continue
                _, record = decode_confluent(message.value(), catalog, WINDOW_RESULT)
                as_json = result_json(result_from_record(record))
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
    """The headers of every committed message on the DLQ, once ``expected`` of them have arrived (or at the
    deadline), plus any extra ones that arrive within a further second (so a duplicate shows)."""
    reader = consumer(bootstrap, f"dlq-{uuid.uuid4().hex}", **{"isolation.level": "read_committed"})
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


def converge(settings: Settings, expected: dict[tuple[str, ...], dict[str, Any]]) -> None:
    deadline = time.monotonic() + CONVERGE_SECONDS
    got = latest_results(
        settings.kafka_bootstrap, settings.results_topic, lambda current: current == expected, deadline
    )
    wrong = [k for k in expected if got.get(k) != expected[k]]
    detail = [(k, expected[k]["n"], (got.get(k) or {}).get("n")) for k in wrong[:5]]
    assert (len(wrong), len(got.keys() - expected.keys())) == (0, 0), detail


def assert_dead_letters_once(settings: Settings, invalid: int) -> None:
    deadline = time.monotonic() + CONVERGE_SECONDS
    assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)


def scrape(port: int, *, starting: bool = False) -> dict[str, float]:
    """The worker's /metrics as {"name{labels}": value}, read with prometheus_client's parser (empty while a
    ``starting`` worker does not listen yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        if starting:
            return {}
        raise
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_for(condition: Any, what: str, log: Path, timeout: float = CONVERGE_SECONDS) -> None:
    """Poll ``condition`` (a worker's state seen from outside, e.g. its /metrics) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)  # polling an endpoint that has no push


def split(path: Path, parts: int) -> list[Path]:
    lines = path.read_text().splitlines(keepends=True)
    size = -(-len(lines) // parts)
    chunks = []
    for i in range(parts):
        chunk = path.with_name(f"chunk-{i}.jsonl")
        chunk.write_text("".join(lines[i * size : (i + 1) * size]))
        chunks.append(chunk)
    return chunks


def produce(settings: Settings, path: Path) -> None:
    produce_file(path, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())


def test_stream_equals_replay(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log, metrics_port=port)
    try:
        produce(settings, source)
        converge(settings, expected)
        assert worker.poll() is None, log.read_text()[-3000:]
        letters = dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, time.monotonic() + 60)
        assert_each_once(letters, invalid)
        assert {h["reason"].decode() for h in letters} >= {"undecodable", "bad_metric", "missing_field"}
        assert all(h["source_topic"].decode() == settings.feedback_topic for h in letters)
        poison = [h for h in letters if h["source_offset"] and b"nested too deeply" in h["detail"]]
        assert len(poison) == 1 and poison[0]["reason"] == b"undecodable"
        # the worker's own counters agree: every answer is hours old, so each counted one is late
        sample = scrape(port)
        assert sample["cxpulse_worker_late_events_total"] == sum(r["n"] for r in expected.values())
        lettered = sum(v for k, v in sample.items() if k.startswith("cxpulse_worker_dead_letters_total"))
        assert lettered == invalid
        assert sample["cxpulse_worker_ready"] == 1
        assert sample["cxpulse_worker_chain_breaks_total"] == 0
        assert _topic_configs(settings) == {
            **{
                f"{settings.app_id}-{table}-changelog": ("compact", PARTITIONS)
                for table in ("panes", "positions", "kpi-view", "effort-panes", "effort-state")
            },
            internal_topics(settings).partials: ("delete", PARTITIONS),
            internal_topics(settings).seen_ids: ("delete", PARTITIONS),
            internal_topics(settings).answers: ("delete", PARTITIONS),
        }
        processes = children(worker.pid)
        assert set(processes) == {"hotpath-0", "merge"}
        stop_worker(worker, log)
        assert not any(pid_alive(pid) for pid in processes.values())
    finally:
        stop_process(worker)


def _topic_configs(settings: Settings) -> dict[str, tuple[str, int]]:
    """cleanup.policy and partition count of the worker's internal topics."""
    admin = admin_client(settings.kafka_bootstrap)
    metadata = admin.list_topics(timeout=10).topics
    names = [t for t in metadata if t.startswith(f"{settings.app_id}-") and "__assignor" not in t]
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    out = {}
    for resource, future in admin.describe_configs(resources).items():
        policy = future.result(timeout=30)["cleanup.policy"].value
        out[resource.name] = (policy, len(metadata[resource.name].partitions))
    return out


def test_kill_9_three_times_still_equals_replay(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 8000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log)
    try:
        for round_, chunk in enumerate(split(source, 4)):
            produce(settings, chunk)
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
            )
            processes = children(worker.pid)
            worker.kill()
            worker.wait()
            # the worker's processes die with it (PR_SET_PDEATHSIG: SIGKILL), nothing is left running
            wait_for(lambda p=processes: not any(pid_alive(pid) for pid in p.values()), "children gone", log, 10)
            worker = start_worker(pipeline, log)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
    finally:
        stop_process(worker)


@pytest.mark.parametrize("victim", ["hotpath-0", "merge"])
def test_kill_9_of_one_process_mid_stream(pipeline: Pipeline, tmp_path: Path, victim: str) -> None:
    """One process of the worker killed with SIGKILL mid-stream: the worker reports it, restarts it, and the
    numbers still equal replay, each invalid event once on the DLQ."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 6000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    first, second = split(source, 2)
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log, metrics_port=port)
    try:
        produce(settings, first)
        deadline = time.monotonic() + CONVERGE_SECONDS
        latest_results(settings.kafka_bootstrap, settings.results_topic, bool, deadline)  # results are flowing
        produce(settings, second)
        os.kill(children(worker.pid)[victim], signal.SIGKILL)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        assert scrape(port)[f'cxpulse_worker_process_restarts_total{{process="{victim}"}}'] == 1
        assert f"{victim} was killed by SIGKILL; restarting it" in log.read_text()
        stop_worker(worker, log)
    finally:
        stop_process(worker)


def test_sigterm_mid_stream_finishes_the_batch_and_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 20000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    produce(settings, source)
    worker = start_worker(pipeline, log, metrics_port=port)
    try:
        fed = f'cxpulse_worker_records_total{{topic="{settings.feedback_topic}"}}'
        wait_for(lambda: scrape(port, starting=True).get(fed, 0) > 0, "a first batch", log)
        stop_worker(worker, log)
        worker = start_worker(pipeline, log)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
    finally:
        stop_process(worker)


def test_partial_messages_the_faust_consumer_skipped_are_read_back(pipeline: Pipeline, tmp_path: Path) -> None:
    """faust-streaming can commit offsets its agent never received (faust-streaming#216, #312, #606; see
    streams/worker/repair.py).  Simulated deterministically: the hot path runs alone and processes every event;
    then the merge group's offsets on the partials are committed ahead, partition 0 to its end (no later message
    reveals that gap: the tail check must find it) and partition 1 halfway (its next message reveals it).
    Every event is still counted, every invalid one dead-lettered once."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    partials = internal_topics(settings).partials
    log = tmp_path / "worker.log"
    prepare_topics(settings)  # what `cxpulse worker` does first
    hot = start_worker(
        pipeline,
        log,
        command=[sys.executable, "-m", "streams.worker.hotpath", "0", "0"],
        CXPULSE_WORKER_ID="alone",
    )
    worker = None
    group = consumer(settings.kafka_bootstrap, settings.app_id)
    try:
        feedback = [TopicPartition(settings.feedback_topic, p) for p in range(PARTITIONS)]

        def hot_path_done() -> bool:
            totals = [group.get_watermark_offsets(tp, timeout=10)[1] for tp in feedback]
            return [tp.offset for tp in group_offsets(f"{settings.app_id}-hotpath", feedback)] == totals

        def group_offsets(name: str, partitions: list[TopicPartition]) -> list[TopicPartition]:
            reader = consumer(settings.kafka_bootstrap, name)
            try:
                return list(reader.committed(partitions, timeout=10))
            finally:
                reader.close()

        for chunk in split(source, 4):  # four batches at least: several messages in every partials partition
            produce(settings, chunk)
            wait_for(hot_path_done, "the hot path through every event so far", log)
        stop_worker(hot, log)
        high = [group.get_watermark_offsets(TopicPartition(partials, p), timeout=10)[1] for p in (0, 1)]
        assert min(high) >= 8  # a message and a commit marker per batch
        ahead = [TopicPartition(partials, 0, high[0]), TopicPartition(partials, 1, high[1] // 2)]
        group.commit(offsets=ahead, asynchronous=False)
        group.close()
        worker = start_worker(pipeline, log)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        text = log.read_text()
        assert "that the consumer skipped" in text and f"{partials}[0]" in text and f"{partials}[1]" in text
        stop_worker(worker, log)
    finally:
        stop_process(hot)
        if worker is not None:
            stop_process(worker)


def test_a_quiet_channel_gets_its_pane_without_a_later_event(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    now = int(time.time() * 1000)
    source.write_text(json.dumps(event(occurred_at=now, event_id="lonely", channel="quiet", metric="CSAT", score=5)))
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log)
    try:
        produce(pipeline.settings, source)
        expected, _ = expected_results(source, pipeline.settings.pane_seconds)
        assert len(expected) == 1
        converge(pipeline.settings, expected)
        stop_worker(worker, log)
    finally:
        stop_process(worker)


def test_wiped_local_state_recovers_from_the_changelogs(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 4000)
    first, second = split(source, 2)
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log)
    try:
        produce(settings, first)
        converge(settings, expected_results(first, settings.pane_seconds)[0])
        stop_worker(worker, log)  # a clean stop: nothing half-done may be committed
        shutil.rmtree(settings.data_dir)
        worker = start_worker(pipeline, log)
        produce(settings, second)
        expected, invalid = expected_results(source, settings.pane_seconds)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
    finally:
        stop_process(worker)


def test_two_workers_one_joins_late_and_one_leaves(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 6000)
    chunks = split(source, 3)
    settings = pipeline.settings
    first = start_worker(pipeline, tmp_path / "a.log", tmp_path / "a")
    second = None
    try:
        produce(settings, chunks[0])
        converge(settings, expected_results(chunks[0], settings.pane_seconds)[0])
        second = start_worker(pipeline, tmp_path / "b.log", tmp_path / "b")  # joins late: partitions move
        produce(settings, chunks[1])
        stop_worker(first, tmp_path / "a.log")  # leaves: the other takes every partition over
        produce(settings, chunks[2])
        expected, invalid = expected_results(source, settings.pane_seconds)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        stop_worker(second, tmp_path / "b.log")
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)


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
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        peaks: dict[str, float] = {}
        panes_sent: set[tuple[int, str, str]] = set()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 30:
            for segment in segments:
                for _ in range(5):
                    n += 1
                    panes_sent.add((_send_now(sender, settings.feedback_topic, f"e-{n}", segment) // 1000, *segment))
            sample = scrape(port)
            peaks["panes"] = max(peaks.get("panes", 0.0), sample.get('cxpulse_worker_state_keys{table="panes"}', 0.0))
            peaks["ids"] = max(peaks.get("ids", 0.0), sample.get("cxpulse_worker_remembered_ids", 0.0))
            time.sleep(0.2)  # pacing the producer (a real-time load), not synchronisation
        final = scrape(port)
        sender.flush(10)
        stop_worker(worker, log)
    finally:
        stop_process(worker)
    # panes live for the retention (3 s) + one sweep interval (1 s) + the processing delay: allow 8 s of them
    bound_panes = 8 * len(segments)
    assert len(panes_sent) > 3 * bound_panes  # the run really covered many more panes than are kept
    assert 0 < peaks["panes"] <= bound_panes, peaks
    assert 0 < peaks["ids"] <= 8 * 20 / 0.2, peaks  # ids of the last 8 s at 20 events per 0.2 s
    assert final['cxpulse_worker_expired_keys_total{table="seen-ids"}'] > 0
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


def test_failing_batches_are_processed_again_and_do_not_wedge_the_worker(pipeline: Pipeline, tmp_path: Path) -> None:
    """Processing raises on the hot path's first three batches and on merge's first two (faults injected by a
    test wrapper, tests/integration/flaky_worker.py): the failures are logged and counted, nothing is skipped
    (the hot path reads its batch again from the committed offsets, merge reads back what it did not follow),
    numbers equal replay, each invalid event is dead-lettered once, and SIGTERM still stops the worker."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 2000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    worker = start_worker(
        pipeline,
        log,
        metrics_port=port,
        command=[sys.executable, "-m", "tests.integration.flaky_worker"],
        CXPULSE_TEST_HOTPATH_FAILURES="3",
        CXPULSE_TEST_MERGE_FAILURES="2",
    )
    try:
        produce(settings, source)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        sample = scrape(port)
        assert sample[f'cxpulse_worker_batch_errors_total{{topic="{settings.feedback_topic}"}}'] == 3
        partials = internal_topics(settings).partials
        assert sample[f'cxpulse_worker_batch_errors_total{{topic="{partials}"}}'] == 2
        assert sample["cxpulse_worker_chain_breaks_total"] == 0
        text = log.read_text()
        assert text.count("injected failure") >= 5
        assert "is read again from the committed offsets" in text
        stop_worker(worker, log)
    finally:
        stop_process(worker)
