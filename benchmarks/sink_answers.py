"""What the ClickHouse sink spends on the columns of the counted answers, per answer, in each format of the answers
topic, and on the columns of journey instance revisions, per revision (issue 35 item 3: the store at the pipeline's
pace).

The hot path's batch step (streams/worker/ingest.py, the store on) over Confluent-framed Avro messages in batches of
10,000, as in `benchmarks.hotpath_answers`; its answers messages for the store then go through the sink's own
``streams.processes.sink.answer_block`` (the columns of ``cxpulse.answers``): as rows (the format since 2026-12-06) and,
for the same answers, as their bytes with a themes header (the format before, which the sink decodes and validates
again).  Then ``--revisions`` journey instance revisions (as the journeys process encodes them, each of its own
key) through the sink's own journeys feed (``streams.processes.sink.sink_feeds``) and batch step
(``sinks.clickhouse_sink.prepare``): decoded and made the insert's columns.  No Kafka, no ClickHouse: the insert is
the same for both.  Median of ``--runs`` (CPU time of this process).  Usage::

    .venv/bin/python -m benchmarks.sink_answers [--events 200000] [--revisions 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from benchmarks.hotpath_answers import BATCH, NOW, Message
from schemas.codec import JOURNEY_INSTANCE_RAW, LocalCatalog, encode_feedback, encode_journey_row
from sinks.clickhouse import ANSWER_COLUMNS, JOURNEY_COLUMNS
from sinks.clickhouse_sink import Taken, prepare
from streams.agents.record import Record
from streams.config import Settings
from streams.core.synth import realistic_events
from streams.core.validate import Clock
from streams.processes.sink import answer_block, sink_feeds
from streams.produce import encode_record
from streams.runtime import tune_gc
from streams.worker.ingest import Ingest
from streams.worker.outputs import ANSWERS_MESSAGE_BYTES, answer_chunks
from streams.worker.records import (
    ANSWER_ROWS,
    ANSWERS_FORMAT_HEADER,
    THEMES_HEADER,
    decode_answer_rows,
    encode_answer_rows,
    encode_answer_themes,
    encode_answers,
    encode_routed,
)


def messages_both_ways(events: list[dict[str, object]]) -> tuple[list[Record], list[Record], int]:
    """The answers messages of the events' counted answers as rows and as bytes (the same answers), and how many."""
    catalog = LocalCatalog()
    ingest = Ingest("bench", catalog, 60_000, 6, 6, followups=True, answers=True)
    clock = Clock(NOW, 300_000, 7 * 86_400_000)
    inputs = [Message(i % 6, i // 6, encode_record(event, catalog)) for i, event in enumerate(events)]
    rows: list[Record] = []
    raws: list[Record] = []
    counted = 0
    for at in range(0, len(inputs), BATCH):
        routed = ingest.batch(inputs[at : at + BATCH], clock)
        out = ingest.batch([Message(q, at, encode_routed(v), "routed") for q, v in routed.routed.items()], clock)
        for q, answer_rows in out.answer_rows.items():
            for chunk in answer_chunks(answer_rows, ANSWERS_MESSAGE_BYTES, len):
                rows.append(Record(q, 0, encode_answer_rows(chunk), 0, [(ANSWERS_FORMAT_HEADER, ANSWER_ROWS)]))
                valid, kept = decode_answer_rows(encode_answer_rows(chunk))
                counted += len(valid)
                # the bytes the hot path passed on before: each answer encoded with its comment as kept
                values = [
                    encode_feedback(
                        {**event._asdict(), "agent_id": k.agent_id, "team": k.team, "comment": k.comment}, catalog
                    )  # fmt: skip
                    for event, k in zip(valid, kept, strict=True)
                ]
                found = encode_answer_themes([event.themes for event in valid])
                raws.append(Record(q, 0, encode_answers(values), 0, [(THEMES_HEADER, found)] if found else []))
    return rows, raws, counted


def seconds(messages: list[Record]) -> float:
    catalog = LocalCatalog()
    started = time.process_time()
    for message in messages:
        columns = answer_block(message, catalog)
        assert len(columns) == len(ANSWER_COLUMNS)
    return time.process_time() - started


def revisions(count: int, seed: int = 5) -> dict[int, Taken]:
    """``count`` journey instance revisions of distinct keys as the sink takes them (6 partitions)."""
    rng = random.Random(seed)
    schema_id = LocalCatalog().id_for(JOURNEY_INSTANCE_RAW)
    taken: dict[int, Taken] = {}
    for n in range(count):
        start = NOW - rng.randint(0, 86_400_000)
        answers = rng.randint(1, 4)
        row = (
            f"customer-{n:07d}", rng.choice(["onboarding", "billing", "support", "claims"]), start,
            start + rng.randint(0, 3_600_000), rng.choice(["phone", "chat", "email", "web"]), answers,
            rng.randint(1, answers), rng.randint(1, answers), rng.randint(0, answers - 1), rng.randint(0, 3),
            rng.randint(0, answers), rng.randint(0, 1), rng.random(), rng.random(),
            rng.choice([None, "promoter", "passive", "detractor"]), rng.random() < 0.6, rng.random() < 0.2,
            rng.random() < 0.1, rng.random() < 0.5, NOW + n, rng.random() < 0.05,
        )  # fmt: skip
        key = f"{row[0]}|{row[1]}|{row[2]}".encode()
        record = Record(n % 6, n // 6, encode_journey_row(row, schema_id), NOW, [], key)
        taken.setdefault(record.partition, Taken(record.offset, revisions=True)).add(record)
    return taken


def revision_seconds(taken: dict[int, Taken]) -> float:
    feed = next(feed for feed in sink_feeds(Settings(journeys=True)) if feed.table == "journey_instances")
    started = time.process_time()
    write = prepare(feed, taken, lambda record, exc: sys.exit(f"a revision did not read: {exc}"))
    assert len(write.data) == len(JOURNEY_COLUMNS)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--revisions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    events = realistic_events(args.events, seed=3, start_ms=NOW - 3 * 3_600_000, per_second=args.events / 10_800)
    rows, raws, counted = messages_both_ways(events)
    tune_gc()  # the collector's setting of the sink's process (streams/runtime.py)
    times: dict[str, list[float]] = {"rows": [], "bytes": []}
    for _ in range(args.runs):
        times["rows"].append(seconds(rows))
        times["bytes"].append(seconds(raws))
    per = {name: 1e6 * statistics.median(values) / counted for name, values in times.items()}
    print(f"sink, the columns of {counted:,} counted answers, median of {args.runs}: as rows {per['rows']:.2f} µs an "
          f"answer, as their bytes (before 2026-12-06) {per['bytes']:.2f} µs an answer")  # fmt: skip
    if args.revisions:
        taken = revisions(args.revisions)
        spent = statistics.median(revision_seconds(taken) for _ in range(args.runs))
        print(f"sink, the columns of {args.revisions:,} journey instance revisions, median of {args.runs}: "
              f"{1e6 * spent / args.revisions:.2f} µs a revision")  # fmt: skip


if __name__ == "__main__":
    main()
