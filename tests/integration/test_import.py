"""`cxpulse import --to-kafka` as an analyst runs it, beside a worker with its defaults: a Qualtrics-style export
of the last hours (local times in Europe/Amsterdam, Dutch labels, a reversed effort question, a refused row) goes
to the feedback topic, and the worker's pane results equal replay of the events `import -o` writes of the same
export; importing it again changes no count."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.support import RunningBroker, cxpulse_command, free_ports, stop_process
from tests.unit.test_import import HEADER, MAPPING
from tests.workers import converge, expected_results, make_pipeline, scrape, start_worker, stop_worker, wait_for


def recent_export(path: Path, rows: int) -> None:
    """``rows`` responses over the last two hours, as the export's local times; one with an NPS of 12 (refused)."""
    zone = ZoneInfo("Europe/Amsterdam")
    now = datetime.now(zone).replace(tzinfo=None)
    lines = list(HEADER)
    for i in range(rows):
        at = (now - timedelta(seconds=7200 * (rows - i) / rows)).strftime("%Y-%m-%d %H:%M:%S")
        channel = ("Telefoon", "Chat")[i % 2]
        nps = 12 if i == 7 else i % 11
        csat = ("Zeer ontevreden", "Ontevreden", "Neutraal", "Tevreden", "Zeer tevreden")[i % 5]
        said = "Lang in de wacht gestaan" if i % 3 == 0 else ""
        lines.append(f"{at};{at};0;{at};R_{i:04d};K-{i % 40};{channel};{nps};{1 + i % 7};{csat};{said}")
    path.write_bytes("\r\n".join(lines).encode("utf-8-sig"))


def test_an_imported_export_reaches_the_worker_and_counts_once(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path, create_topics=False)  # the worker makes them
    port = free_ports(1)[0]
    export, mapping = tmp_path / "export.csv", tmp_path / "mapping.yaml"
    recent_export(export, 300)
    mapping.write_text(MAPPING)
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log, metrics_port=port)
    try:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        events = tmp_path / "events.jsonl"
        for _ in range(2):  # the same export twice: the same event ids, each counted once
            done = subprocess.run(
                cxpulse_command("import", str(export), "--map", str(mapping), "-o", str(events), "--to-kafka"),
                env=pipeline.env, capture_output=True, text=True, check=False, timeout=120,
            )  # fmt: skip
            assert done.returncode == 3, done.stderr  # the NPS of 12
            assert "sent 899 to " in done.stderr and "score_out_of_range 1" in done.stderr, done.stderr
        expected, dead = expected_results(events, pipeline.settings.pane_seconds)
        assert dead == 0 and sum(r["n"] for r in expected.values()) == 899
        # the second copy of every answer was read (and dropped) before the counts are compared
        wait_for(lambda: scrape(port).get("cxpulse_worker_duplicates_total") == 899, "the second import read", log)
        converge(pipeline.settings, expected, log)
        stop_worker(worker, log)
    finally:
        stop_process(worker)
