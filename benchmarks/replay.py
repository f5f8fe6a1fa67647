"""Replay benchmark: `cxpulse replay` against a bare fastavro read of the same Avro container file.

Writes N realistic events (streams.core.synth) to an Avro file, then in the same run times
  1. a bare read: iterate every record with fastavro.reader (what any consumer of the file must pay),
  2. a bare read with epoch-ms timestamps: fastavro's schemaless reader over the blocks, the schema parsed once,
  3. replay: decode + validate + de-duplicate + aggregate into panes + build the result records,
and prints each, events/s, and replay's ratio to each bare read.  Usage:

    .venv/bin/python benchmarks/replay.py [--events 1000000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import fastavro

from schemas.codec import FEEDBACK_RAW, parse
from streams.core.synth import realistic_events
from streams.replay import replay_file


def write_file(path: Path, count: int) -> None:
    with path.open("wb") as out:
        fastavro.writer(out, fastavro.parse_schema(FEEDBACK_RAW), realistic_events(count), codec="null")


def bare_read(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in fastavro.reader(handle))


def bare_read_epoch_ms(path: Path) -> int:
    """fastavro over the same blocks with the schema parsed once, timestamps as epoch ms (no datetime a record):
    fastavro's own fastest way through the file."""
    with path.open("rb") as handle:
        blocks = fastavro.block_reader(handle)
        schema = parse(blocks.writer_schema)  # timestamp-millis as plain longs
        count = 0
        for block in blocks:
            body = block.bytes_  # type: ignore[attr-defined]  # the block body, decompressed (not in the stubs)
            for _ in range(block.num_records):
                fastavro.schemaless_reader(body, schema, None)
                count += 1
        return count


def replay(path: Path) -> int:
    result = replay_file(path, 60_000, lambda dead: None)
    result.results()
    return result.stats.read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the median is reported")
    parser.add_argument("--profile", action="store_true", help="profile one replay with pyinstrument")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.avro"
        started = time.perf_counter()
        write_file(path, args.events)
        took = time.perf_counter() - started
        print(f"wrote {args.events:,} events ({path.stat().st_size / 1e6:.0f} MB) in {took:.1f} s")
        if args.profile:
            from pyinstrument import Profiler

            with Profiler() as profiler:
                replay(path)
            profiler.print()
            return
        runs = (
            ("bare fastavro read", bare_read),
            ("bare read, epoch ms", bare_read_epoch_ms),
            ("cxpulse replay", replay),
        )
        timings: dict[str, list[float]] = {name: [] for name, _ in runs}
        for _ in range(args.repeat):
            for name, run in runs:
                started = time.perf_counter()
                count = run(path)
                timings[name].append(time.perf_counter() - started)
                assert count == args.events, (name, count)
        medians = {name: statistics.median(values) for name, values in timings.items()}
        for name, seconds in medians.items():
            print(f"{name:20s} {seconds:7.2f} s  {args.events / seconds:>10,.0f} events/s")
        for bare in ("bare fastavro read", "bare read, epoch ms"):
            ratio = medians["cxpulse replay"] / medians[bare]
            print(f"ratio replay / {bare}: {ratio:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
