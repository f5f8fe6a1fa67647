"""Local state on disk (issue 19): the hot path's remembered ids (streams.worker.seen) and the merge process's
table copies (streams.agents.local_tables).  A restart trusts them only up to their checkpoints and reads the
changelogs past them.  Killed while it writes them, or started on copies older than its committed offsets, the
worker still equals replay, each invalid event once on the DLQ."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from streams.config import Settings
from tests.support import free_ports
from tests.workers import (
    CONVERGE_SECONDS,
    Pipeline,
    assert_dead_letters_once,
    children,
    converge,
    expected_results,
    latest_results,
    mixed_events,
    produce,
    running_worker,
    scrape,
    split,
    start_worker,
    stop_worker,
    wait_for,
)

FLAKY_WORKER = [sys.executable, "-m", "tests.integration.flaky_worker"]
RESTORED = re.compile(
    r"hotpath-0: partitions \[[\d, ]+\] restored in [\d.]+ s: (\d+) ids from local state, (\d+) changelog"
)


class CrashRun(NamedTuple):
    """6,000 mixed events in two halves, what replay makes of them, and a port, log and crash marker for a worker
    that kills a process of its own once."""

    settings: Settings
    expected: Any
    invalid: Any
    first: Path
    second: Path
    port: int
    log: Path
    marker: Path

    @classmethod
    def of(cls, pipeline: Pipeline, tmp_path: Path) -> CrashRun:
        source = tmp_path / "events.jsonl"
        mixed_events(source, 6000)
        expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
        first, second = split(source, 2)
        port, log, marker = free_ports(1)[0], tmp_path / "worker.log", tmp_path / "crashed-in-a-write"
        return cls(pipeline.settings, expected, invalid, first, second, port, log, marker)


def restores(log: Path) -> list[tuple[int, int]]:
    """(ids from local state, changelog entries read after it) of every restore the hot path logged."""
    return [(int(a), int(b)) for a, b in RESTORED.findall(log.read_text())]


def test_kill_9_while_remembered_ids_are_written_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    """Runs written every 40 ids; the slot dies by SIGKILL inside its third write (files on disk, manifest not
    yet renamed), and once more mid-stream while it keeps writing."""
    settings, expected, invalid, first, second, port, log, marker = CrashRun.of(pipeline, tmp_path)
    with running_worker(
        pipeline,
        log,
        metrics_port=port,
        command=FLAKY_WORKER,
        CXPULSE_TEST_SEEN_FLUSH_IDS="40",
        CXPULSE_TEST_SEEN_CRASH=str(marker),
    ) as worker:
        produce(settings, first)
        wait_for(marker.exists, "the hot path killed inside a write of its runs", log)
        wait_for(lambda: "hotpath-0 was killed by SIGKILL; restarting it" in log.read_text(), "a restart", log)
        deadline = time.monotonic() + CONVERGE_SECONDS
        latest_results(settings.kafka_bootstrap, settings.results_topic, bool, deadline)  # results are flowing
        produce(settings, second)
        wait_for(lambda: "hotpath-0" in children(worker.pid), "the hot path running again", log)
        os.kill(children(worker.pid)["hotpath-0"], signal.SIGKILL)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        assert scrape(port)['cxpulse_worker_process_restarts_total{process="hotpath-0"}'] == 2
        assert any(local > 0 for local, _ in restores(log)[1:])  # a restart used the runs on disk
        stop_worker(worker, log)


def test_kill_9_inside_a_write_of_the_table_copies_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    """The merge process writes its copies every 0.2 s and dies by SIGKILL inside one checkpoint (one partition's
    copy of the pane table moved on, the others not); restarted, it reads the panes from those copies in place
    and the changelogs past them: the results equal replay."""
    settings, expected, invalid, first, second, port, log, marker = CrashRun.of(pipeline, tmp_path)
    with running_worker(
        pipeline, log, metrics_port=port, command=FLAKY_WORKER, CXPULSE_TEST_TABLES_CRASH=str(marker)
    ) as worker:
        produce(settings, first)
        wait_for(marker.exists, "the merge process killed inside a write of its table copies", log)
        wait_for(lambda: "merge was killed by SIGKILL; restarting it" in log.read_text(), "a restart", log)
        produce(settings, second)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        page = scrape(port)
        assert page['cxpulse_worker_process_restarts_total{process="merge"}'] == 1
        assert page['cxpulse_worker_restored_total{source="local",table="panes"}'] > 0  # the copies were used
        stop_worker(worker, log)


def test_local_state_older_than_the_committed_offsets_catches_up_from_the_changelog(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The worker's whole local state (remembered ids, table copies) is put back to a copy taken a chunk ago;
    then a third of both chunks arrives again: each answer must still count once."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 6000)
    first, second = split(source, 2)
    lines = source.read_text().splitlines(keepends=True)
    again = tmp_path / "again.jsonl"
    again.write_text("".join(lines[::3]))  # a third of both chunks, sent a second time
    everything = tmp_path / "everything.jsonl"
    everything.write_text(source.read_text() + again.read_text())
    settings = pipeline.settings
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, first)
        converge(settings, expected_results(first, settings.pane_seconds)[0], log)
        wait_for(
            lambda: scrape(port, starting=True).get("cxpulse_worker_local_copy_messages_total", 0) > 0,
            "table copies written",
            log,
        )
        stop_worker(worker, log)  # a clean stop writes the remembered ids to disk
        shutil.copytree(settings.data_dir, tmp_path / "older")
        worker = start_worker(pipeline, log, metrics_port=port)
        produce(settings, second)
        converge(settings, expected_results(source, settings.pane_seconds)[0], log)
        stop_worker(worker, log)
        shutil.rmtree(settings.data_dir)
        shutil.copytree(tmp_path / "older", settings.data_dir)
        worker = start_worker(pipeline, log, metrics_port=port)
        produce(settings, again)
        records = f'cxpulse_worker_records_total{{topic="{settings.feedback_topic}"}}'
        sent = len(again.read_text().splitlines())
        # the results do not change (every answer is a duplicate): wait for the worker to have read them all
        wait_for(lambda: scrape(port, starting=True).get(records) == sent, "the answers sent again read", log)
        wait_for(lambda: scrape(port).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        expected, invalid = expected_results(everything, settings.pane_seconds)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        local, entries = restores(log)[-1]
        assert local > 0 and entries > 0  # the older copy was used, and the changelog read past its checkpoint
        assert scrape(port)['cxpulse_worker_restored_total{source="local",table="panes"}'] > 0
        stop_worker(worker, log)
