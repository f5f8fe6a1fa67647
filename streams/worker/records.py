"""The worker's message formats and table values: one typed shape each, one place that encodes and decodes it.

- :class:`PartialBatch`: what one hot-path batch contributes to one partials partition: the source offset
  range it covered for every source partition in the batch (the chain that lets ``merge`` notice a missing
  message) and the pane deltas of the segments that partition owns.  JSON on ``<app>-partials``.
- :class:`PaneState`: the ``panes`` table's value for one (segment, pane): the merged counters and, per source
  partition, the end of the last batch absorbed.  Absorbing a delta is idempotent by that end offset.
- :class:`Position`: the ``positions`` table's value for one (partials partition, source partition).
- seen-ids changelog entries: the event ids a batch counted, by expiry bucket.
- dead-letter headers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from streams.core.aggregate import Mentions, State
from streams.core.quotes import Quote, Quotes
from streams.core.validate import Feedback

THEMES_HEADER = "themes"  # on answers messages: the themes of each answer, "(any)" included (contract section 9)
THROUGH_HEADER = "routed-through"  # on routed and partial messages: how far the feedback partitions are counted
FROM_THE_START = -1  # SourceRange.start of a partition's first batch when its consumer group had no offset
# The source id of routed partition q in the partial messages (ranges, pane deltas) and the merge's tables (pane ends,
# positions) is ROUTED_SOURCE + q, so that the chains and pane ends of a worker from before answers were routed by
# event id (source = feedback partition) never mix with them: a pane keeps both, its version (their sum) grows on.
ROUTED_SOURCE = 1_000_000


class SourceRange(NamedTuple):
    """Source offsets [start, end) of one partition that a hot-path batch processed (start -1: from the start)."""

    partition: int
    start: int
    end: int


class PanePartial(NamedTuple):
    """The counters one batch of one source partition adds to one (channel, journey, pane), per metric."""

    channel: str
    journey: str
    pane: int  # pane start, epoch ms
    source: int  # source partition
    states: dict[str, State]
    drivers: dict[str, tuple[int, int]] = {}  # CES answers by touchpoint / reason code: (n, high effort)
    quotes: Quotes = ()  # the latest comments of its high-effort CES answers (streams.core.quotes)
    mentions: dict[str, Mentions] = {}  # per metric, its answers that mention each theme (section 9)


class PartialBatch(NamedTuple):
    """One message on ``<app>-partials``: a hot-path batch's deltas for the segments of one partials partition,
    and the source ranges of every partition in the batch (also those with no delta for this partition)."""

    ranges: tuple[SourceRange, ...]
    panes: tuple[PanePartial, ...]


def encode_partials(batch: PartialBatch) -> bytes:
    """The JSON bytes of a PartialBatch: orjson (json.dumps was 9.5% of the hot path's samples in the backlog shape
    with comments on 60% of the answers, py-spy 2026-12-05: the partials grew with the themes' drivers and the
    quotes), json for a str orjson refuses (a lone surrogate, which decoding already refuses)."""
    obj = {
        "ranges": [list(r) for r in batch.ranges],
        "panes": [
            [p.channel, p.journey, p.pane, p.source, _states_out(p.states)]
            + (
                [p.drivers, _quotes_out(p.quotes), p.mentions]
                if p.mentions
                else [p.drivers, _quotes_out(p.quotes)]
                if p.quotes
                else [p.drivers]
                if p.drivers
                else []
            )
            for p in batch.panes
        ],
    }
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def decode_partials(data: bytes) -> PartialBatch:
    """A PartialBatch from its JSON bytes; ValueError (or KeyError/TypeError) when they are not one."""
    obj = _loads(data)
    return PartialBatch(
        tuple(SourceRange(int(p), int(s), int(e)) for p, s, e in obj["ranges"]),
        tuple(
            PanePartial(
                c,
                j,
                int(pane),
                int(src),
                _states_in(states),
                _drivers_in(rest[0]) if rest else {},
                _quotes_in(rest[1]) if len(rest) > 1 else (),
                _mentions_in(rest[2]) if len(rest) > 2 else {},
            )
            for c, j, pane, src, states, *rest in obj["panes"]
        ),
    )


def _loads(data: bytes) -> Any:
    """JSON with orjson (0.41 ms against json's 0.94 ms for a 49 KB partial message: the merge's largest single
    cost in the backlog shape, py-spy 2026-12-03), json for what orjson refuses: a string escape of a lone
    surrogate, which json.dumps writes for a str that has one."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _states_out(states: Mapping[str, State]) -> dict[str, list[int]]:
    return {metric: list(state) for metric, state in states.items()}


def _states_in(raw: Mapping[str, Iterable[int]]) -> dict[str, State]:
    return {metric: State(*values) for metric, values in raw.items()}


def _drivers_in(raw: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, int]]:
    return {name: (int(n), int(high)) for name, (n, high) in raw.items()}


def _mentions_in(raw: Mapping[str, Mapping[str, int]]) -> dict[str, Mentions]:
    return {metric: {str(theme): int(n) for theme, n in found.items()} for metric, found in raw.items()}


def _quotes_out(quotes: Quotes) -> list[list[Any]]:
    return [list(quote) for quote in quotes]


def _quotes_in(raw: Iterable[Sequence[Any]]) -> Quotes:
    return tuple(Quote(int(at), str(event_id), str(text)) for at, event_id, text in raw)


@dataclass
class PaneState:
    """What the ``panes`` table holds for one (segment, pane): the merged counters per metric, and per source
    partition the end offset of the last hot-path batch absorbed (deltas add up, so only the ends are kept per
    source: they make absorbing a batch twice a no-op)."""

    ends: dict[int, int] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    drivers: dict[str, tuple[int, int]] = field(default_factory=dict)  # CES, capped (streams.core.aggregate)
    quotes: Quotes = ()  # CES: the latest comments of high-effort answers (streams.core.quotes)
    mentions: dict[str, Mentions] = field(default_factory=dict)  # per metric, answers mentioning each theme


def pane_state_to_table(pane: PaneState) -> dict[str, Any]:
    """The JSON-able table value (Faust's json serializer keeps str keys)."""
    value: dict[str, Any] = {"ends": {str(p): end for p, end in pane.ends.items()}, "states": _states_out(pane.states)}
    if pane.drivers:
        value["drivers"] = {name: list(counts) for name, counts in pane.drivers.items()}
    if pane.quotes:
        value["quotes"] = _quotes_out(pane.quotes)
    if pane.mentions:
        value["mentions"] = pane.mentions
    return value


def pane_state_from_table(value: Mapping[str, Any] | None) -> PaneState:
    """The table value back as a PaneState (empty for a missing key)."""
    if not value:
        return PaneState()
    return PaneState(
        {int(p): int(end) for p, end in value["ends"].items()},
        _states_in(value["states"]),
        _drivers_in(value.get("drivers") or {}),
        _quotes_in(value.get("quotes") or ()),
        _mentions_in(value.get("mentions") or {}),
    )


class Position(NamedTuple):
    """How far ``merge`` has followed one source partition's chain in one partials partition."""

    end: int  # end of the last source range applied
    offset: int  # partials offset of the message that carried it


def position_to_table(position: Position) -> list[int]:
    return [position.end, position.offset]


def position_from_table(value: Iterable[int] | None) -> Position | None:
    if value is None:
        return None
    end, offset = value
    return Position(int(end), int(offset))


def encode_seen(buckets: Mapping[int, list[str]]) -> bytes:
    """A seen-ids changelog entry: the ids one batch counted, by the start of their expiry bucket."""
    return json.dumps({str(bucket): ids for bucket, ids in buckets.items()}, separators=(",", ":")).encode()


def decode_seen(data: bytes) -> dict[int, list[str]]:
    return {int(bucket): ids for bucket, ids in json.loads(data).items()}


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int, schema_id: int | None
) -> list[tuple[str, str | bytes | None]]:
    """The headers of a dead letter: why (reason, detail) and where from (source topic, partition, offset)."""
    headers: list[tuple[str, str | bytes | None]] = [
        ("reason", reason.encode()),
        ("detail", detail.encode(errors="replace")[:1000]),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]
    if schema_id is not None:
        headers.append(("schema_id", str(schema_id).encode()))
    return headers


# --- counted answers for the ClickHouse sink (<app>-answers) ------------------------------------------------

_LENGTH = struct.Struct(">I")


def encode_answers(values: Sequence[bytes]) -> bytes:
    """Values framed each as a 4-byte big-endian length and its bytes: an answers message of answers an older
    worker routed (their bytes, as before 2026-12-06, when routed messages were framed this way too)."""
    pack = _LENGTH.pack
    return b"".join(pack(len(value)) + value for value in values)


def decode_answers(data: bytes) -> list[bytes]:
    """The raw messages of an ``<app>-answers`` or ``<app>-routed`` message; ValueError when the framing does not
    add up."""
    out = []
    at, end = 0, len(data)
    while at < end:
        if at + 4 > end:
            raise ValueError(f"truncated length at byte {at}")
        (size,) = _LENGTH.unpack_from(data, at)
        at += 4
        if at + size > end:
            raise ValueError(f"a {size}-byte answer at byte {at} runs past the end ({end})")
        out.append(data[at : at + size])
        at += size
    return out


class Through(NamedTuple):
    """How far every answer has been counted, as the hot path's count step knows it: for (routed partition q,
    feedback partition p), the Kafka timestamp T such that every message of p with a timestamp up to T that routes
    to q is counted (its pane delta in a partial message sent with this header or before).

    The route step stamps each routed message with its batch's ``{p: T}`` (T: the batch's time for a partition it
    has caught up with, else its last message's timestamp); the count step keeps, per routed partition it holds,
    the largest T per p of the routed messages it counted, and sends those on with its partial messages.  Every
    route batch sends every routed partition a message, so for an answer of p routed to q, a count of q past T
    means that answer is counted whatever the batch or hot-path process that routed it (a partition's messages are
    counted in order, and a partition moves to a new owner only after its last batch committed)."""

    partitions: int  # routed partitions: every one must report a p before merge relies on p
    at: dict[tuple[int, int], int]  # (routed partition, feedback partition) -> Kafka timestamp, epoch ms


class Routed(NamedTuple):
    """A valid answer on its way to the partition that counts it: validated; ``raw``, its row as routed
    (:func:`decode_routed`; empty in the route step, which does not need it), or from a worker before 2026-12-06 its
    bytes as they came; for a detractor the fields a follow-up needs that the validated form does not keep
    (streams.core.followups); and for the store the fields it keeps that the validated form does not
    (:class:`StoreFields`; None from a worker before 2026-12-06)."""

    event: Feedback
    raw: bytes
    context: dict[str, Any] | None = None
    store: StoreFields | None = None


class StoreFields(NamedTuple):
    """What ``cxpulse.answers`` keeps of an answer beyond its validated form: its agent, team and comment as kept
    (redacted or dropped by ``CXPULSE_COMMENTS`` in the route step)."""

    agent_id: str | None
    team: str | None
    comment: str | None


NO_STORE_FIELDS = StoreFields(None, None, None)


def store_fields(record: Mapping[str, Any]) -> StoreFields:
    """The :class:`StoreFields` of a decoded (pseudonymised, comment-read) feedback record."""
    return StoreFields(record.get("agent_id"), record.get("team"), record.get("comment"))


def json_row(value: Any) -> bytes:
    """One answer's row as JSON, in a bytes object of its own size.  A batch holds one row per answer until its
    messages are produced, and orjson (3.12 on) returns even a 100-byte output in a buffer of at least 4 KB that it
    never shrinks (its ``finish`` sets the length before a resize that then does nothing; home-assistant/core#181245,
    #181513): a backlog batch of 50,000 answers held 200 MB of journey rows alone in the hot path (tracemalloc,
    ``make bench-state``).  The copy costs ~45 ns a row."""
    try:
        return b"".join((orjson.dumps(value), b""))  # two parts: join copies (one would be returned as it is)
    except TypeError:  # a str orjson will not write (a lone surrogate, which decoding already refuses)
        return json.dumps(value).encode()


SAME = True  # a context field whose value the row holds elsewhere (no value of a context is a boolean)


def _carried(event: Feedback, store: StoreFields | None) -> dict[str, Any]:
    """The context fields a routed row holds elsewhere: in the validated form and the store fields."""
    carried: dict[str, Any] = {"event_id": event.event_id, "interaction_id": event.interaction_id}
    if store is not None:
        carried.update(agent_id=store.agent_id, team=store.team, comment=store.comment)
    return carried


def routed_row(answer: Routed) -> bytes:
    """One answer's row in a routed message (JSON, one line): its validated form, its follow-up context or null, and
    its :class:`StoreFields`.  Encoded one by one: a batch's answers are cut into messages by their real size, and
    the count step passes a counted answer's row on to the store as it is (:func:`encode_answer_rows`).

    A context field the row holds elsewhere (the comment, agent and team of the store fields, the event and
    interaction ids of the validated form) is written as ``true``, so that no value is written twice: a feedback
    message of up to 1 MB (the feedback topic's limit) makes a row of at most ~6 MB (JSON writes a control character
    in six), under the internal topics' 8 MB; with its comment twice, a detractor's comment of control characters made
    a row of 12 MB that no transaction could carry, and its batch would fail forever."""
    context = answer.context
    if context:
        carried = _carried(answer.event, answer.store)
        context = {
            name: SAME if value is not None and name in carried and carried[name] == value else value
            for name, value in context.items()
        }
    return json_row((*answer.event, context, *(answer.store or NO_STORE_FIELDS)))


def _context_in(context: Any, event: Feedback, store: StoreFields) -> dict[str, Any] | None:
    """A routed row's context with what it holds elsewhere filled in (:func:`routed_row`)."""
    if context is None:
        return None
    if not isinstance(context, dict):
        raise ValueError(f"a routed row's context is a {type(context).__name__}")
    carried = _carried(event, store)
    for name, value in context.items():
        if value is SAME:
            if name not in carried:
                raise ValueError(f"a routed row's context refers to a field it does not hold: {name}")
            context[name] = carried[name]
    return context


def encode_routed_rows(rows: Sequence[bytes]) -> bytes:
    """One message of ``<app>-routed``: the :func:`routed_row` of the valid answers a batch routed to one partition,
    a line each (JSON never holds a raw line break).  The count step neither decodes nor validates again (the two
    were 32% of the batch step's time when it did, profiled), and neither does the sink: the answers' bytes are not
    passed on (until 2026-12-06 they followed the validated forms, and the sink decoded and validated them again:
    ~30% of its CPU, profiled)."""
    return b"\n".join(rows)


def encode_routed(answers: Sequence[Routed]) -> bytes:
    """:func:`encode_routed_rows` of the answers."""
    return encode_routed_rows([routed_row(answer) for answer in answers])


ROUTED_ROW_FIELDS = len(Feedback._fields) + 4  # the validated form, the context, the StoreFields


def decode_routed(data: bytes) -> list[Routed]:
    """The answers of an ``<app>-routed`` message, each with its row as ``raw``; also of the format before
    2026-12-06 (a 4-byte length, never a ``[``, then the validated forms as one JSON array and each answer's bytes
    as ``raw``, ``store`` None); ValueError (or TypeError) when they are not such answers."""
    if not data:
        return []
    if data[:1] != b"[":
        return _decode_routed_before(data)
    out = []
    for line in data.split(b"\n"):
        fields = _loads(line)
        if len(fields) != ROUTED_ROW_FIELDS:
            raise ValueError(f"a routed row of {len(fields)} fields")
        store = StoreFields(*fields[-3:])
        del fields[-3:]
        context = fields.pop()
        fields[11] = tuple(fields[11])  # reason_codes
        fields[13] = tuple(fields[13])  # themes
        event = Feedback(*fields)
        out.append(Routed(event, line, _context_in(context, event, store), store))
    return out


def _decode_routed_before(data: bytes) -> list[Routed]:
    frames = decode_answers(data)
    if not frames:
        return []
    rows = _loads(frames[0])
    if len(rows) != len(frames) - 1:
        raise ValueError(f"{len(rows)} answers but {len(frames) - 1} of their bytes")
    out = []
    for fields, raw in zip(rows, frames[1:], strict=True):
        context = fields.pop()
        fields[11] = tuple(fields[11])  # reason_codes
        if len(fields) > 13:  # themes (a routed message of a worker from before comments has none)
            fields[13] = tuple(fields[13])
        out.append(Routed(Feedback(*fields), raw, context))
    return out


ANSWERS_FORMAT_HEADER = "format"  # on answers messages of rows (:func:`encode_answer_rows`): ``rows``
ANSWER_ROWS = b"rows"


def encode_answer_rows(rows: Sequence[bytes]) -> bytes:
    """One message of ``<app>-answers`` in the format of rows (header ``format: rows``): counted answers' routed rows
    (:func:`routed_row`, as they came: nothing is encoded again), one JSON array.  The sink stores them as they are
    (no decoding or validating again)."""
    return b"[" + b",".join(rows) + b"]"


def decode_answer_rows(data: bytes) -> tuple[list[Feedback], list[StoreFields]]:
    """The counted answers of an answers message of rows; ValueError (or TypeError) when it is not one."""
    rows = _loads(data)
    events, stores = [], []
    width = len(Feedback._fields)
    for fields in rows:
        if len(fields) != ROUTED_ROW_FIELDS:
            raise ValueError(f"an answer row of {len(fields)} fields")
        fields[11] = tuple(fields[11])  # reason_codes
        fields[13] = tuple(fields[13])  # themes
        events.append(Feedback(*fields[:width]))
        stores.append(StoreFields(*fields[width + 1 :]))
    return events, stores


def answer_row_columns(data: bytes) -> list[tuple[Any, ...]]:
    """The counted answers of an answers message of rows as the columns of their rows' fields (ROUTED_ROW_FIELDS
    columns: the validated form's fields in Feedback's order, the context, then StoreFields'): what the sink stores,
    no object made per answer; ValueError when it is not such a message."""
    rows = _loads(data)
    if not isinstance(rows, list) or any(not isinstance(row, list) or len(row) != ROUTED_ROW_FIELDS for row in rows):
        raise ValueError(f"not a list of answer rows of {ROUTED_ROW_FIELDS} fields")
    if not rows:
        return [() for _ in range(ROUTED_ROW_FIELDS)]
    return list(zip(*rows, strict=True))


def is_answer_rows(headers: Any) -> bool:
    """Whether an answers message is of rows (:func:`encode_answer_rows`) rather than raw feedback messages."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    return any(name == ANSWERS_FORMAT_HEADER and value in (ANSWER_ROWS, "rows") for name, value in pairs)


def encode_through(through: Through) -> bytes:
    """The ``routed-through`` header (JSON): ``{"n": partitions, "at": {"q:p": ms}}``."""
    at = {f"{q}:{p}": ms for (q, p), ms in through.at.items()}
    return json.dumps({"n": through.partitions, "at": at}, separators=(",", ":")).encode()


def encode_routed_through(through: Mapping[int, int]) -> bytes:
    """The ``routed-through`` header of a routed message: ``{p: ms}`` of the route batch that sent it."""
    return json.dumps({str(p): ms for p, ms in through.items()}, separators=(",", ":")).encode()


def _header(headers: Any) -> bytes | str | None:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    return next((value for name, value in pairs if name == THROUGH_HEADER and value), None)


def decode_routed_through(headers: Any) -> dict[int, int]:
    """The ``{p: ms}`` of a routed message's header (headers as pairs or a dict); empty without a readable one."""
    value = _header(headers)
    try:
        return {int(p): int(ms) for p, ms in json.loads(value).items()} if value else {}
    except (ValueError, TypeError, AttributeError):
        return {}


def decode_through(headers: Any) -> Through | None:
    """The ``routed-through`` header of a partial message (headers as pairs or a dict), None when it has none (or
    an unreadable one: a partial message from before answers were routed carries another header)."""
    value = _header(headers)
    if not value:
        return None
    try:
        obj = json.loads(value)
        at = {}
        for key, ms in obj["at"].items():
            q, p = key.split(":")
            at[(int(q), int(p))] = int(ms)
        return Through(int(obj["n"]), at)
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def lowest_through(through: Through) -> int | None:
    """The event time (Kafka timestamp) up to which every answer of every feedback partition that ``through``
    names has been counted: the lowest T over those partitions and every routed partition, 0 for a routed
    partition that has not reported one yet (None when no feedback partition is named)."""
    feedback = {p for _, p in through.at}
    if not feedback:
        return None
    return min(through.at.get((q, p), 0) for p in feedback for q in range(through.partitions))


def encode_answer_themes(themes: Sequence[tuple[str, ...]]) -> bytes | None:
    """The ``themes`` header of an answers message: per answer, in order, the themes it counts under, "(any)"
    included when its comment has a word (JSON); None when no answer has a comment (the header is left out)."""
    return orjson.dumps([list(found) for found in themes]) if any(themes) else None


def decode_answer_themes(headers: Any, count: int) -> list[list[str]]:
    """The themes of each of the ``count`` answers of an answers message, "(any)" included (none without a readable
    header: a message of a worker from before comments, or one whose answers have no comment)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    value = next((value for name, value in pairs if name == THEMES_HEADER and value), None)
    try:
        rows = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        rows = None
    if not isinstance(rows, list) or len(rows) != count:
        return [[] for _ in range(count)]
    return [[str(theme) for theme in row] if isinstance(row, list) else [] for row in rows]
