"""`cxpulse import --backfill` and `cxpulse backfill` as an analyst runs them, on the embedded store (each command a
process of its own, as the user's are): the Qualtrics-style export of tests/unit/test_import.py (its answers are
older than the stream's retention) ends up in the store as replay of its events computes it, `report` reads it,
a second run changes nothing; and beside a running default worker that holds the embedded store, a backfill goes
through the worker, leaves the panes the stream wrote as they are and twice changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sinks import clickhouse as store
from sinks.clickhouse import StoreError
from sinks.store_access import EndpointWriter
from streams.backfill import cutoff_of
from streams.config import Settings
from streams.core.journey_kpis import JourneyCounts, counts_of
from streams.core.windows import iso_utc, result_json, result_record
from streams.replay import replay_file
from tests.support import RunningBroker, cxpulse_command, event, theme_records
from tests.unit.test_import import MAPPING, write_export
from tests.workers import make_pipeline, running_worker, wait_for


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
    # the journeys and the themes of the history, as `report` reads them from the store, equal replay's
    settings = Settings()
    replayed = replay_file(events, 60_000, lambda dead: None, journey_gap_ms=settings.journey_gap_seconds * 1000)
    journeys: dict[str, JourneyCounts] = {}
    for i in replayed.journey_instances(now_ms=cutoff_of(settings, int(time.time() * 1000))):
        if i.closed:
            journeys[i.journey] = journeys.get(i.journey, JourneyCounts()) + counts_of(i)
    assert sum(c.journeys for c in journeys.values()) == 3  # K-17, K-19 and K-20, each closed long ago

    def journey_report() -> dict[str, JourneyCounts]:
        shown = run(env, "report", "--journeys", "--window", "8000h", "--until", "2026-12-01T00:00:00Z",
                    "--format", "jsonl")  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        rows = [json.loads(line) for line in shown.stdout.splitlines()]
        return {r["journey"]: JourneyCounts(*(r[f] for f in JourneyCounts._fields)) for r in rows}

    def theme_report() -> dict[tuple[Any, ...], tuple[int, ...]]:
        period = ("--since", "2026-01-01T00:00:00Z", "--until", "2026-12-01T00:00:00Z")
        by_theme = ("--window", "pane", "--by", "channel,journey,theme", "--format", "jsonl")
        return theme_records(run(env, "report", *by_theme, *period))

    assert journey_report() == journeys
    themes = theme_report()
    assert themes == theme_records(run(env, "replay", str(events), "-q", "--themes", "-", "-o", os.devnull))
    assert any(k[-1] == "(any)" for k in themes)  # the export's comments were read
    again = run(env, "backfill", str(events))
    assert again.returncode == 0, again.stderr
    assert report() == got and journey_report() == journeys and theme_report() == themes
    # a worker that held the store and is gone (its endpoint file names a live process that serves nothing):
    # one line saying so, no traceback
    endpoint = tmp_path / "data" / "clickhouse-endpoint.json"
    endpoint.write_text(json.dumps({"url": "http://127.0.0.1:1/v1/query", "token": "t", "pid": os.getpid()}))
    held = run(env, "backfill", str(events))
    assert held.returncode == 1 and "did not answer" in held.stderr and "Traceback" not in held.stderr, held.stderr


PANE_SECONDS, RETENTION_SECONDS = 5, 20  # the stream's pane is older than the cutoff 20-25 s after it was counted


def test_a_backfill_beside_a_running_worker_leaves_the_streams_panes(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    """A default worker (journeys on, the embedded store it holds) counts answers of one pane; once that pane is
    older than the retention, a backfill of history that reaches into it and before it goes through the worker
    (one process opens the embedded store): the stream's pane keeps its count and version, the older panes are
    replay of the older history, and a second backfill changes no row."""
    pipeline = make_pipeline(
        kafka_broker.bootstrap, tmp_path, create_topics=False, clickhouse_url=f"chdb://{tmp_path / 'store'}",
        pane_seconds=PANE_SECONDS, windows_seconds=(10, 20), retention_seconds=RETENTION_SECONDS,
    )  # fmt: skip
    env = {**pipeline.env, "CXPULSE_METRICS_PORT": "0"}
    log = tmp_path / "worker.log"
    pane_ms = PANE_SECONDS * 1000
    with running_worker(pipeline, log):
        wait_for(lambda: store.endpoint_of(pipeline.settings.data_dir) is not None, "the store's endpoint", log)
        now = int(time.time() * 1000)
        pane = now - now % pane_ms
        live = [event(event_id=f"live-{i}", occurred_at=pane + i, score=1 + i % 7) for i in range(40)]
        stream_file = tmp_path / "live.jsonl"
        stream_file.write_text("".join(json.dumps(e) + "\n" for e in live))
        sent = run(env, "produce", str(stream_file))
        assert sent.returncode == 0, sent.stderr
        reader = EndpointWriter(store.endpoint_of(pipeline.settings.data_dir))  # type: ignore[arg-type]
        in_store = "SELECT max(n), max(version) FROM cxpulse.pane_results FINAL WHERE channel = 'phone'"
        wait_for(lambda: reader.rows(in_store, {})[0][0] == 40, "the stream's pane in the store", log)
        stream_version = reader.rows(in_store, {})[0][1]
        assert stream_version > 0
        # history: more answers of the stream's pane (the stream never saw them) and of two hours before it
        older = [
            event(event_id=f"old-{i}", occurred_at=pane - 7_200_000 + i * 60_000, channel=("phone", "chat")[i % 2],
                  score=1 + i % 7, customer_id=f"c-{i % 9}")
            for i in range(60)
        ]  # fmt: skip
        history = [*older, *(event(event_id=f"late-{i}", occurred_at=pane + 100 + i, score=7) for i in range(15))]
        history_file = tmp_path / "history.jsonl"
        history_file.write_text("".join(json.dumps(e) + "\n" for e in history))
        # the stream's pane falls out of the retention (the cutoff is now - 20 s, down to a pane)
        wait_for(lambda: time.time() * 1000 - RETENTION_SECONDS * 1000 > pane + 2 * pane_ms, "the retention", log)
        reports = []
        for _ in range(2):
            done = run(env, "backfill", str(history_file))
            assert done.returncode == 0, done.stderr
            assert "into the running worker's store" in done.stderr and "1 panes the stream had written" in done.stderr
            since, until = iso_utc(pane - 8_000_000), iso_utc(pane + pane_ms)
            shown = run(env, "report", "--window", "pane", "--since", since, "--until", until, "--format", "jsonl",
                        "--min-n", "1", "--by", "channel,journey")  # fmt: skip
            assert shown.returncode == 0, shown.stderr
            reports.append(sorted(shown.stdout.splitlines()))
        assert reports[0] == reports[1]  # the second backfill changed nothing
        got = {(r["window_start"], r["channel"], r["metric"]): r for r in map(json.loads, reports[0])}
        mine = got.pop((iso_utc(pane), "phone", "CES"))
        assert mine["n"] == 40  # the stream's count: the history's 15 answers of its pane were not added
        (tmp_path / "older.jsonl").write_text("".join(json.dumps(e) + "\n" for e in older))
        expected = replay_file(tmp_path / "older.jsonl", pane_ms, lambda dead: None).results()
        assert {k: (r["n"], r["value"]) for k, r in got.items()} == {
            (iso_utc(r.window_start), r.channel, r.metric): (r.n, result_json(r)["value"]) for r in expected
        }
        # the worker's store endpoint takes a backfill's rows only: version 0, its three tables, with the token
        row = store.pane_row(result_record(expected[0]._replace(version=stream_version + 1)))
        data = [[value] for value in row]  # one row, column by column
        with pytest.raises(StoreError, match="version 0 only"):
            reader.insert("pane_results", data, store.PANE_COLUMNS, "t")
        with pytest.raises(StoreError, match="table must be one of"):
            reader.insert("followups", data, store.PANE_COLUMNS, "t")
        with pytest.raises(StoreError, match="bearer token is required"):
            EndpointWriter(store.Endpoint(reader.url, "guess")).insert("pane_results", data, store.PANE_COLUMNS, "t")
        assert reader.rows(in_store, {})[0] == [40, stream_version]
        stored = "SELECT count() FROM cxpulse.answers FINAL WHERE event_id LIKE 'late-%'"
        assert reader.rows(stored, {})[0][0] == 0
