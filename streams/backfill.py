"""``cxpulse backfill``: history straight into the store, with replay's code (docs/usage.md, "Bring your history").

The stream counts what its retention holds (``CXPULSE_RETENTION_SECONDS``, 7 days: older answers are dead-lettered
as ``too_old``); history older than that goes to the store here, so that the two never write the same pane:

- the cutoff is ``now - retention``, down to a pane boundary; answers at or after it are left out (the command says
  how many: send them through Kafka, where the worker counts them) and everything older is replayed exactly as
  ``cxpulse replay`` does (validation, first copy counts, comments redacted and read as themes, journeys);
- answers older than the store keeps (``sinks.clickhouse.KEEP_DAYS``, every table's TTL, from now) are left out
  too, and counted: ClickHouse would write them and drop them at its next merge (hours later), so a report would
  show them and then not; a journey that began before that line begins, in the store, at its first answer after it;
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
from streams.core.journeys import JourneyBook
from streams.core.validate import Feedback
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

    def insert(self, table: str, data: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str) -> None:
        """One insert of column-oriented ``data`` (a sequence per name of ``columns``)."""


@dataclass
class BackfillStats:
    read: int = 0  # inputs read (answers, valid or not)
    newer: int = 0  # inside the stream's retention: left out
    expired: int = 0  # older than the store keeps: left out
    dead: Counter[str] = field(default_factory=Counter)  # refused, by reason
    duplicates: int = 0
    panes: int = 0  # pane groups written
    stream_panes: int = 0  # pane groups the stream had written: left as they are
    answers: int = 0
    journeys: int = 0
    cutoff_ms: int = 0
    kept_from_ms: int = 0  # the first moment the store keeps (now minus KEEP_DAYS, up to a pane boundary; 0: no line)


def cutoff_of(settings: Settings, now_ms: int) -> int:
    """The first moment the stream counts: now minus its retention, down to a pane boundary."""
    pane_ms = settings.pane_seconds * 1000
    cutoff = now_ms - settings.retention_seconds * 1000
    return cutoff - cutoff % pane_ms


def kept_from(settings: Settings, now_ms: int) -> int:
    """The first moment the store keeps: now minus its TTL (store.KEEP_DAYS), up to a pane boundary (a pane
    that begins before it would lose answers to the TTL)."""
    pane_ms = settings.pane_seconds * 1000
    first = now_ms - store.KEEP_DAYS * 86_400_000
    return first - first % pane_ms + (pane_ms if first % pane_ms else 0)


def older_part(batch: Batch, cutoff_ms: int, kept_from_ms: int | None = None) -> tuple[Batch, int, int]:
    """The records of ``batch`` before the cutoff and at or after ``kept_from_ms`` (and those whose time cannot
    be read: replay refuses them), how many were at or after the cutoff, and how many before ``kept_from_ms``."""
    keep: list[int] = []
    expired = 0
    for at, record in enumerate(batch.records):
        try:
            occurred = parse_timestamp_ms(record.get("occurred_at"))
        except (CxPulseError, TypeError, ValueError):
            occurred = None
        if occurred is not None and kept_from_ms is not None and occurred < kept_from_ms:
            expired += 1
        elif occurred is None or occurred < cutoff_ms:
            keep.append(at)
    records = [batch.records[at] for at in keep]
    positions = [batch.positions[at] for at in keep]
    originals = batch.originals
    return (
        Batch(
            records, positions, lambda i: originals(keep[i]), batch.undecodable, len(records) + len(batch.undecodable)
        ),
        len(batch.records) - len(keep) - expired,
        expired,
    )


class CountedAnswers:
    """The counted answers of a replay as the store keeps them, column by column (ANSWER_COLUMNS order): no row
    or dict per answer (a dict per answer, then a row from it, was a third of a backfill's time)."""

    def __init__(self) -> None:
        self.columns: list[list[Any]] = [[] for _ in store.ANSWER_COLUMNS]

    def __len__(self) -> int:
        return len(self.columns[0])

    def add(self, counted: list[Feedback], records: list[dict[str, Any]]) -> None:
        block = store.counted_answer_columns(counted, records, [event.themes for event in counted])
        for column, values in zip(self.columns, block, strict=True):
            column.extend(values)


def replay_history(
    path: Any, settings: Settings, cutoff_ms: int, stats: BackfillStats, progress: Callable[[int], None] | None
) -> tuple[Replay, CountedAnswers]:
    """Replay of the file's answers before the cutoff (and, when ``stats.kept_from_ms`` is set, at or after it),
    with every counted answer as the store keeps it."""
    answers = CountedAnswers()
    replay = Replay(
        settings.pane_seconds * 1000,
        journeys=JourneyBook(settings.journey_gap_seconds * 1000) if settings.journeys else None,
        comments=settings.comments,
        matcher=theme_matcher(settings),
        on_counted=answers.add,
    )
    for batch, done in read_batches(path):
        older, newer, expired = older_part(batch, cutoff_ms, stats.kept_from_ms or None)
        stats.newer += newer
        stats.expired += expired
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
    answers: CountedAnswers,
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
    kept = [r for r in results if (r.window_start, r.channel, r.journey, r.metric) not in taken]
    stats.stream_panes = len(results) - len(kept)
    stats.panes = len(kept)
    own = _outside(answers.columns, taken, replay.pane_ms) if taken else answers.columns
    stats.answers = len(own[0])
    instances = replay.journey_instances(now_ms=stats.cutoff_ms)
    stats.journeys = len(instances)
    panes = [store.pane_row(result_record(r._replace(version=0))) for r in kept]
    tables = (
        ("pane_results", store.as_columns(panes, len(store.PANE_COLUMNS)), store.PANE_COLUMNS),
        ("answers", own, store.ANSWER_COLUMNS),
        ("journey_instances", store.instance_columns(instances), store.JOURNEY_COLUMNS),
    )
    total = sum(len(data[0]) for _, data, _ in tables)
    written = 0
    for table, data, columns in tables:
        for at in range(0, len(data[0]), CHUNK_ROWS):
            chunk = [column[at : at + CHUNK_ROWS] for column in data]
            digest = hashlib.sha256(orjson.dumps(chunk)).hexdigest()[:32]  # the same chunk again: a no-op
            client.insert(table, chunk, columns, store.token("backfill", table, digest))
            written += len(chunk[0])
            if progress is not None:
                progress(written, total)


def _outside(columns: list[list[Any]], taken: set[tuple[int, str, str, str]], pane_ms: int) -> list[list[Any]]:
    """The answers (columns) outside the pane groups the stream wrote."""
    at = {name: store.ANSWER_COLUMNS.index(name) for name in ("occurred_at", "channel", "journey", "metric")}
    keys = zip(*(columns[at[name]] for name in ("occurred_at", "channel", "journey", "metric")), strict=True)
    keep = [(ms - ms % pane_ms, channel, journey, metric) not in taken for ms, channel, journey, metric in keys]
    return [[value for value, kept in zip(column, keep, strict=True) if kept] for column in columns]
