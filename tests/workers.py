"""Helpers of the tests that run workers against a real broker: fresh pipelines (topics and settings), worker
processes, expected results from `cxpulse replay`, and the checks that the stream equals replay."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import WINDOW_RESULT, LocalCatalog, decode_confluent
from streams.broker import die_with_parent
from streams.config import Settings
from streams.core.comments import ThemeMatcher
from streams.core.synth import realistic_events
from streams.core.windows import result_from_record, result_json
from streams.kafka import consumer, producer
from streams.produce import messages_of, produce_file
from streams.replay import replay_file
from streams.themes import load_taxonomy
from streams.topics import ensure_topics, partition_count, topic_specs
from tests.support import cxpulse_command, stop_process

CONVERGE_SECONDS = 120.0  # the worker must reach replay's numbers within this long
STOP_SECONDS = 10.0  # SIGTERM must stop a worker within this long, by itself
PARTITIONS = 3
DEEP = '{"event_id": ' + "[" * 5000  # a poison message: JSON nested thousands deep


@dataclass
class Pipeline:
    """Fresh topics and settings for one worker test."""

    settings: Settings
    env: dict[str, str]


def make_pipeline(bootstrap: str, tmp_path: Path, create_topics: bool = True, **overrides: Any) -> Pipeline:
    """Fresh topics and settings (plus the env a worker process reads them from) for one worker test;
    ``create_topics=False`` leaves the topics to the worker (or `cxpulse topics`), as a user's first start does."""
    tag = uuid.uuid4().hex[:10]
    values = {
        "kafka_bootstrap": bootstrap,
        "app_id": f"cxw-{tag}",
        "feedback_topic": f"test-{tag}-feedback",
        "dlq_topic": f"test-{tag}-dlq",
        "results_topic": f"test-{tag}-panes",
        "alerts_topic": f"test-{tag}-alerts",
        "followups_topic": f"test-{tag}-followups",
        "journeys_topic": f"test-{tag}-journeys",  # every worker test has journeys on: not one shared cx.journeys
        "partitions": PARTITIONS,
        "data_dir": tmp_path / "state",
        "metrics_port": 0,
        "clickhouse_url": "",  # no ClickHouse sink unless a test asks for one (tests/integration/test_store.py)
        **overrides,
    }
    settings = Settings(**values)
    if create_topics:
        ensure_topics(settings.kafka_bootstrap, topic_specs(settings), settings.replication_factor)
    env = {
        **os.environ,
        **{f"CXPULSE_{k.upper()}": json.dumps(v) if isinstance(v, tuple) else str(v) for k, v in values.items()},
    }
    return Pipeline(settings, env)


STARTED: list[
    Path
] = []  # the logs of the workers started by the running test (tests/integration/conftest.py reads them)
BATCH_ERRORS = (  # a worker's log lines of a batch that failed: the hot path's, and the Faust agents' (acked anyway)
    re.compile(r"hotpath-\d+: a batch of \d+ messages failed"),
    re.compile(r": a batch of \S+ failed; acked"),
    re.compile(r": finishing a batch of \S+ failed; acked"),
)


def batch_errors(log: Path) -> list[str]:
    """The lines of ``log`` that say a batch failed (the Runner swallows the error on purpose and acks: a test
    that does not expect one must fail, not pass on a worker that reads the batch back)."""
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if any(p.search(line) for p in BATCH_ERRORS)]


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
    STARTED.append(log)
    with log.open("ab") as out:
        return subprocess.Popen(
            command or cxpulse_command("worker"),
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
        )


@contextmanager
def running_worker(
    pipeline: Pipeline,
    log: Path,
    data_dir: Path | None = None,
    metrics_port: int = 0,
    command: list[str] | None = None,
    **env: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker (:func:`start_worker`) for the block, stopped after it (killed if it does not stop by itself)."""
    worker = start_worker(pipeline, log, data_dir, metrics_port, command, **env)
    try:
        yield worker
    finally:
        stop_process(worker)


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


HOTPATH_MODULES = (b"streams.worker.hotpath", b"tests.integration.flaky_hotpath")


def children(pid: int) -> dict[str, int]:
    """The worker's processes by name (hotpath-N, merge, journeys, sink), from /proc."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        module = next(
            (m for m in (b"streams.worker.hotpath", b"tests.integration.flaky_hotpath") if m in command), None
        )
        if module is not None:
            out[f"hotpath-{command[command.index(module) + 1].decode()}"] = int(child)
        elif b"merge" in command and (b"streams.processes" in command or b"tests.integration.flaky_merge" in command):
            out["merge"] = int(child)
        elif b"journeys" in command and b"streams.processes" in command:
            out["journeys"] = int(child)
        elif b"sink" in command and b"streams.processes" in command:
            out["sink"] = int(child)
    return out


DEFAULT_THEMES = ThemeMatcher(load_taxonomy())  # the taxonomy a worker reads by default

# what the mixed events' customers write (contract section 9), the same in every copy of an answer: none, an address
# and a number to redact, the bot, waiting, Dutch, no word at all
SAID = (None, None, None, "Mail me at jan@example.nl or call 0612345678", "De chatbot begreep me niet",
        "Waited 40 minutes on hold", "Snel en vriendelijk geholpen", "...")  # fmt: skip


def mixed_events(path: Path, count: int) -> None:
    """Realistic events of the last hours (duplicates and invalid ones included), some arriving late, some with a
    comment, plus lines that are not events at all, one of them a poison message."""
    start = int(time.time() * 1000) - 3 * 3600 * 1000
    found = realistic_events(count, seed=11, start_ms=start, per_second=count / 7200)
    events = [{**e, "comment": SAID[zlib.crc32(str(e.get("event_id")).encode()) % len(SAID)]} for e in found]
    rng = random.Random(5)
    late = set(rng.sample(range(len(events)), count // 20))
    ordered = [e for i, e in enumerate(events) if i not in late] + [events[i] for i in sorted(late)]
    lines = [json.dumps(e) for e in ordered]
    lines[10:10] = ["not json", json.dumps({**ordered[0], "event_id": "bad-metric", "metric": "XYZ"}), DEEP]
    path.write_text("\n".join(lines) + "\n")


def expected_results(path: Path, pane_seconds: int) -> tuple[dict[tuple[str, ...], dict[str, Any]], int]:
    replay = replay_file(path, pane_seconds * 1000, lambda dead: None, matcher=DEFAULT_THEMES)  # as a worker reads
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


def converge(settings: Settings, expected: dict[tuple[str, ...], dict[str, Any]], log: Path | None = None) -> None:
    """Wait until the results topic equals ``expected``; on failure say what differs, with the worker's log."""
    deadline = time.monotonic() + CONVERGE_SECONDS
    got = latest_results(
        settings.kafka_bootstrap, settings.results_topic, lambda current: current == expected, deadline
    )
    wrong = [k for k in expected if got.get(k) != expected[k]]
    missing = [k for k in wrong if k not in got]
    short = sum(expected[k]["n"] - (got.get(k) or {}).get("n", 0) for k in wrong)
    detail = (
        f"{len(wrong)} of {len(expected)} results wrong ({len(missing)} missing), {short} answers short in all; "
        f"latest window seen {max((k[0] for k in got), default=None)}; first: "
        f"{[(k, expected[k]['n'], (got.get(k) or {}).get('n')) for k in wrong[:5]]}"
    )
    if log is not None and log.exists():
        lines = [line[:300] for line in log.read_text().splitlines() if line and not line[0].isspace()]
        detail += "\nworker log (last 60 lines, no tracebacks):\n" + "\n".join(lines[-60:])
    assert (len(wrong), len(got.keys() - expected.keys())) == (0, 0), detail


def assert_dead_letters_once(settings: Settings, invalid: int) -> None:
    deadline = time.monotonic() + CONVERGE_SECONDS
    assert_each_once(dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, deadline), invalid)


def scrape(port: int, *, starting: bool = False) -> dict[str, float]:
    """The worker's /metrics as {"name{labels}": value}, read with prometheus_client's parser (empty while a
    ``starting`` worker does not listen yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
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


def produce(settings: Settings, path: Path, spread: bool = True) -> None:
    """Send the events of ``path`` as `cxpulse produce` does (keyed by customer, else event id); with ``spread``
    (the default) each to a partition of its own choosing instead (round-robin by position), so that the copies of
    a re-sent answer land on different partitions, as they do from platforms that key differently or not at all:
    every exactness test then also tests de-duplication across partitions."""
    if not spread:
        produce_file(path, settings.kafka_bootstrap, settings.feedback_topic, LocalCatalog())
        return
    partitions = partition_count(settings.kafka_bootstrap, settings.feedback_topic)
    out = producer(settings.kafka_bootstrap, **{"linger.ms": 20})
    failed: list[str] = []
    for index, (key, value) in enumerate(messages_of(path, LocalCatalog())):
        while True:
            try:
                out.produce(
                    settings.feedback_topic,
                    value,
                    key,
                    partition=index % partitions,
                    on_delivery=lambda error, _: failed.append(str(error)) if error else None,
                )
                break
            except BufferError:
                out.poll(0.1)
    assert out.flush(60) == 0 and not failed, failed[:3]
