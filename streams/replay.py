"""``cxpulse replay``: the stream's computation, offline, over a file of FeedbackEvents.

The input is JSON lines (one canonical event per line) or an Avro container file of FeedbackEvent, told
apart by content.  Events flow in batches through the same steps as the stream: decode, validate,
de-duplicate, aggregate into panes (streams.core.aggregate), windows and result records (streams.core.windows).
Stream-only checks (future_timestamp, too_old) do not apply here.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import fastavro

from schemas.codec import FEEDBACK_RAW, feedback_from_json, is_current_feedback, read_feedback_block
from streams.core.aggregate import (
    Drivers,
    GroupKey,
    Mentions,
    SegmentPane,
    State,
    ThemeKey,
    aggregate_drivers,
    aggregate_mentions,
    aggregate_panes,
    aggregate_theme_panes,
    merge_drivers,
    merge_into,
    merge_mentions,
)
from streams.core.answers import stored_answer
from streams.core.comments import ANY, CommentMode, ThemeMatcher, with_comments
from streams.core.dedup import Deduplicator
from streams.core.effort import EffortConfig, PaneEffort, replay_alerts
from streams.core.journeys import Instance, JourneyBook
from streams.core.quotes import Quotes, aggregate_quotes, merge_quotes
from streams.core.terms import Said, spike_terms
from streams.core.validate import Clock, DeadLetter, Feedback, Rejection, outside_the_clock, validate_batch
from streams.core.windows import (
    WindowResult,
    pane_results,
    result_json,
    rolling_window,
    window_bounds,
    window_result,
)
from streams.errors import DecodeError, InputFileError

AVRO_MAGIC = b"Obj\x01"
BATCH_SIZE = 8192  # events decoded, validated and aggregated per call
_REQUIRED = {"event_id", "occurred_at", "source", "channel", "journey", "metric", "score"}

Progress = Callable[[int], None]  # called with the number of bytes read so far


@dataclass
class ReplayStats:
    """What a replay read and what became of it."""

    read: int = 0
    valid: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    max_occurred_at: int | None = None
    future: int = 0  # inputs a worker would refuse as future_timestamp (with a clock: replay_file's ``clock``)
    too_old: int = 0  # inputs a worker would refuse as too_old

    @property
    def counted(self) -> int:
        return self.valid - self.duplicates


@dataclass
class Batch:
    """Decoded records with their originals' positions, and the lines that did not decode at all."""

    records: list[dict[str, Any]]
    positions: list[str]
    originals: Callable[[int], bytes | str]  # index -> original line or bytes (only called for dead letters)
    undecodable: list[tuple[int, DeadLetter]]  # (how many records came before it, the dead letter)
    count: int  # inputs read in this batch (decoded or not)

    def dead_letters(self, rejected: list[Rejection]) -> list[DeadLetter]:
        """The undecodable inputs and the rejected records of this batch, in input order."""
        ordered = [((before, 0), letter) for before, letter in self.undecodable]
        ordered.extend(
            ((r.at, 1), DeadLetter(r.reason, r.detail, self.originals(r.at), self.positions[r.at])) for r in rejected
        )
        return [letter for _, letter in sorted(ordered, key=lambda pair: pair[0])]


STDIN = "-"  # an events file named "-" is standard input
SPOOL_MEMORY_BYTES = 64 * 1024 * 1024  # a piped Avro container is held in memory up to this, then on disk


def open_input(path: Path) -> tuple[io.BufferedReader, bool]:
    """Open an events file (``-``: standard input; a pipe or /dev/stdin is read as it comes, never sought); return
    it and whether it is an Avro container (else JSON lines)."""
    if str(path) == STDIN:
        handle: io.BufferedReader = sys.stdin.buffer  # type: ignore[assignment]  # a BufferedReader at run time
    else:
        if not path.exists():
            raise InputFileError(f"{path}: no such file")
        if path.is_dir():
            raise InputFileError(f"{path}: is a directory, not an events file")
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise InputFileError(f"{path}: cannot be read: {exc.strerror}") from exc
    is_avro = handle.peek(4)[:4] == AVRO_MAGIC
    if is_avro and not handle.seekable():  # fastavro's block reader seeks: a piped container is spooled first
        spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        shutil.copyfileobj(handle, spooled)
        spooled.seek(0)
        handle = io.BufferedReader(spooled)
    return handle, is_avro


FOREIGN_LINES = 20  # a file none of whose first this many lines is a FeedbackEvent is not an events file


def looks_like(head: bytes) -> str:
    """What the first bytes of a file that holds no FeedbackEvents look like, for the error that refuses it."""
    for magic, what in ((b"\x7fELF", "an ELF executable"), (b"PK\x03\x04", "a ZIP archive"),
                        (b"\x1f\x8b", "gzip-compressed data"), (b"%PDF", "a PDF document")):  # fmt: skip
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or "\x00" in text:
        return "binary data"
    first = text.splitlines()[0].strip() if text.strip() else ""
    if first.count(",") >= 2 and not first.startswith(("{", "[")):
        return f"CSV (first line: {first[:60]!r})"
    if first.startswith("<"):
        return "XML or HTML"
    return f"text that is not JSON lines of FeedbackEvents (first line: {first[:60]!r})"


def _json_batches(handle: io.BufferedReader, path: Path) -> Iterator[Batch]:
    head = handle.peek(512)[:512]  # not read: a pipe cannot go back
    checked = False
    records: list[dict[str, Any]] = []
    positions: list[str] = []
    lines: list[str | bytes] = []
    undecodable: list[tuple[int, DeadLetter]] = []
    for number, raw in enumerate(handle, start=1):
        body = raw[:-1] if raw.endswith(b"\n") else raw  # a line is its bytes up to the newline, "\r" included
        if not body.strip():
            continue  # blank lines are not events
        line: str | bytes
        try:
            line = body.decode("utf-8")
        except UnicodeDecodeError:
            line = body  # kept as bytes: `produce` sends it as it is, a dead letter carries it in base64
        try:
            records.append(feedback_from_json(line))
            positions.append(f"line {number}")
            lines.append(line)
        except DecodeError as exc:
            undecodable.append((len(records), DeadLetter("undecodable", str(exc), line, f"line {number}")))
        if not checked and len(records) + len(undecodable) >= FOREIGN_LINES:
            checked = _check_not_foreign(records, undecodable, head, path)
        if len(records) + len(undecodable) >= BATCH_SIZE:
            yield Batch(records, positions, lines.__getitem__, undecodable, len(records) + len(undecodable))
            records, positions, lines, undecodable = [], [], [], []
    if not checked:
        _check_not_foreign(records, undecodable, head, path)
    yield Batch(records, positions, lines.__getitem__, undecodable, len(records) + len(undecodable))


def _check_not_foreign(records: list[Any], undecodable: list[Any], head: bytes, path: Path) -> bool:
    """Refuse a file whose first lines (up to FOREIGN_LINES) are all undecodable: it is something else."""
    if undecodable and not records:
        count = len(undecodable)
        raise InputFileError(
            f"{path} is not a file of FeedbackEvents: it looks like {looks_like(head)}; none of its first {count} "
            f"line{'s' if count != 1 else ''} is a FeedbackEvent (JSON lines, or an Avro container file)"
        )
    return True


def _avro_batches(handle: IO[bytes]) -> Iterator[Batch]:
    """The records of an Avro container file in batches.  A file of the current FeedbackEvent schema is read
    block by block with the generated decoder (schemas.codec ``read_feedback_block``: timestamps as epoch ms, ~2x
    fastavro's reader, which builds a datetime per record); any other block, or a file of another schema, by
    fastavro."""
    try:
        blocks = fastavro.block_reader(handle)
    except Exception as exc:  # fastavro raises ValueError / EOFError / SchemaParseException on bad headers
        raise InputFileError(f"not a readable Avro container file: {exc}") from exc
    writer_schema = blocks.writer_schema
    if not isinstance(writer_schema, dict) or not _REQUIRED <= {f["name"] for f in writer_schema.get("fields", [])}:
        raise InputFileError(
            f"the Avro file holds {writer_schema.get('name') if isinstance(writer_schema, dict) else writer_schema!r}"
            f" records, not FeedbackEvent (schema {FEEDBACK_RAW['namespace']}.{FEEDBACK_RAW['name']})"
        )
    parsed = fastavro.parse_schema(writer_schema)
    fast = is_current_feedback(writer_schema)

    def reencode(records: list[dict[str, Any]]) -> Callable[[int], bytes]:
        def original(index: int) -> bytes:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, parsed, records[index])
            return out.getvalue()

        return original

    records: list[dict[str, Any]] = []
    number = 0  # records read
    try:
        for block in blocks:
            body = block.bytes_  # type: ignore[attr-defined]  # the block body, decompressed (not in the stubs)
            read = read_feedback_block(body.getvalue(), block.num_records) if fast else None
            if read is not None:
                number += len(read)
                records.extend(read)
            else:
                for record in block:  # fastavro: a corrupt block raises part way; what was read counts
                    number += 1
                    records.append(record)  # type: ignore[arg-type]  # fastavro types records as any Avro value
            if len(records) >= BATCH_SIZE:
                yield Batch(records, _positions(number, len(records)), reencode(records), [], len(records))
                records = []
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types for a corrupt block: what was read counts,
        # the rest is dead-lettered
        tail = DeadLetter("undecodable", f"corrupt Avro block: {exc}", b"", f"after record {number}")
        yield Batch(records, _positions(number, len(records)), reencode(records), [(len(records), tail)], len(records))
        return
    yield Batch(records, _positions(number, len(records)), reencode(records), [], len(records))


def _positions(last: int, count: int) -> list[str]:
    return [f"record {i}" for i in range(last - count + 1, last + 1)]


@dataclass
class Replay:
    """The state of one replay: pane states, the de-duplicator and the statistics."""

    pane_ms: int
    panes: dict[GroupKey, State] = field(default_factory=dict)
    drivers: dict[SegmentPane, Drivers] = field(default_factory=dict)  # CES root-cause counters per pane
    quotes: dict[SegmentPane, Quotes] = field(default_factory=dict)  # CES: the latest high-effort comments per pane
    said: dict[tuple[str, str], list[Said]] = field(default_factory=dict)  # CES: every comment (the spikes' words)
    dedup: Deduplicator = field(default_factory=Deduplicator)
    stats: ReplayStats = field(default_factory=ReplayStats)
    clock: Clock | None = None  # set: count what a worker with this clock would refuse for its time (a warning)
    journeys: JourneyBook | None = None  # set: follow customer journeys (docs/contract.md section 8)
    counted_until: int | None = None  # the largest occurred_at of the counted answers (replay's journey clock)
    comments: CommentMode = "redacted"  # what becomes of comments (docs/contract.md section 9)
    matcher: ThemeMatcher | None = None  # the theme taxonomy, compiled; None: no themes but "(any)"
    theme_panes: dict[ThemeKey, State] = field(default_factory=dict)
    mentions: dict[GroupKey, Mentions] = field(default_factory=dict)  # the pane results' theme mentions
    on_answer: Callable[[dict[str, Any]], None] | None = None  # set: told every counted answer as the store keeps it
    # set: told each batch's counted answers and the records they were validated from (comments as kept)
    on_counted: Callable[[list[Feedback], list[dict[str, Any]]], None] | None = None

    def feed(self, batch: Batch) -> list[DeadLetter]:
        """Validate, de-duplicate and aggregate one batch; return its dead letters."""
        valid, rejected = validate_batch(batch.records)
        rejected_at = {r.at for r in rejected}
        kept = [record for i, record in enumerate(batch.records) if i not in rejected_at]
        valid, _ = with_comments(valid, kept, self.matcher, self.comments)
        if self.clock is not None:
            future, old = outside_the_clock(batch.records, self.clock)
            self.stats.future += future
            self.stats.too_old += old
        ordered = [((before, 0), letter) for before, letter in batch.undecodable]
        ordered.extend(
            ((r.at, 1), DeadLetter(r.reason, r.detail, batch.originals(r.at), batch.positions[r.at])) for r in rejected
        )
        dead = [letter for _, letter in sorted(ordered, key=lambda pair: pair[0])]  # in input order
        unique, duplicates = self.dedup.first_seen(valid)
        merge_into(self.panes, aggregate_panes(unique, self.pane_ms))
        self._read_comments(unique, valid, kept)
        if self.on_answer is not None:
            tell_answers(self.on_answer, unique, valid, kept)
        if self.on_counted is not None:
            self.on_counted(unique, counted_records(unique, valid, kept))
        if unique:
            latest_counted = max(e.occurred_at for e in unique)
            if self.counted_until is None or latest_counted > self.counted_until:
                self.counted_until = latest_counted
        if self.journeys is not None:
            self.journeys.add(unique)
        for key, drivers in aggregate_drivers(unique, self.pane_ms).items():
            before = self.drivers.get(key)
            self.drivers[key] = drivers if before is None else merge_drivers(before, drivers)
        stats = self.stats
        stats.read += batch.count
        stats.valid += len(valid)
        stats.duplicates += duplicates
        stats.dead_letters.update(d.reason for d in dead)
        if valid:
            latest = max(e.occurred_at for e in valid)
            if stats.max_occurred_at is None or latest > stats.max_occurred_at:
                stats.max_occurred_at = latest
        return dead

    def _read_comments(self, unique: list[Feedback], valid: list[Feedback], kept: list[dict[str, Any]]) -> None:
        """What the counted answers' comments add: theme results, the pane results' mentions, the effort alerts'
        quotes, and the CES comments the spikes' words are read from."""
        merge_into(self.theme_panes, aggregate_theme_panes(unique, self.pane_ms))
        for group, found in aggregate_mentions(unique, self.pane_ms).items():
            self.mentions[group] = merge_mentions(self.mentions.get(group, {}), found)
        comments = {id(event): record.get("comment") for event, record in zip(valid, kept, strict=True)}
        for key, quotes in aggregate_quotes(((e, comments[id(e)]) for e in unique), self.pane_ms).items():
            self.quotes[key] = merge_quotes(self.quotes.get(key, ()), quotes)
        for event in unique:
            comment = comments[id(event)]
            if comment and event.metric == "CES" and ANY in event.themes:
                self.said.setdefault((event.channel, event.journey), []).append(
                    (event.occurred_at, event.event_id, comment)
                )

    def theme_results(self, window_ms: int | None = None) -> list[dict[str, Any]]:
        """The theme results (docs/contract.md section 9) as JSON objects, the fields of a result record plus
        ``theme``: per pane (window_ms None) or the rolling window of that length as of the latest event, ordered
        by window, channel, journey, metric, theme."""
        by_theme: dict[str, dict[GroupKey, State]] = {}
        for (pane, channel, journey, metric, theme), state in self.theme_panes.items():
            by_theme.setdefault(theme, {})[(pane, channel, journey, metric)] = state
        out = []
        for theme, panes in by_theme.items():
            for result in self._results_of(panes, window_ms, None, {}, {}):
                out.append({**result_json(result), "theme": theme})
        key = ("window_start", "channel", "journey", "metric", "theme")
        return sorted(out, key=lambda r: tuple(r[k] for k in key))

    def alerts(self, config: EffortConfig) -> list[dict[str, object]]:
        """Every FIRING / RESOLVED effort-spike alert of the file (docs/contract.md section 7), the panes from the
        file's first to its last closing in event-time order (the file is complete: its last pane is closed)."""
        if not self.panes:
            return []
        segments: dict[tuple[str, str], dict[int, PaneEffort]] = {}
        for (pane, channel, journey, metric), state in self.panes.items():
            if metric == "CES":
                drivers = self.drivers.get((pane, channel, journey), {})
                quotes = self.quotes.get((pane, channel, journey), ())
                segments.setdefault((channel, journey), {})[pane] = PaneEffort(
                    state.n, state.high_effort, drivers, quotes
                )
        starts = [pane for pane, _, _, _ in self.panes]
        alerts = list(replay_alerts(segments, config, self.pane_ms, min(starts), max(starts)))
        for alert in alerts:  # the words of each spike: the stream's detector reads them from the store
            if alert["state"] == "FIRING":
                where = (str(alert["channel"]), str(alert["journey"]))
                pane = cast(int, alert["at"]) - self.pane_ms
                said = self.said.get(where, ())
                alert["terms"] = [term._asdict() for term in spike_terms(said, config, pane, self.pane_ms)]
        return alerts

    def results(self, window_ms: int | None = None, now_ms: int | None = None) -> list[WindowResult]:
        """Pane results (window_ms None), or the rolling window of that length as of the latest event (or as of
        ``now_ms``: what the live gauges show at that time, for a check of them)."""
        return self._results_of(self.panes, window_ms, now_ms, self.drivers, self.quotes, self.mentions)

    def _results_of(
        self,
        panes: dict[GroupKey, State],
        window_ms: int | None,
        now_ms: int | None,
        drivers: dict[SegmentPane, Drivers],
        quotes: dict[SegmentPane, Quotes],
        mentions: dict[GroupKey, Mentions] | None = None,
    ) -> list[WindowResult]:
        if window_ms is None:
            return pane_results(panes, self.pane_ms, drivers=drivers, quotes=quotes, themes=mentions)
        if self.stats.max_occurred_at is None:
            return []
        # replay's "now" is the largest occurred_at seen; the window ends at the boundary after it so that
        # the pane holding the latest event is included
        now = self.stats.max_occurred_at + self.pane_ms if now_ms is None else now_ms
        start, end = window_bounds(now, window_ms, self.pane_ms)
        states = rolling_window(panes, now, window_ms, self.pane_ms)
        return [
            window_result(start, end, channel, journey, metric, state, 1)
            for (channel, journey, metric), state in sorted(states.items())
            if state.n > 0
        ]

    def journey_instances(self, now_ms: int | None = None) -> list[Instance]:
        """Every journey instance of the file (none replaced: the file is complete), by (customer, journey,
        start); closed where end + G is before the largest occurred_at of the counted answers (or ``now_ms``)."""
        if self.journeys is None or self.counted_until is None:
            return []
        return list(self.journeys.all_instances(self.counted_until if now_ms is None else now_ms))


def counted_records(unique: list[Feedback], valid: list[Feedback], kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record each counted answer (``unique``, a sub-sequence of ``valid``, validated from ``kept``) was
    validated from (first_seen returns the objects it was given, in order)."""
    if len(unique) == len(valid):
        return kept
    record_of = {id(event): record for event, record in zip(valid, kept, strict=True)}
    return [record_of[id(event)] for event in unique]


def tell_answers(
    tell: Callable[[dict[str, Any]], None], unique: list[Feedback], valid: list[Feedback], kept: list[dict[str, Any]]
) -> None:
    """Each counted answer as the store keeps it."""
    for event, record in zip(unique, counted_records(unique, valid, kept), strict=True):
        tell(stored_answer(event, record))


def read_batches(path: Path) -> Iterator[tuple[Batch, int]]:
    """Open an events file and yield its batches with the bytes read so far (for progress)."""
    handle, is_avro = open_input(path)
    with handle:
        for batch in _avro_batches(handle) if is_avro else _json_batches(handle, path):
            yield batch, _position(handle)


def _position(handle: IO[bytes]) -> int:
    """Bytes read so far (for progress); 0 for a pipe, which cannot tell."""
    try:
        return handle.tell()
    except OSError:
        return 0


def replay_file(
    path: Path,
    pane_ms: int,
    on_dead_letter: Callable[[DeadLetter], None],
    progress: Progress | None = None,
    clock: Clock | None = None,
    journey_gap_ms: int | None = None,
    comments: CommentMode = "redacted",
    matcher: ThemeMatcher | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> Replay:
    """Replay one file; dead letters are handed to ``on_dead_letter`` as they are found.  With ``clock``, the
    stats also count the events a worker with that clock would refuse for their time (``future``, ``too_old``).
    With ``journey_gap_ms``, customer journeys are followed too (:meth:`Replay.journey_instances`).  Comments
    become what ``comments`` keeps and the themes of ``matcher`` (docs/contract.md section 9); ``on_answer`` is
    told every counted answer as the store keeps it."""
    replay = Replay(
        pane_ms,
        clock=clock,
        journeys=None if journey_gap_ms is None else JourneyBook(journey_gap_ms),
        comments=comments,
        matcher=matcher,
        on_answer=on_answer,
    )
    for batch, done in read_batches(path):
        for dead in replay.feed(batch):
            on_dead_letter(dead)
        if progress is not None:
            progress(done)
    return replay


def dead_letter_json(dead: DeadLetter) -> str:
    """One dead letter as a JSON line: reason, detail, the original line (or base64 of bytes), position."""
    original: str | None
    if isinstance(dead.original, bytes):
        original = base64.b64encode(dead.original).decode("ascii") if dead.original else None
    else:
        original = dead.original
    return json.dumps(
        {"reason": dead.reason, "detail": dead.detail, "event": original, "position": dead.position},
        separators=(",", ":"),
    )
