"""`cxpulse import --backfill` and `cxpulse backfill` as an analyst runs them, on the embedded store (each command a
process of its own, as the user's are): the Qualtrics-style export of tests/unit/test_import.py (its answers are
older than the stream's retention) ends up in the store as replay of its events computes it, `report` reads it,
a second run changes nothing, and a store held by a running worker is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from streams.core.windows import result_json
from streams.replay import replay_file
from tests.support import cxpulse_command
from tests.unit.test_import import MAPPING, write_export


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cxpulse_command(*args), env=env, capture_output=True, text=True, check=False, timeout=180)


def test_an_export_backfilled_reads_back_as_replay_and_twice_changes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "CXPULSE_DATA_DIR": str(tmp_path / "data"), "CXPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    export = write_export(tmp_path)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    events = tmp_path / "events.jsonl"
    done = run(env, "import", str(export), "--map", str(mapping), "-o", str(events), "--backfill")
    assert done.returncode == 3, done.stderr  # the export's four refused rows
    assert "9 answers read" in done.stderr and "9 answers" in done.stderr and "version 0" in done.stderr, done.stderr
    expected = [result_json(r) for r in replay_file(events, 60_000, lambda dead: None).results()]
    assert len(expected) == 9  # nine pane groups: every answer of this export in a pane of its own metric

    def report() -> list[dict[str, object]]:
        shown = run(env, "report", "--window", "pane", "--since", "2026-01-01T00:00:00Z", "--until",
                    "2026-12-01T00:00:00Z", "--format", "jsonl", "--min-n", "1")  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]

    got = report()
    key = ("window_start", "channel", "journey", "metric")
    assert sorted((tuple(r[k] for k in key), r["n"], r["value"]) for r in got) == sorted(
        (tuple(r[k] for k in key), r["n"], r["value"]) for r in expected
    )
    again = run(env, "backfill", str(events))
    assert again.returncode == 0, again.stderr
    assert report() == got
    # a worker holding the embedded store: its endpoint file names a live process (this test's)
    endpoint = tmp_path / "data" / "clickhouse-endpoint.json"
    endpoint.write_text(json.dumps({"url": "http://127.0.0.1:1/v1/query", "token": "t", "pid": os.getpid()}))
    held = run(env, "backfill", str(events))
    assert held.returncode == 1 and "held by a running worker" in held.stderr and len(held.stderr.splitlines()) == 1
