"""What copying the counted answers for ClickHouse costs the hot path's batch step (issue 10: at most 10%).

The pure batch step (streams/worker/ingest.py: decode, validate, dedup, aggregate, follow-ups, and with
``answers`` the copy of the counted answers' raw bytes) over the same Confluent-framed Avro messages in batches of
10,000, as the hot path consumes them, with the copy off and on, alternating, median of ``--runs``.  The Kafka
side of the copy (one more message per source partition in each transaction) is not in this figure; the end-to-end
runs of `make bench` (cxpulse + ClickHouse sink) are.  Usage::

    .venv/bin/python -m benchmarks.hotpath_answers [--events 200000] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from schemas.codec import LocalCatalog
from streams.core.synth import realistic_events
from streams.core.validate import Clock
from streams.produce import encode_record
from streams.runtime import tune_gc
from streams.worker.ingest import Ingest
from streams.worker.records import encode_routed

NOW = 1_767_300_000_000
BATCH = 10_000


@dataclass
class Message:
    p: int
    o: int
    v: bytes
    t: str = "bench"

    def topic(self) -> str:
        return self.t

    def timestamp(self) -> tuple[int, int]:
        return (1, NOW)

    def headers(self) -> None:
        return None

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes:
        return self.v


def run(messages: list[Message], answers: bool) -> float:
    """Events a second through the batch step: each batch routed, then its routed answers counted (both steps)."""
    ingest = Ingest("bench", LocalCatalog(), 60_000, 6, 6, followups=True, answers=answers)
    clock = Clock(NOW, 300_000, 7 * 86_400_000)
    started = time.perf_counter()
    for at in range(0, len(messages), BATCH):
        routed = ingest.batch(messages[at : at + BATCH], clock)
        ingest.committed(routed.offsets)
        batch = at // BATCH
        out = ingest.batch([Message(q, batch, encode_routed(v), "routed") for q, v in routed.routed.items()], clock)
        ingest.committed(out.offsets)
    return len(messages) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    catalog = LocalCatalog()
    events = realistic_events(args.events, seed=3, start_ms=NOW - 3 * 3_600_000, per_second=args.events / 10_800)
    offsets = [0] * 6
    messages = []
    for index, event in enumerate(events):
        p = index % 6
        messages.append(
            Message(p, offsets[p], encode_record({**event, "reason_codes": event["reason_codes"]}, catalog))
        )
        offsets[p] += 1
    tune_gc()  # the collector's setting of the hot path's process (streams/runtime.py); CPython's defaults before
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs):
        for answers in (False, True):
            rates[answers].append(run(messages, answers))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"batch step, {args.events:,} events, median of {args.runs}: answers copy off {off:,.0f} events/s, "
          f"on {on:,.0f} events/s: {100 * (off / on - 1):.1f}% more time per event")  # fmt: skip


if __name__ == "__main__":
    main()
