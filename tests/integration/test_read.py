"""`cxpulse read` on the real broker: results, dead letters and follow-ups as decoded JSON lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from streams.core.windows import iso_utc
from tests.support import RunningBroker, cxpulse_command
from tests.workers import (
    converge,
    expected_results,
    make_pipeline,
    mixed_events,
    produce,
    running_worker,
    stop_worker,
)


def read(env: dict[str, str], *args: str) -> list[dict]:
    done = subprocess.run(cxpulse_command("read", *args), env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_read_prints_results_and_dead_letters_decoded(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 600)
    expected, invalid = expected_results(source, settings.pane_seconds)
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log) as worker:
        produce(settings, source)
        converge(settings, expected, log)
        stop_worker(worker, log)
        # a fresh worker's normal start (groups forming, rebalances) and its dead letters are not errors to a user
        assert " ERROR " not in log.read_text() and "[ERROR]" not in log.read_text(), log.read_text()[-3000:]
    results = read(pipeline.env, "results")
    latest: dict[tuple, dict] = {}
    for record in results:
        value = record["value"]
        key = (value["window_start"], value["channel"], value["journey"], value["metric"])
        if key not in latest or latest[key]["version"] < value["version"]:
            latest[key] = value
    got = {(iso_utc(k[0]), k[1], k[2], k[3]): v["n"] for k, v in latest.items()}
    assert got == {k: e["n"] for k, e in expected.items()}
    assert all(record["schema_id"] == 2 and record["key"] for record in results)
    letters = read(pipeline.env, "dlq")
    assert len(letters) == invalid
    assert all(letter["headers"]["reason"] and letter["headers"]["source_topic"] == settings.feedback_topic
               for letter in letters)  # fmt: skip
    assert any("value_base64" in letter or isinstance(letter.get("value"), dict | list) for letter in letters)
    assert len(read(pipeline.env, settings.feedback_topic, "--limit", "5")) == 5
    missing = subprocess.run(
        cxpulse_command("read", "no-such-topic"), env=pipeline.env, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 1 and "no-such-topic" in missing.stderr and "Traceback" not in missing.stderr


def test_simulate_paces_its_events_by_the_wall_clock(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """200 answers a second for 3 s: 600 events, none dated in the future (the simulator once ran ahead of the
    clock, its events then dead-lettered as future_timestamp)."""
    import time

    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path)
    started = time.time()
    done = subprocess.run(
        cxpulse_command("simulate", "--rate", "200", "--duration", "3s", "--invalid-share", "0"),
        env=pipeline.env,
        capture_output=True,
        text=True,
        check=False,
    )
    finished = time.time()
    assert done.returncode == 0 and "sent 600 events" in done.stderr, done.stderr
    assert finished - started >= 2.9  # paced: three seconds of simulated time take three seconds
    events = [r["value"] for r in read(pipeline.env, "feedback")]
    assert len(events) == 600
    assert max(e["occurred_at"] for e in events) <= finished * 1000
