"""What a backfill leaves out (streams/backfill.py): answers the stream counts (inside its retention) and answers
older than the store keeps (every table's TTL), each counted; the line itself matches the SQL's TTL."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sinks.clickhouse import KEEP_DAYS, MIGRATIONS
from streams.backfill import BackfillStats, cutoff_of, kept_from, replay_history
from streams.config import Settings

DAY_MS = 86_400_000
NOW = 1_767_300_030_000


def answer(n: int, at_ms: int) -> dict[str, object]:
    return {"event_id": f"e{n}", "occurred_at": at_ms, "source": "survey", "channel": "phone", "journey": "billing",
            "touchpoint": "ivr", "metric": "CSAT", "score": 4, "customer_id": f"c{n}"}  # fmt: skip


def test_every_tables_ttl_is_what_a_backfill_keeps() -> None:
    ttls = [int(days) for path in sorted(MIGRATIONS.glob("*.sql"))
            for days in re.findall(r"^TTL .* INTERVAL (\d+) DAY", path.read_text(), re.M)]  # fmt: skip
    assert len(ttls) >= 3 and set(ttls) == {KEEP_DAYS}


def test_a_backfill_leaves_out_what_the_stream_counts_and_what_the_store_would_drop(tmp_path: Path) -> None:
    settings = Settings(clickhouse_url="", pane_seconds=60, retention_seconds=7 * 86400)
    first = kept_from(settings, NOW)
    assert first % 60_000 == 0 and NOW - KEEP_DAYS * DAY_MS <= first < NOW - KEEP_DAYS * DAY_MS + 60_000
    times = [first - 1, first, first + 1, NOW - 30 * DAY_MS, NOW - 6 * DAY_MS, NOW - 1000 * DAY_MS]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(answer(n, at)) + "\n" for n, at in enumerate(times)))
    stats = BackfillStats(cutoff_ms=cutoff_of(settings, NOW), kept_from_ms=first)
    counted: list[str] = []
    replay = replay_history(
        path, settings, stats.cutoff_ms, stats, None, lambda answers, _: counted.extend(e.event_id for e in answers)
    )
    assert (stats.read, stats.expired, stats.newer) == (6, 2, 1)
    assert sorted(counted) == ["e1", "e2", "e3"]
    assert sum(r.n for r in replay.results()) == 3
    everything = BackfillStats(cutoff_ms=stats.cutoff_ms)  # no line: nothing is left out for age
    replay_history(path, settings, stats.cutoff_ms, everything, None)
    assert (everything.expired, everything.newer) == (0, 1)


def test_a_backfills_journey_columns_are_the_sinks_rows_of_the_same_instances() -> None:
    """sinks.clickhouse.instance_columns (backfill) against journey_row of each instance's record (the sink), the
    instances of a replay with repeat customers (recoverable, recovered, NPS categories, closed and open)."""
    from sinks.clickhouse import JOURNEY_COLUMNS, instance_columns, journey_row
    from streams.core.journeys import JourneyBook, Revision, instance_record
    from streams.core.synth import realistic_events
    from streams.core.validate import validate_batch

    events = list(realistic_events(3000, seed=4, per_second=0.2, invalid_share=0.0))
    for n, e in enumerate(events):
        e["customer_id"] = f"c{n % 40}"  # few customers: journeys of several answers
    valid, _ = validate_batch(events)
    book = JourneyBook(3_600_000)
    book.add(valid)
    instances = list(book.all_instances(events[1500]["occurred_at"]))
    assert {i.closed for i in instances} == {True, False} and any(i.recoverable for i in instances)
    assert any(i.recovered for i in instances) and {i.last_nps for i in instances} >= {None, "promoter"}
    columns = instance_columns(instances)
    assert [len(c) for c in columns] == [len(instances)] * len(JOURNEY_COLUMNS)
    rows = [journey_row(instance_record(Revision(i, 0, False))) for i in instances]
    at = JOURNEY_COLUMNS.index("start_at"), JOURNEY_COLUMNS.index("end_at")
    for row in rows:
        for k in at:
            row[k] = round(row[k].timestamp() * 1000)
    assert [list(r) for r in zip(*columns, strict=True)] == rows
    assert instance_columns([]) == [[] for _ in JOURNEY_COLUMNS]
