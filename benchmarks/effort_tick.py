"""What a tick of the effort detector costs on the merge process's event loop (it runs every second).

Fills the detector's ``effort-panes`` table as a day of traffic leaves it (every segment a CES pane every minute,
over the 24.5 hours an evaluation reaches with the default baseline and guard), lets it catch up, and times the
ticks after that, when there is nothing new to evaluate: the cost of holding the panes.

Usage::

    .venv/bin/python -m benchmarks.effort_tick [--segments 48] [--segments 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from schemas.codec import LocalCatalog
from sinks.effort_detector import EffortDetector
from sinks.prometheus import Snapshot
from streams.agents.base import AgentContext
from streams.agents.keys import PaneKey
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings

TOPIC = "cx.metrics.panes"
console = Console(width=120)


class Quiet:
    """A results producer that drops what it is given; a process that holds partition 0, settled."""

    def produce(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def flush(self) -> None:
        pass

    def assigned(self, topic: str) -> set[int]:
        return {0}

    def end(self, topic: str, partition: int) -> int | None:
        return 0

    def settled(self) -> bool:
        return True

    def rebalances(self) -> int:
        return 0


async def tick_ms(segments: int, ticks: int = 10) -> tuple[int, float]:
    """(panes held, mean milliseconds of a tick with nothing new to evaluate)."""
    settings = Settings(clickhouse_url="")
    quiet = Quiet()
    context = AgentContext(settings, WorkerMetrics(CollectorRegistry()), quiet, LocalCatalog(), quiet)  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    detector = EffortDetector(context, TOPIC, ({}, {}), Snapshot(), lambda: now)
    pane_ms = settings.pane_seconds * 1000
    for segment in range(segments):
        for back in range(1, detector.keep_ms // pane_ms):
            key = PaneKey(0, f"channel-{segment % 6}", f"journey-{segment}", now - now % pane_ms - back * pane_ms)
            detector.panes[key.encode()] = [1, 20, 3, {"hold_time": [2, 1]}]
    held = len(detector.panes)
    for _ in range(60):  # the first evaluations (MAX_STEPS panes a segment a tick)
        await detector.tick(now)
    started = time.perf_counter()
    for _ in range(ticks):
        await detector.tick(now)
    return held, 1000 * (time.perf_counter() - started) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, action="append", help="channel x journey segments (48, 500)")
    args = parser.parse_args()
    table = Table(title="an effort detector tick with nothing new to evaluate (every second, on the event loop)")
    for column in ("segments", "panes held", "ms a tick"):
        table.add_column(column, justify="right")
    for segments in args.segments or [48, 500]:
        held, ms = asyncio.run(tick_ms(segments))
        table.add_row(f"{segments:,}", f"{held:,}", f"{ms:,.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
