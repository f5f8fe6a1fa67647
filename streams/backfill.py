"""``cxpulse backfill``: history straight into the store, with replay's code (docs/usage.md, "Bring your history").

The stream counts what its retention holds (``CXPULSE_RETENTION_SECONDS``, 7 days: older answers are dead-lettered
as ``too_old``); history older than that goes to the store here, so that the two never write the same pane:

- the cutoff is ``now - retention``, down to a pane boundary; answers at or after it are left out (the command says
  how many: send them through Kafka, where the worker counts them) and everything older is replayed exactly as
  ``cxpulse replay`` does (validation, first copy counts, comments redacted and read as themes, journeys);
- a pane group (pane, channel, journey, metric) the stream already wrote (a row with a version above 0) is left as
  it is, and so are its answers: the store never holds two accounts of one pane;
- what is written: the pane results with version 0 (the stream's versions are sums of offsets, at least 1: version
  0 says a backfill wrote the row, ``written_at`` when), the counted answers (their themes, so ``report --by
  theme`` reads the history too), and the journey instances as of the cutoff (closed when their end plus the gap is
  before it; a journey that goes on after the cutoff is two instances, the history's and the stream's);
- each insert carries a deduplication token made of its rows: the same history written again is a no-op, and
  anything written again in another cut replaces identical rows (ReplacingMergeTree), so a second run changes no
  count; nothing goes to Kafka, so no alert wakes;
- where it writes is the caller's (:class:`HistoryStore`): a clickhouse-connect client, or, while a worker holds
  the embedded store, that worker's store endpoint (sinks.store_access.EndpointWriter), which takes version-0
  rows only.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from schemas.codec import parse_timestamp_ms
from sinks import clickhouse as store
from streams.config import Settings
from streams.core.aggregate import contribution
from streams.core.journeys import JourneyBook, Revision, instance_record
from streams.core.windows import result_record
from streams.errors import CxPulseError
from streams.replay import Batch, Replay, read_batches
from streams.themes import theme_matcher

# rows per insert, each its own deduplication token (the same cut whichever way the rows go, so a backfill through
# a worker's endpoint and one straight to the store make the same tokens); a request to the endpoint stays ~3 MB
CHUNK_ROWS = 10_000


class HistoryStore(Protocol):
    """Where a backfill reads which panes the stream wrote, and writes (sinks.store_access)."""

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> list[Sequence[Any]]: ...

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str) -> None: ...


@dataclass
class BackfillStats:
    read: int = 0  # inputs read (answers, valid or not)
    newer: int = 0  # inside the stream's retention: left out
    dead: Counter[str] = field(default_factory=Counter)  # refused, by reason
    duplicates: int = 0
    panes: int = 0  # pane groups written
    stream_panes: int = 0  # pane groups the stream had written: left as they are
    answers: int = 0
    journeys: int = 0
    cutoff_ms: int = 0


def cutoff_of(settings: Settings, now_ms: int) -> int:
    """The first moment the stream counts: now minus its retention, down to a pane boundary."""
    pane_ms = settings.pane_seconds * 1000
    cutoff = now_ms - settings.retention_seconds * 1000
    return cutoff - cutoff % pane_ms


def older_part(batch: Batch, cutoff_ms: int) -> tuple[Batch, int]:
    """The records of ``batch`` before the cutoff (and those whose time cannot be read: replay refuses them), and
    how many were at or after it."""
    keep: list[int] = []
    for at, record in enumerate(batch.records):
        try:
            occurred = parse_timestamp_ms(record.get("occurred_at"))
        except (CxPulseError, TypeError, ValueError):
            occurred = None
        if occurred is None or occurred < cutoff_ms:
            keep.append(at)
    records = [batch.records[at] for at in keep]
    positions = [batch.positions[at] for at in keep]
    originals = batch.originals
    return (
        Batch(
            records, positions, lambda i: originals(keep[i]), batch.undecodable, len(records) + len(batch.undecodable)
        ),
        len(batch.records) - len(keep),
    )


def replay_history(
    path: Any, settings: Settings, cutoff_ms: int, stats: BackfillStats, progress: Callable[[int], None] | None
) -> tuple[Replay, list[dict[str, Any]]]:
    """Replay of the file's answers before the cutoff, with every counted answer as the store keeps it."""
    answers: list[dict[str, Any]] = []
    replay = Replay(
        settings.pane_seconds * 1000,
        journeys=JourneyBook(settings.journey_gap_seconds * 1000) if settings.journeys else None,
        comments=settings.comments,
        matcher=theme_matcher(settings),
        on_answer=answers.append,
    )
    for batch, done in read_batches(path):
        older, newer = older_part(batch, cutoff_ms)
        stats.newer += newer
        stats.read += batch.count
        for dead in replay.feed(older):
            stats.dead[dead.reason] += 1
        if progress is not None:
            progress(done)
    stats.duplicates = replay.stats.duplicates
    return replay, answers


STREAM_GROUPS_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start), channel, journey, toString(metric) FROM cxpulse.pane_results "
    "WHERE version > 0 AND window_start >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
    "AND window_start < fromUnixTimestamp64Milli({end:Int64}, 'UTC') GROUP BY 1, 2, 3, 4"
)


def write_history(
    client: HistoryStore,
    replay: Replay,
    answers: list[dict[str, Any]],
    stats: BackfillStats,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """The history's pane results, answers and journey instances into the store (see the module docstring);
    ``progress(rows written, rows in all)`` after every insert."""
    results = replay.results()
    if results:
        rows = client.rows(STREAM_GROUPS_SQL, {"start": results[0].window_start, "end": stats.cutoff_ms})
        taken = {(int(at), channel, journey, metric) for at, channel, journey, metric in rows}
    else:
        taken = set()
    pane_ms = replay.pane_ms
    kept = [r for r in results if (r.window_start, r.channel, r.journey, r.metric) not in taken]
    stats.stream_panes = len(results) - len(kept)
    stats.panes = len(kept)
    times = [parse_timestamp_ms(a["occurred_at"]) for a in answers]
    own = [
        answer_row(a, ms)
        for a, ms in zip(answers, times, strict=True)
        if (ms - ms % pane_ms, a["channel"], a["journey"], a["metric"]) not in taken
    ]
    stats.answers = len(own)
    instances = replay.journey_instances(now_ms=stats.cutoff_ms)
    stats.journeys = len(instances)
    tables = (
        ("pane_results", [store.pane_row(result_record(r._replace(version=0))) for r in kept], store.PANE_COLUMNS),
        ("answers", own, store.ANSWER_COLUMNS),
        ("journey_instances", [store.journey_row(instance_record(Revision(i, 0, False))) for i in instances],
         store.JOURNEY_COLUMNS),
    )  # fmt: skip
    total = sum(len(table_rows) for _, table_rows, _ in tables)
    written = 0
    for table, table_rows, columns in tables:
        for at in range(0, len(table_rows), CHUNK_ROWS):
            chunk = table_rows[at : at + CHUNK_ROWS]
            digest = hashlib.sha256(orjson.dumps(chunk)).hexdigest()[:32]  # the same chunk again: a no-op
            client.insert(table, chunk, columns, store.token("backfill", table, digest))
            written += len(chunk)
            if progress is not None:
                progress(written, total)


def answer_row(answer: dict[str, Any], occurred_ms: int) -> list[Any]:
    """A row of ``cxpulse.answers`` (ANSWER_COLUMNS order) from a counted answer as the store keeps it
    (streams.core.answers.stored_answer) and its time in epoch ms."""
    counts = contribution(answer["metric"], answer["score"], answer["scale_min"], answer["scale_max"])
    return [
        answer["event_id"],
        occurred_ms,
        answer["source"],
        answer["channel"],
        answer["journey"],
        answer["touchpoint"] or "",
        answer["metric"],
        answer["score"],
        answer["scale_min"],
        answer["scale_max"],
        answer["customer_id"] or "",
        answer["interaction_id"] or "",
        answer["agent_id"] or "",
        answer["team"] or "",
        list(answer["reason_codes"]),
        answer["comment"] or "",
        list(answer["themes"]),
        int(bool(answer["commented"])),
        counts.promoters,
        counts.passives,
        counts.detractors,
        counts.positive,
        counts.high_effort,
        counts.sx,
        counts.sx2,
    ]
