"""Backfill benchmark: `cxpulse backfill` against `cxpulse replay` of the same history (issue 36: "at least
replay's speed").

Writes N simulated answers (streams.simulate, comments and journeys as the simulator makes them) ending 30 days
ago, as JSON lines, then in the same run times
  1. replay in memory: what `cxpulse replay FILE` computes with the defaults (comments redacted and read as themes,
     journeys), its pane results and journey instances built, nothing written;
  2. backfill in this process: the same replay with every counted answer written to a fresh embedded store (chdb)
     as it is counted, then the pane results and journey instances, phase by phase;
  3. as a user runs them, each a process of its own: `cxpulse replay FILE -o ... --journeys ... --answers ...`,
     which writes the records a backfill stores (pane results, journey instances, answers with their themes) to
     files, and `cxpulse backfill FILE` into a fresh embedded store: wall time and peak memory of each;
and prints answers/s of each and backfill's ratio to replay.  Usage:

    .venv/bin/python -m benchmarks.backfill [--answers 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sinks import clickhouse as store
from sinks.store_access import ClientWriter
from streams.backfill import BackfillStats, HistoryWriter, replay_history
from streams.config import Settings
from streams.replay import replay_file
from streams.runtime import tune_gc
from streams.simulate import Simulator, to_file
from streams.themes import theme_matcher

DAY_MS = 86_400_000
RATE = 20.0  # answers per simulated second: 200,000 answers are ~2.8 hours of a large contact center


def write_history_file(path: Path, answers: int) -> None:
    start = int(time.time() * 1000) - 30 * DAY_MS
    simulator = Simulator(seed=7, rate=RATE, start_ms=start)
    to_file(simulator, int(answers / RATE * 1000), path)


def replay_alone(path: Path, settings: Settings) -> float:
    started = time.perf_counter()
    result = replay_file(
        path,
        settings.pane_seconds * 1000,
        lambda dead: None,
        journey_gap_ms=settings.journey_gap_seconds * 1000,
        comments=settings.comments,
        matcher=theme_matcher(settings),
    )
    result.results()
    result.journey_instances()
    return time.perf_counter() - started


def backfill(path: Path, settings: Settings, folder: Path) -> tuple[float, float, BackfillStats]:
    """(seconds replaying, seconds writing, stats) of one backfill into a fresh embedded store."""
    settings = settings.model_copy(update={"clickhouse_url": f"chdb://{folder}"})
    client = store.connect(settings)
    store.migrate(client)
    stats = BackfillStats(cutoff_ms=int(time.time() * 1000) - 7 * DAY_MS)
    started = time.perf_counter()
    writer = HistoryWriter(ClientWriter(client), stats, settings.pane_seconds * 1000)
    replay = replay_history(path, settings, stats.cutoff_ms, stats, None, writer.add_answers)
    replayed = time.perf_counter()
    writer.finish(replay)
    written = time.perf_counter()
    client.close()
    return replayed - started, written - replayed, stats


# a command's peak memory: its VmHWM, written at its exit (the rusage of a child counts the memory of the process it
# was forked from, this one's)
PEAK = (
    "import atexit, os, re; from streams.cli import main; atexit.register(lambda: open(os.environ['BENCH_PEAK'], 'w')"
    ".write(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))); main()"
)


def command_run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one cxpulse command as a process of its own."""
    peak = Path(env["CXPULSE_DATA_DIR"]) / "peak"
    peak.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *args], env={**env, "BENCH_PEAK": str(peak)}, capture_output=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"cxpulse {args[0]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return seconds, int(peak.read_text()) / 1024


def as_user_runs_them(path: Path, folder: Path, run: int) -> tuple[float, float, float, float]:
    """(replay s, replay MB, backfill s, backfill MB): `cxpulse replay` writing what a backfill stores to files,
    `cxpulse backfill` into a fresh embedded store."""
    env = {**os.environ, "CXPULSE_DATA_DIR": str(folder / f"data-{run}"), "CXPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    out = folder / f"out-{run}"
    out.mkdir()
    replay_s, replay_mb = command_run(
        ["replay", str(path), "-q", "-o", str(out / "results.jsonl"), "--journeys", str(out / "journeys.jsonl"),
         "--answers", str(out / "answers.jsonl")], env,
    )  # fmt: skip
    env["CXPULSE_CLICKHOUSE_URL"] = f"chdb://{folder / f'cli-store-{run}'}"
    backfill_s, backfill_mb = command_run(["backfill", str(path)], env)
    return replay_s, replay_mb, backfill_s, backfill_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_gc()  # as the cxpulse command does (streams/cli.py)
    settings = Settings()
    assert settings.journeys, "journeys are on by default"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "history.jsonl"
        write_history_file(path, args.answers)
        count = sum(1 for _ in path.open())
        print(f"history: {count:,} answers, 30 days ago ({path.stat().st_size / 1e6:.0f} MB of JSON lines)")
        alone, phases, commands = [], [], []
        for run in range(args.repeat):
            alone.append(replay_alone(path, settings))
            replaying, writing, stats = backfill(path, settings, folder / f"store-{run}")
            phases.append((replaying, writing))
            commands.append(as_user_runs_them(path, folder, run))
            replay_cli, replay_mb, backfill_cli, backfill_mb = commands[-1]
            print(
                f"run {run + 1}: replay in memory {count / alone[-1]:,.0f}/s ({alone[-1]:.1f} s); backfill "
                f"{count / (replaying + writing):,.0f}/s ({replaying:.1f} s replaying, {writing:.1f} s writing "
                f"{stats.panes:,} pane results, {stats.answers:,} answers, {stats.journeys:,} journey instances); "
                f"commands: cxpulse replay {replay_cli:.1f} s ({replay_mb:,.0f} MB), cxpulse backfill "
                f"{backfill_cli:.1f} s ({backfill_mb:,.0f} MB)"
            )
        replay_s = statistics.median(alone)
        backfill_s = statistics.median(r + w for r, w in phases)
        print(
            f"median of {args.repeat}: replay in memory {count / replay_s:,.0f} answers/s, backfill "
            f"{count / backfill_s:,.0f} answers/s ({replay_s / backfill_s:.2f}x; replaying "
            f"{statistics.median(r for r, _ in phases):.1f} s, writing {statistics.median(w for _, w in phases):.1f} s)"
        )
        replay_cli = statistics.median(c[0] for c in commands)
        backfill_cli = statistics.median(c[2] for c in commands)
        print(
            f"median of {args.repeat}, as a user runs them: `cxpulse replay` writing the same records to files "
            f"{count / replay_cli:,.0f} answers/s ({replay_cli:.1f} s, peak "
            f"{statistics.median(c[1] for c in commands):,.0f} MB), `cxpulse backfill` {count / backfill_cli:,.0f} "
            f"answers/s ({backfill_cli:.1f} s, peak {statistics.median(c[3] for c in commands):,.0f} MB): "
            f"{replay_cli / backfill_cli:.2f}x replay's speed"
        )


if __name__ == "__main__":
    main()
