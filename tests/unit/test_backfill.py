"""What a backfill leaves out (streams/backfill.py): answers the stream counts (inside its retention) and answers
older than the store keeps (every table's TTL), each counted; the line itself matches the SQL's TTL; the answers of
pane groups the stream wrote, found a day at a time as the answers reach new days."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from sinks.clickhouse import KEEP_DAYS, MIGRATIONS, StoreError
from streams.backfill import BackfillStats, backfill_history, cutoff_of, kept_from, replay_history
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
    rows = [journey_row(instance_record(Revision(i, 0, False))) for i in instances]  # times as epoch ms in both
    assert [list(r) for r in zip(*columns, strict=True)] == rows
    assert instance_columns([]) == [[] for _ in JOURNEY_COLUMNS]


class FakeStore:
    """A HistoryStore that holds the stream's pane groups, records every query and insert, skips an insert whose
    token it had (as ClickHouse does) and can fail as a store that went away."""

    def __init__(self, stream_groups: set[tuple[int, str, str, str]]) -> None:
        self.stream_groups = stream_groups
        self.asked: list[tuple[int, int]] = []
        self.inserted: dict[str, list[list[object]]] = {}
        self.tokens: set[str] = set()
        self.fail_at: int | None = None  # the insert (counted from 1) that fails, as a store that went away

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> list[Sequence[Any]]:
        start, end = parameters["start"], parameters["end"]
        self.asked.append((start, end))
        return [list(g) for g in self.stream_groups if start <= g[0] < end]

    def insert(self, table: str, data: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str) -> None:
        if self.fail_at is not None and len(self.tokens) + 1 >= self.fail_at:
            raise StoreError("the store went away")
        if dedup in self.tokens:  # as ClickHouse's insert_deduplication_token
            return
        self.tokens.add(dedup)
        self.inserted.setdefault(table, []).extend(list(row) for row in zip(*data, strict=True))


def test_the_stream_groups_are_read_a_day_at_a_time_and_their_answers_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers in chunks of 3, days out of order: every day's stream pane groups are asked once (a range of days
    not asked yet at a time), the answers of those groups are left out and counted, the rest inserted."""
    import streams.backfill

    monkeypatch.setattr(streams.backfill, "CHUNK_ROWS", 3)
    settings = Settings(clickhouse_url="", pane_seconds=60, retention_seconds=7 * 86400)
    day = [NOW - d * DAY_MS for d in (20, 12, 20, 15, 12, 30, 9, 15)]  # days out of order, two answers each
    times = [at - at % DAY_MS + 3_600_000 + i * 300_000 + k * 1000 for i, at in enumerate(day) for k in range(2)]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(answer(n, at)) + "\n" for n, at in enumerate(times)))
    taken = {(times[2] - times[2] % 60_000, "phone", "billing", "CSAT"), (times[12] - times[12] % 60_000, "phone",
             "billing", "CSAT"), (NOW - 25 * DAY_MS, "phone", "billing", "CSAT")}  # fmt: skip
    fake = FakeStore(taken)
    stats = BackfillStats(cutoff_ms=cutoff_of(settings, NOW))
    backfill_history(fake, path, settings, stats)
    left = {f"e{n}" for n, at in enumerate(times) if (at - at % 60_000, "phone", "billing", "CSAT") in taken}
    assert left == {"e2", "e3", "e12", "e13"}  # two answers in each of two of the stream's pane groups
    assert sorted(row[0] for row in fake.inserted["answers"]) == sorted(
        f"e{n}" for n in range(16) if f"e{n}" not in left
    )
    assert (stats.answers, stats.stream_answers, stats.stream_panes, stats.panes) == (12, 4, 2, 6)  # 8 panes of 2
    days = [d for start, end in fake.asked for d in range(start // DAY_MS, -(-end // DAY_MS))]
    assert len(days) == len(set(days)) and set(days) >= {t // DAY_MS for t in times}  # each day once, all of them


def test_a_backfill_that_stopped_halfway_is_finished_by_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away at the fourth insert (answers written, pane results and journeys not); the same
    backfill again writes the rest, and the store ends as one uninterrupted run leaves it: the chunks are cut
    alike, so what was written has the same tokens."""
    import streams.backfill

    monkeypatch.setattr(streams.backfill, "CHUNK_ROWS", 4)
    settings = Settings(clickhouse_url="", pane_seconds=60, retention_seconds=7 * 86400)
    times = [NOW - 20 * DAY_MS + n * 90_000 for n in range(14)]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(answer(n, at)) + "\n" for n, at in enumerate(times)))
    clean = FakeStore(set())
    backfill_history(clean, path, settings, BackfillStats(cutoff_ms=cutoff_of(settings, NOW)))
    assert set(clean.inserted) == {"answers", "pane_results", "journey_instances"}
    broken = FakeStore(set())
    broken.fail_at = 5  # 14 answers: four inserts of answers, then the pane results
    with pytest.raises(StoreError):
        backfill_history(broken, path, settings, BackfillStats(cutoff_ms=cutoff_of(settings, NOW)))
    assert set(broken.inserted) == {"answers"} and len(broken.inserted["answers"]) == 14
    broken.fail_at = None
    backfill_history(broken, path, settings, BackfillStats(cutoff_ms=cutoff_of(settings, NOW)))
    assert broken.inserted == clean.inserted and broken.tokens == clean.tokens
