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
from streams.core.windows import WindowResult, result_record
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
    stream_answers: int = 0  # answers of those pane groups: left out
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


DAY_MS = 86_400_000


class HistoryWriter:
    """The backfill's inserts, a chunk (CHUNK_ROWS) at a time as replay goes: the counted answers as replay counts
    them, then the pane results and the journey instances (:meth:`finish`).  No more than a chunk of answers is
    held for the store, however long the history (all of them were: 95 MB more at 100,000 answers).  In replay's
    thread: a writer thread measured slower (the GIL: replaying 1.9 -> 2.7 s for 100,000 answers, writing 1.5 ->
    1.0 s)."""

    def __init__(self, client: HistoryStore, stats: BackfillStats, pane_ms: int) -> None:
        self.client = client
        self.stats = stats
        self.pane_ms = pane_ms
        self.buffer: list[list[Any]] = [[] for _ in store.ANSWER_COLUMNS]
        self.written = 0  # rows inserted or left out (the stream's pane groups)
        self.taken: dict[int, set[tuple[int, str, str, str]]] = {}  # day -> the stream's pane groups that day

    def add_answers(self, counted: list[Feedback], records: list[dict[str, Any]]) -> None:
        """Replay's ``on_counted``: the answers as the store keeps them, inserted a chunk at a time."""
        block = store.counted_answer_columns(counted, records, [event.themes for event in counted])
        for column, values in zip(self.buffer, block, strict=True):
            column.extend(values)
        while len(self.buffer[0]) >= CHUNK_ROWS:
            chunk = [column[:CHUNK_ROWS] for column in self.buffer]
            self.buffer = [column[CHUNK_ROWS:] for column in self.buffer]
            self._answers(chunk)

    def finish(self, replay: Replay, progress: Callable[[int, int], None] | None = None) -> None:
        """The last answers, the pane results and the journey instances as of the cutoff.  ``progress(rows
        written, rows in all)`` after every insert (rows left out because the stream had written their pane group
        count as written)."""
        results = replay.results()
        instances = replay.journey_instances(now_ms=self.stats.cutoff_ms)  # by (customer, journey, start)
        total = self.written + len(self.buffer[0]) + len(results) + len(instances)

        def tell() -> None:
            if progress is not None:
                progress(self.written, total)

        if self.buffer[0]:
            chunk, self.buffer = self.buffer, [[] for _ in store.ANSWER_COLUMNS]
            self._answers(chunk)
            tell()
        self._panes(results, tell)
        self.stats.journeys += len(instances)
        for at in range(0, len(instances), CHUNK_ROWS):
            part = instances[at : at + CHUNK_ROWS]
            self._insert("journey_instances", store.instance_columns(part))
            self.written += len(part)
            tell()

    def _answers(self, chunk: list[list[Any]]) -> None:
        """One chunk of answers, less those of pane groups the stream wrote."""
        own = self._outside(chunk)
        self.stats.answers += len(own[0])
        self.stats.stream_answers += len(chunk[0]) - len(own[0])
        self._insert("answers", own)
        self.written += len(chunk[0])

    def _panes(self, results: list[WindowResult], tell: Callable[[], None]) -> None:
        """The pane results with version 0, less the pane groups the stream wrote."""
        taken = self._taken({r.window_start // DAY_MS for r in results})
        kept = [r for r in results if (r.window_start, r.channel, r.journey, r.metric) not in taken]
        self.stats.stream_panes += len(results) - len(kept)
        self.stats.panes += len(kept)
        self.written += len(results) - len(kept)
        for at in range(0, len(kept), CHUNK_ROWS):
            part = kept[at : at + CHUNK_ROWS]
            rows = [store.pane_row(result_record(r._replace(version=0))) for r in part]
            self._insert("pane_results", store.as_columns(rows, len(store.PANE_COLUMNS)))
            self.written += len(part)
            tell()

    def _insert(self, table: str, chunk: list[list[Any]]) -> None:
        """One insert of column-oriented rows (at most CHUNK_ROWS), its deduplication token made of them."""
        if chunk[0]:
            digest = hashlib.sha256(orjson.dumps(chunk)).hexdigest()[:32]  # the same chunk again: a no-op
            self.client.insert(table, chunk, TABLE_COLUMNS[table], store.token("backfill", table, digest))

    def _outside(self, columns: list[list[Any]]) -> list[list[Any]]:
        """The answers (columns) outside the pane groups the stream wrote."""
        at = [store.ANSWER_COLUMNS.index(name) for name in ("occurred_at", "channel", "journey", "metric")]
        pane_ms = self.pane_ms
        panes = [ms - ms % pane_ms for ms in columns[at[0]]]
        taken = self._taken({ms // DAY_MS for ms in panes})
        if not taken:
            return columns
        keys = zip(panes, *(columns[k] for k in at[1:]), strict=True)
        keep = [key not in taken for key in keys]
        return [[value for value, kept in zip(column, keep, strict=True) if kept] for column in columns]

    def _taken(self, days: set[int]) -> set[tuple[int, str, str, str]]:
        """The pane groups the stream wrote on ``days`` (days since the epoch), from the store once per day: the
        days not asked yet are read in one range (a sorted history adds a day or two a chunk; any other order
        reads its whole span at once)."""
        missing = [day for day in days if day not in self.taken]
        if missing:
            first, last = min(missing), max(missing)
            found: dict[int, set[tuple[int, str, str, str]]] = {day: set() for day in range(first, last + 1)}
            rows = self.client.rows(
                STREAM_GROUPS_SQL,
                {"start": first * DAY_MS, "end": min((last + 1) * DAY_MS, self.stats.cutoff_ms)},
            )
            for ms, channel, journey, metric in rows:
                found[int(ms) // DAY_MS].add((int(ms), channel, journey, metric))
            for day, groups in found.items():
                self.taken.setdefault(day, groups)
        return set().union(*(self.taken[day] for day in days))


def replay_history(
    path: Any,
    settings: Settings,
    cutoff_ms: int,
    stats: BackfillStats,
    progress: Callable[[int], None] | None,
    on_counted: Callable[[list[Feedback], list[dict[str, Any]]], None] | None = None,
) -> Replay:
    """Replay of the file's answers before the cutoff (and, when ``stats.kept_from_ms`` is set, at or after it);
    ``on_counted(answers, records)`` with each batch's counted answers (HistoryWriter.add_answers)."""
    replay = Replay(
        settings.pane_seconds * 1000,
        journeys=JourneyBook(settings.journey_gap_seconds * 1000) if settings.journeys else None,
        comments=settings.comments,
        matcher=theme_matcher(settings),
        on_counted=on_counted,
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
    return replay


def backfill_history(
    client: HistoryStore,
    path: Any,
    settings: Settings,
    stats: BackfillStats,
    progress: Callable[[int], None] | None = None,
    rows_progress: Callable[[int, int], None] | None = None,
) -> None:
    """The history in ``path`` into the store (see the module docstring): its answers as replay counts them, then
    its pane results and journey instances; ``progress(bytes read)`` while replaying, ``rows_progress(rows
    written, rows in all)`` after it."""
    writer = HistoryWriter(client, stats, settings.pane_seconds * 1000)
    replay = replay_history(path, settings, stats.cutoff_ms, stats, progress, writer.add_answers)
    writer.finish(replay, rows_progress)


# the stream's pane groups from ``start`` to ``end`` (ms)
STREAM_GROUPS_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start), channel, journey, toString(metric) FROM cxpulse.pane_results "
    "WHERE version > 0 AND window_start >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
    "AND window_start < fromUnixTimestamp64Milli({end:Int64}, 'UTC') GROUP BY 1, 2, 3, 4"
)
TABLE_COLUMNS = {
    "pane_results": store.PANE_COLUMNS,
    "answers": store.ANSWER_COLUMNS,
    "journey_instances": store.JOURNEY_COLUMNS,
}
