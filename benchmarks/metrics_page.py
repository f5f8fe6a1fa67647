"""The worker's /metrics page at the label cap: its size and how long prometheus_client takes to render it.

500 segments (CXPULSE_LABEL_CAP) x 5 metrics x the default windows (5m, 1h, 24h), every KPI gauge with its eight
additive components; then with the components of the 24-hour window only (CXPULSE_KPI_COMPONENT_WINDOWS=24h) and
with none.  Median of 5 scrapes each: the merge process builds and writes its page, the supervisor merges it.

    .venv/bin/python -m benchmarks.metrics_page [--segments 500]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from prometheus_client import CollectorRegistry, generate_latest

from sinks.prometheus import Snapshot, window_families, window_text
from streams.agents.metrics import WorkerMetrics
from streams.core.aggregate import State
from streams.worker.supervisor import merge_pages

METRICS = ("NPS", "CES", "CSAT", "NLS", "CAS")
WINDOWS = (300, 3600, 86400)


def windows_of(segments: int, rng: random.Random) -> dict[int, dict[tuple[str, str, str], State]]:
    out: dict[int, dict[tuple[str, str, str], State]] = {}
    for window in WINDOWS:
        states = {}
        for i in range(segments):
            for metric in METRICS:
                n = rng.randint(5, 5000)
                promoters = rng.randint(0, n)
                detractors = rng.randint(0, n - promoters)
                states[(f"channel{i % 25}", f"journey{i // 25}", metric)] = State(
                    n, promoters, n - promoters - detractors, detractors, promoters, detractors, n * 10**9, n * 10**9
                )
        out[window] = states
    return out


def measure(segments: int, components: set[int] | None) -> tuple[int, int, float, float, float]:
    """Page bytes and lines; seconds (median of 5) to build and write the merge process's page (built lazily at
    the scrape, written by streams.agents.exposition), for the supervisor to merge it with a hot path's page, and,
    for comparison, for prometheus_client to write the same families."""
    windows = windows_of(segments, random.Random(1))
    hotpath = WorkerMetrics(CollectorRegistry())
    hotpath.records.labels("cx.feedback").inc(5)
    child, page = WorkerMetrics(CollectorRegistry()), b""
    snapshot = Snapshot()
    child.snapshots.append(snapshot)
    builds, merges, library = [], [], []
    for _ in range(5):
        snapshot.set_lazy(
            lambda: window_families(windows, 1_800_000_000_000, segments, components)[0],
            lambda: window_text(windows, 1_800_000_000_000, segments, components),
        )
        started = time.perf_counter()
        page = child.page()
        builds.append(time.perf_counter() - started)
        started = time.perf_counter()
        merge_pages({"merge": page.decode(), "hotpath-0": hotpath.page().decode()})
        merges.append(time.perf_counter() - started)
        registry = CollectorRegistry()
        registry.register(snapshot)
        started = time.perf_counter()
        generate_latest(registry)
        library.append(time.perf_counter() - started)
    return len(page), page.count(b"\n"), *map(statistics.median, (builds, merges, library))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=500)
    args = parser.parse_args()
    print(f"/metrics at {args.segments} segments x {len(METRICS)} metrics x {len(WINDOWS)} windows")
    print(f"{'components of':<16}{'bytes':>11}{'lines':>8}{'page s':>8}{'merge s':>9}{'scrape s':>10}{'before s':>10}")
    for name, components in (("every window", None), ("24h window", {86400}), ("no window", set())):
        size, lines, build, merge, library = measure(args.segments, components)
        print(f"{name:<16}{size:>11,}{lines:>8,}{build:>8.3f}{merge:>9.3f}{build + merge:>10.3f}{library:>10.3f}")
    print("page s: the merge process writes its page (window_text); merge s: the supervisor's merge;")
    print("scrape s: the two; before s: prometheus_client writing the same families (the supervisor also parsed")
    print("the page back: 5.9 s for every window at 500 segments).")


if __name__ == "__main__":
    main()
