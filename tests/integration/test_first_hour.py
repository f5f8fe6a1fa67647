"""A new user's first hour against a running worker, command by command as docs/usage.md shows them (issue 34):
its report and drivers examples on the data its text says they were made from; produce saying what the worker
will refuse, and what an interrupted run sent; a window the data has left saying where the data is and the
option that reaches it; `cxpulse read journeys`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from streams.config import REPO_ROOT
from streams.replay import replay_file
from tests.support import RunningBroker, cxpulse_command, free_ports
from tests.workers import make_pipeline, running_worker, scrape, wait_for


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cxpulse_command(*args), env=env, capture_output=True, text=True, check=False, timeout=300, cwd=cwd
    )


def usage_examples() -> tuple[list[str], list[list[str]]]:
    """The simulate command the usage page says its examples were made with, and the example commands."""
    usage = (REPO_ROOT / "docs" / "usage.md").read_text()
    made = re.search(r"`(cxpulse\s+simulate\s[^`]*--to-file)\s+\.\.\.`", usage)
    assert made is not None, "the usage page no longer says how its examples were made"
    examples = re.findall(r"^\$ cxpulse (.+)$", usage, flags=re.MULTILINE)
    assert len(examples) >= 3
    return made.group(1).split()[1:], [line.split() for line in examples]


def test_the_first_hour_as_the_usage_page_shows_it(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    pipeline = make_pipeline(
        kafka_broker.bootstrap, tmp_path, create_topics=False, clickhouse_url=f"chdb://{tmp_path / 'store'}"
    )
    env = {**pipeline.env, "COLUMNS": "200"}
    simulate, examples = usage_examples()
    history = tmp_path / "two-hours.jsonl"
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        made = cli(env, *simulate, str(history), "--invalid-share", "0.01")
        assert made.returncode == 0, made.stderr
        sent = cli(env, "produce", str(history))
        # the summary says what the worker will dead-letter, by reason (it said "sent N events" and no more)
        refusals = replay_file(history, 60_000, lambda dead: None).stats.dead_letters
        assert sent.returncode == 0 and f"the worker will dead-letter {sum(refusals.values())} of them" in sent.stderr
        counted = replay_file(history, 60_000, lambda dead: None).stats.counted
        rows = 'cxpulse_sink_rows_total{table="answers"}'
        wait_for(lambda: scrape(port).get(rows, 0) >= counted, "every answer in the store", log, timeout=300)
        for example in examples:
            done = cli(env, *example)
            assert done.returncode == 0 and "Traceback" not in done.stderr, (example, done.stderr)
            assert done.stdout.strip(), (example, done.stderr)  # the page promises output
        # a window the data has left: where the data is, and the option that reaches it
        later = cli(env, "report", "--window", "5m", "--until", "2099-01-01T00:00:00Z")
        assert later.returncode == 0 and not later.stdout
        hint = re.search(r"the newest in ClickHouse ends (\S+): add --until (\S+)", later.stderr)
        assert hint is not None and hint.group(1) == hint.group(2), later.stderr
        found = cli(env, "report", "--window", "5m", "--until", hint.group(2))
        assert found.returncode == 0 and "window (UTC)" in found.stdout, found.stderr
        # drivers without a previous window to compare with: which one is short, and --vs rest
        early = cli(env, "drivers", "--metric", "CES", "--channel", "chat", "--journey", "billing", "--window", "24h")
        assert early.returncode == 0 and "--vs rest" in early.stderr, early.stderr
        journeys = cli(env, "read", "journeys", "--limit", "2")
        assert journeys.returncode == 0 and len(journeys.stdout.splitlines()) == 2, journeys.stderr
        assert json.loads(journeys.stdout.splitlines()[0])["value"]["customer_id"]
        assert worker.poll() is None


def test_an_interrupted_produce_says_what_it_sent(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """Ctrl-C during `cxpulse produce big.jsonl` exited 130 with nothing printed."""
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path)
    big = tmp_path / "big.jsonl"
    assert cli(pipeline.env, "simulate", "--to-file", str(big), "--duration", "30m", "--rate", "300").returncode == 0
    sending = subprocess.Popen(
        cxpulse_command("produce", str(big)), env=pipeline.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _has_messages(pipeline.env, pipeline.settings.feedback_topic):
        assert time.monotonic() < deadline and sending.poll() is None
        time.sleep(0.1)  # polling the topic, which has no push: the produce is under way
    sending.send_signal(signal.SIGINT)
    _, said = sending.communicate(timeout=60)
    assert sending.returncode == 130, said
    found = re.search(r"interrupted: (\d+) events sent to \S+, (\d+) of them delivered", said)
    assert found is not None and 0 < int(found.group(2)) <= int(found.group(1)) < 540_000, said


def _has_messages(env: dict[str, str], topic: str) -> bool:
    done = subprocess.run(cxpulse_command("read", topic, "--limit", "1"), env={**os.environ, **env},
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    return bool(done.stdout.strip())
