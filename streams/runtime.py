"""How every cxpulse process sets up Python's cyclic garbage collector, and what it costs.

cxpulse's processes hold large heaps of long-lived containers (a replay's panes, de-duplicator and journey book;
a worker's tables and remembered ids) and make many short-lived ones for each batch.  With CPython's defaults
(a young collection every 700 net container allocations) batch objects outlive young collections, reach the
oldest generation and trigger full collections that walk the whole heap and free nothing: a replay of 100,000
answers ran 12 full collections that collected 0 objects and took 40% of its time (3.44 s, 2.1 s with the
thresholds below; a backfill 7.1 s, 4.0 s; the hot path's batch step alone 39,000 -> 46,000 events/s, where these
thresholds were first measured).  So each process, once started:

- freezes what it has made so far (imports, settings, compiled taxonomies: ``gc.freeze``), which no collection
  walks again;
- lets :data:`YOUNG_OBJECTS` containers accumulate before a young collection: a batch's objects are mostly freed
  before it runs and never get old.  Cycles are still found (a young collection walks at most ~200,000 objects);
  garbage in a cycle lives a little longer.

``gc_seconds`` is the CPU time the process spent collecting, by generation (for a benchmark or a debugger: a heap
that outgrows the setting shows there first).
"""

from __future__ import annotations

import gc
import time
from typing import Any

# net container allocations between young collections (CPython's default: 700).  Above what one batch keeps alive
# at once: at 50,000 a journeys run of 512 KB (~5,000 answers) and a hot-path batch of 10,000 messages each met a
# young collection that walked their live objects, and the journeys' states held until their checkpoint on top
# (2026-12-07, issue 35: `benchmarks.journeys_step` 58,897-70,188 -> 66,938-74,222 answers/s, the hot path's step
# +1-4%; the quiet run's RSS mean 741 -> 752 MB)
YOUNG_OBJECTS = 200_000
OLDER_EVERY = 20  # young collections per middle one, middle ones per full one (CPython's default: 10)

gc_seconds = [0.0, 0.0, 0.0]  # time spent collecting, by generation collected
_started: list[float] = []


def time_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.thread_time())  # the collecting thread's CPU: other processes' turns not counted
    elif _started:
        gc_seconds[info["generation"]] += time.thread_time() - _started.pop()


def tune_gc() -> None:
    """Freeze what the process made while starting, raise the young generation's threshold, time collections
    (idempotent)."""
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, OLDER_EVERY, OLDER_EVERY)
    if time_collection not in gc.callbacks:
        gc.callbacks.append(time_collection)
