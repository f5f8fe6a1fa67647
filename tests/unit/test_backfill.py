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
    replay, answers = replay_history(path, settings, stats.cutoff_ms, stats, None)
    assert (stats.read, stats.expired, stats.newer) == (6, 2, 1)
    assert sorted(answers.columns[0]) == ["e1", "e2", "e3"]  # event_id, the first column
    assert sum(r.n for r in replay.results()) == 3
    everything = BackfillStats(cutoff_ms=stats.cutoff_ms)  # no line: nothing is left out for age
    replay_history(path, settings, stats.cutoff_ms, everything, None)
    assert (everything.expired, everything.newer) == (0, 1)
