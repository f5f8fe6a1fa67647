"""A worker started the way the docs say, on a fresh app id: its topics are not there yet, and `cxpulse topics` may
run beside it (docs/usage.md suggests both).  A topic created a moment ago has no leader for a moment; the worker
waits for it instead of reading it as missing, and ends exact.  And every command that reads the store says in one
line when ClickHouse is unreachable, refuses or does not answer."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import RunningBroker, cxpulse_command, free_ports, stop_process
from tests.workers import (
    converge,
    expected_results,
    make_pipeline,
    mixed_events,
    produce,
    scrape,
    start_worker,
    stop_worker,
    wait_for,
)

STARTS = 6  # fresh app ids, each started beside `cxpulse topics` (13 of 19 such starts ended the worker before)


def test_a_worker_and_cxpulse_topics_started_together_on_fresh_app_ids(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    """`cxpulse worker` and `cxpulse topics` launched together, in both orders, on a fresh app id each time: the
    worker never exits (it once read the topics `topics` had just made, still without a leader, as missing), is
    ready, and its results equal replay."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 600)
    for start in range(STARTS):
        folder = tmp_path / f"start-{start}"
        folder.mkdir()
        pipeline = make_pipeline(kafka_broker.bootstrap, folder, create_topics=False)
        expected, _ = expected_results(source, pipeline.settings.pane_seconds)
        port, log = free_ports(1)[0], folder / "worker.log"
        topics_first = start % 2 == 1
        topics = None
        if topics_first:
            topics = subprocess.Popen(cxpulse_command("topics"), env=pipeline.env, stdout=subprocess.PIPE, text=True)
        worker = start_worker(pipeline, log, metrics_port=port)
        if not topics_first:
            topics = subprocess.Popen(cxpulse_command("topics"), env=pipeline.env, stdout=subprocess.PIPE, text=True)
        try:
            assert topics is not None
            said, _ = topics.communicate(timeout=120)
            assert topics.returncode == 0 and said.startswith("created: "), said
            wait_for(lambda p=port: scrape(p, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
            produce(pipeline.settings, source)
            converge(pipeline.settings, expected, log)
            assert worker.poll() is None, log.read_text()[-3000:]
            assert "does not exist" not in log.read_text()
            stop_worker(worker, log)
        finally:
            stop_process(worker)
            if topics is not None:
                stop_process(topics)


def _store_commands() -> list[list[str]]:
    return [
        ["report", "--window", "5m"],
        ["drivers", "--metric", "CES", "--channel", "chat", "--journey", "billing", "--window", "10m"],
        ["journey", "cust-1"],
    ]


@pytest.mark.parametrize("command", _store_commands(), ids=lambda c: c[0])
@pytest.mark.parametrize("store", ["refused", "silent"])
def test_an_unreachable_store_is_one_line_naming_it_and_exit_1(tmp_path: Path, command: list[str], store: str) -> None:
    """ClickHouse refusing connections (nothing listens) or accepting and never answering: one line naming the URL
    and the cause, exit 1 (it printed clickhouse-connect's "Unexpected Http Driver Exception" and ~300 characters
    of urllib3's text)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1] if store == "silent" else free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"
        done = subprocess.run(
            cxpulse_command(*command),
            env={**_env(tmp_path), "CXPULSE_CLICKHOUSE_URL": url, "CXPULSE_CLICKHOUSE_TIMEOUT_SECONDS": "2"},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1, lines
    assert len(lines) == 1, lines
    cause = (
        "connection refused (nothing listens there)"
        if store == "refused"
        else "no answer in time (CXPULSE_CLICKHOUSE_TIMEOUT_SECONDS)"
    )
    assert lines[0] == f"cxpulse: cannot open ClickHouse at {url}: {cause}", lines


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CXPULSE_DATA_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
