"""`make bench-state`: what the worker's remembered state costs (issue 19): memory, disk and restart time.

Starts its own Kafka broker, loads N unique, valid answers (UUID event ids, event times over the last 6 days,
48 channel x journey segments, keyed by customer) into a 6-partition topic, and runs ``cxpulse worker`` (default
7-day retention, no ClickHouse) three times over it:

1. ingest: from launch until every answer is remembered (``cxpulse_worker_remembered_ids`` = N) and the merge
   has caught up; RSS of each process, disk under the data dir;
2. restart, local state intact: SIGTERM, start again, time to ``cxpulse_worker_ready 1`` with every id
   remembered; RSS after;
3. restart, local state wiped (the data dir's process state removed, the changelogs left): the same, i.e. a
   full restore from the changelogs.  Its rate is N / seconds.

Each run then waits for the journey agent to catch up (its group's committed offsets at the end of
``<app>-journey-answers``): "journeys caught up", from launch; the RSS is read after that.

Usage::

    .venv/bin/python -m benchmarks.state [--answers 1000000] [--answers 3000000 ...] [--logs DIR --loglevel info]
                                           [--no-journeys] [--changelog-segment-seconds 60] [--profile DIR]

``--profile DIR`` samples the worker's processes with py-spy from launch to complete in each run (the journeys'
catching up after that is not in it); ``python -m benchmarks.profile DIR/<answers>-wiped.txt`` says where they went.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from benchmarks import profile as profiling
from benchmarks.bench import (
    FIELDS,
    PARTITIONS,
    RUN_TIMEOUT_SECONDS,
    cxpulse_settings,
    load,
    process_names,
    spawn,
    stop,
    tree_rss_mb,
    wait_journeys,
    warm_up,
)
from schemas.codec import FEEDBACK, encode_confluent
from streams.config import Settings
from streams.core.synth import CHANNELS, realistic_events
from streams.topics import TopicSpec, ensure_topics, topic_specs
from tests.support import start_broker

DAY_MS = 86_400_000
WAIT_SECONDS = 3600.0
console = Console(width=200)
RESTORED = re.compile(r"restored in ([\d.]+) s: (\d+) ids from local state, (\d+) changelog entries")


@dataclass
class Phase:
    """One run of the worker: how long until it had everything, its memory by process, the data dir's size."""

    name: str
    seconds: float
    rss_mb: dict[str, float]
    disk_mb: float
    hotpath_restore: str = ""  # the hot path's own restore: seconds, ids from local state, changelog entries
    journeys_seconds: float | None = None  # launch to the journeys group's committed offsets at the topic's end

    @property
    def total_rss_mb(self) -> float:
        return sum(self.rss_mb.values())


def messages(count: int, now_ms: int) -> list[tuple[bytes, bytes, int]]:
    """``count`` unique valid answers over the last 6 days, UUID event ids, 48 segments."""
    rng = random.Random(19)
    out = []
    events = realistic_events(
        count,
        seed=19,
        start_ms=now_ms - 6 * DAY_MS,
        per_second=count / (6 * DAY_MS / 1000),
        invalid_share=0.0,
        duplicate_share=0.0,
        channels=(*CHANNELS, "sms"),
    )
    for event in events:
        record = {**FIELDS, **event, "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
        out.append((record["customer_id"].encode(), encode_confluent(record, FEEDBACK, 1), record["occurred_at"]))
    return out


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
            elif sample.name == "cxpulse_consumer_lag_messages":
                out[f"lag {sample.labels.get('topic')} {sample.labels.get('partition')}"] = sample.value
    return out


def wait_complete(port: int, answers: int, proc: subprocess.Popen[bytes]) -> float:
    """Seconds from now until the worker is ready, remembers every answer and has no consumer lag anywhere (a
    partition with nothing to read may show no lag at all)."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT_SECONDS:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}")
        page = scrape(port)
        lags = [value for name, value in page.items() if name.startswith("lag ")]
        if (
            page.get("cxpulse_worker_ready") == 1.0
            and page.get("cxpulse_worker_remembered_ids") == answers
            and not any(lags)
        ):
            return time.monotonic() - started
        time.sleep(0.1)  # polling an endpoint that has no push
    raise SystemExit(f"the worker did not have all {answers} answers within {WAIT_SECONDS:.0f} s")


def rss_by_process(pid: int) -> dict[str, float]:
    """RSS (MB) of the worker's supervisor and of each child, named by its module."""
    kids = process_names(pid)
    out = {"supervisor": tree_rss_mb(pid) - sum(tree_rss_mb(child) for child in kids)}
    out.update({name: tree_rss_mb(child) for child, name in kids.items()})
    return out


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def run_phase(
    name: str,
    settings: Settings,
    env: dict[str, str],
    answers: int,
    log: Path,
    loglevel: str = "warn",
    profile: Path | None = None,
) -> Phase:
    """One run of the worker until it is complete (ready, every id remembered, no lag), then until the journey
    agent has caught up (its own column: the journeys process works at a lower priority); RSS after both."""
    port, data_dir = settings.metrics_port, settings.data_dir
    before = log.stat().st_size if log.exists() else 0
    with log.open("a") as out:
        out.write(f"=== {name} ===\n")
    launched = time.time()
    proc = spawn([sys.executable, "-m", "streams.cli", "worker", "--loglevel", loglevel], env, log)
    sampler = profiling.record(proc.pid, profile) if profile is not None else None
    try:
        seconds = wait_complete(port, answers, proc)
        if sampler is not None:
            profiling.stop(sampler)
        # the journeys' commits seemed to follow ~2,000-4,000 answers/s: 3,000,000 took longer than the 900 s other
        # waits get (2026-12-03).  That was Faust committing one message a partition per commit over transactional
        # input (robinhood/faust#625, fixed in faust_compat.offsets_between on 2026-12-08); the bound stays
        timeout = max(RUN_TIMEOUT_SECONDS, answers / 1000)
        journeys = wait_journeys(settings, proc, timeout) - launched if settings.journeys else None
        rss = rss_by_process(proc.pid)
    finally:
        if sampler is not None:
            profiling.stop(sampler)
        proc.send_signal(signal.SIGTERM)
        stop(proc)
    with log.open("rb") as text:
        text.seek(before)
        found = RESTORED.findall(text.read().decode(errors="replace"))
    restore = f"{found[0][0]} s: {int(found[0][1]):,} local + {int(found[0][2]):,} entries" if found else ""
    return Phase(name, seconds, rss, disk_mb(data_dir), restore, journeys)


def wipe_process_state(data_dir: Path) -> None:
    """Remove what the worker's processes keep locally (everything but the broker's data, which is elsewhere)."""
    for child in data_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def bench(
    bootstrap: str,
    workdir: Path,
    answers: int,
    loglevel: str = "warn",
    journeys: bool = True,
    segment_seconds: int | None = None,
    profiles: Path | None = None,
) -> list[Phase]:
    topic = f"state-{answers}-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, {})])
    console.print(f"[bold]{answers:,} answers[/]: generating and loading ...")
    load(bootstrap, topic, messages(answers, int(time.time() * 1000)))
    extra = {} if segment_seconds is None else {"changelog_segment_seconds": segment_seconds}
    settings, env = cxpulse_settings(bootstrap, topic, workdir, journeys=journeys, **extra)
    ensure_topics(bootstrap, topic_specs(settings))
    log = workdir / f"worker-{answers}.log"
    phases = []
    for name in ("ingest", "restart, state intact", "restart, state wiped"):
        if name.endswith("wiped"):
            wipe_process_state(settings.data_dir)
        profile = None if profiles is None else profiles / f"{answers}-{name.split()[-1]}.txt"
        phases.append(run_phase(name, settings, env, answers, log, loglevel, profile))
        console.print(f"  {name}: {phases[-1].seconds:.1f} s, RSS {phases[-1].total_rss_mb:,.0f} MB")
    return phases


def show(results: dict[int, list[Phase]]) -> None:
    table = Table(title="remembered state (7-day retention, answers over 6 days, no ClickHouse)")
    processes = sorted({name for phases in results.values() for phase in phases for name in phase.rss_mb})
    columns = (
        "answers",
        "run",
        "to complete",
        "journeys caught up",
        "RSS total",
        *(f"RSS {name}" for name in processes),
        "data dir",
    )
    for column in (*columns, "hot path restore"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for answers, phases in results.items():
        for phase in phases:
            rate = f" ({answers / phase.seconds:,.0f}/s)" if phase.name != "ingest" else ""
            table.add_row(
                f"{answers:,}",
                phase.name,
                f"{phase.seconds:.1f} s{rate}",
                "-" if phase.journeys_seconds is None else f"{phase.journeys_seconds:.1f} s",
                f"{phase.total_rss_mb:,.0f} MB",
                *(f"{phase.rss_mb.get(name, 0):,.0f} MB" for name in processes),
                f"{phase.disk_mb:,.0f} MB",
                phase.hotpath_restore,
            )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, action="append", help="remembered answers (repeatable; 1,000,000)")
    parser.add_argument("--logs", type=Path, help="copy the worker's logs into this directory (made if missing)")
    parser.add_argument("--loglevel", default="warn", help="the worker's log level (info: restores, timings)")
    parser.add_argument(
        "--no-journeys",
        dest="journeys",
        action="store_false",
        help="run the worker without customer journeys (CXPULSE_JOURNEYS=false)",
    )
    parser.add_argument(
        "--changelog-segment-seconds",
        type=int,
        help="CXPULSE_CHANGELOG_SEGMENT_SECONDS of the worker (default: the worker's, 3600): a short one shows in "
        "minutes what compaction does to a restore over hours",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the worker's processes with py-spy in each run, launch to ready (DIR/<answers>-<run>.txt; "
        "read with python -m benchmarks.profile)",
    )
    args = parser.parse_args()
    sizes = args.answers or [1_000_000]
    with tempfile.TemporaryDirectory(prefix="cxpulse-state-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir / "kafka")
        try:
            warm_up(broker.bootstrap)
            results = {
                answers: bench(
                    broker.bootstrap,
                    workdir,
                    answers,
                    args.loglevel,
                    args.journeys,
                    args.changelog_segment_seconds,
                    args.profile,
                )
                for answers in sizes
            }
        finally:
            broker.stop()
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("worker-*.log"):
                    shutil.copy(log, args.logs / log.name)
    show(results)


if __name__ == "__main__":
    main()
