"""Backfill benchmark: `cxpulse backfill` against `cxpulse replay` of the same history (issue 36: "at least
replay's speed").

Writes N simulated answers (streams.simulate, comments and journeys as the simulator makes them) ending 30 days
ago, as JSON lines, then in the same run times
  1. replay: what `cxpulse replay FILE` does with the defaults (comments redacted and read as themes, journeys),
     its pane results and journey instances built;
  2. backfill: the same replay with every counted answer kept as the store keeps it, then everything written into
     a fresh embedded store (chdb), phase by phase;
and prints answers/s of each and backfill's ratio to replay.  Usage:

    .venv/bin/python -m benchmarks.backfill [--answers 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sinks import clickhouse as store
from sinks.store_access import ClientWriter
from streams.backfill import BackfillStats, replay_history, write_history
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
    replay, answers = replay_history(path, settings, stats.cutoff_ms, stats, None)
    replayed = time.perf_counter()
    write_history(ClientWriter(client), replay, answers, stats)
    written = time.perf_counter()
    client.close()
    return replayed - started, written - replayed, stats


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
        alone, phases = [], []
        for run in range(args.repeat):
            alone.append(replay_alone(path, settings))
            replaying, writing, stats = backfill(path, settings, folder / f"store-{run}")
            phases.append((replaying, writing))
            print(
                f"run {run + 1}: replay {count / alone[-1]:,.0f}/s ({alone[-1]:.1f} s); backfill "
                f"{count / (replaying + writing):,.0f}/s ({replaying:.1f} s replaying, {writing:.1f} s writing "
                f"{stats.panes:,} pane results, {stats.answers:,} answers, {stats.journeys:,} journey instances)"
            )
        replay_s = statistics.median(alone)
        backfill_s = statistics.median(r + w for r, w in phases)
        print(
            f"median of {args.repeat}: replay {count / replay_s:,.0f} answers/s, backfill {count / backfill_s:,.0f} "
            f"answers/s ({replay_s / backfill_s:.2f}x replay's speed; replaying "
            f"{statistics.median(r for r, _ in phases):.1f} s, writing {statistics.median(w for _, w in phases):.1f} s)"
        )


if __name__ == "__main__":
    main()
