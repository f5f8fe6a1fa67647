"""Hostile input, property-based: any bytes, any JSON value, any line of a file ends counted or as a dead letter
with a reason, never as a traceback, in the decoders, the validation, the hot path's batch step, replay and the
HTTP ingest; and whatever a batch step produces can be written to Kafka (headers, follow-ups, partials) and to
ClickHouse (answers), so a hostile event cannot wedge a batch that is retried forever."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import LocalCatalog, decode_batch, encode_feedback
from streams.agents.record import Record
from streams.core.followups import encode as encode_followup
from streams.core.validate import REASONS, Clock, validate_batch
from streams.errors import InputFileError
from streams.http_ingest import triage
from streams.processes.sink import answer_block
from streams.replay import replay_file
from streams.topics import PARTIALS_MAX_MESSAGE_BYTES
from streams.worker.records import (
    ANSWER_ROWS,
    ANSWERS_FORMAT_HEADER,
    decode_routed,
    encode_answer_rows,
    encode_partials,
    encode_routed,
    encode_seen,
)
from tests.fakes import FakeMessage, TwoSteps
from tests.fakes import ingest as fake_ingest

CATALOG = LocalCatalog()
NOW = 1_800_000_000_000
CLOCK = Clock(NOW, 300_000, 7 * 86_400_000)
FIELDS = ("event_id", "occurred_at", "source", "channel", "journey", "touchpoint", "metric", "score", "scale_min")
FIELDS += ("scale_max", "customer_id", "interaction_id", "agent_id", "team", "reason_codes", "comment")

# any code point, lone surrogates included (JSON can escape them: "\\ud800"; Hypothesis leaves them out by default)
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
plausible = {
    "event_id": st.text(min_size=1, max_size=12) | json_values,
    "occurred_at": st.integers(min_value=NOW - 10 * 86_400_000, max_value=NOW + 600_000)
    | st.integers()
    | st.sampled_from(["2027-01-15T08:00:00Z", "2027-01-15T08:00:00", "not a date", "+999999-01-01T00:00:00Z"])
    | json_values,
    "source": st.sampled_from(["genesys", " ", ""]) | st.text(max_size=10),
    "channel": st.sampled_from(["chat", "Live Chat", "PHONE ", "-x", "a" * 70]) | st.text(max_size=10),
    "journey": st.sampled_from(["billing", "support"]) | st.text(max_size=10),
    "touchpoint": st.none() | st.text(max_size=10),
    "metric": st.sampled_from(["NPS", "CES", "CSAT", "NLS", "CAS", "nps", "XYZ"]) | json_values,
    "score": st.integers(min_value=-5, max_value=15) | st.integers() | json_values,
    "scale_min": st.none() | st.integers(min_value=-3, max_value=120),
    "scale_max": st.none() | st.integers(min_value=-3, max_value=120),
    "customer_id": st.none() | st.text(max_size=12),
    "interaction_id": st.none() | st.text(max_size=12),
    "agent_id": st.none() | st.text(max_size=12),
    "team": st.none() | st.text(max_size=12),
    "reason_codes": st.none() | st.lists(st.text(max_size=8), max_size=3) | json_values,
    "comment": st.none() | st.text(max_size=40),
}
event_like = st.fixed_dictionaries({}, optional=plausible)  # type: ignore[arg-type]
# valid events whose free-text fields hold anything (so that hostile text reaches every later step)
free_text = st.none() | any_text | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "💥" * 5])
valid_with_hostile_text = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=12).filter(lambda t: not t.isspace()),
        "occurred_at": st.integers(min_value=NOW - 86_400_000, max_value=NOW),
        "source": st.just("web"),
        "channel": st.sampled_from(["chat", "phone"]),
        "journey": st.sampled_from(["billing", "support"]),
        "metric": st.sampled_from(["NPS", "CES", "CSAT"]),
        "score": st.integers(min_value=1, max_value=5),
    },
    optional={
        name: free_text for name in ("touchpoint", "customer_id", "interaction_id", "agent_id", "team", "comment")
    }
    | {"reason_codes": st.lists(any_text, max_size=3)},
)
event_like = event_like | valid_with_hostile_text


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


message_values = st.one_of(
    st.binary(max_size=80),  # anything at all
    st.binary(max_size=60).map(lambda tail: b"\x00" + struct.pack(">I", 1) + tail),  # framed, garbage body
    st.binary(max_size=60).map(lambda tail: b"\x00" + struct.pack(">I", 99) + tail),  # an unknown schema id
    json_values.map(_json_bytes),
    event_like.map(_json_bytes),
    event_like.map(lambda event: _json_bytes(event)[: max(1, len(_json_bytes(event)) // 2)]),  # truncated
    st.just(b'{"event_id": ' + b"[" * 5000),  # nested thousands deep
    st.none(),
)


HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(st.lists(message_values, max_size=30))
def test_decode_keeps_or_refuses_every_value(values: list[bytes | None]) -> None:
    decoded = decode_batch(values, CATALOG)
    failed = [index for index, _ in decoded.failed]
    assert sorted([*decoded.kept, *failed]) == list(range(len(values)))
    assert all(isinstance(why, str) and why for _, why in decoded.failed)


@HYPOTHESIS
@given(st.lists(event_like, max_size=30))
def test_validation_counts_or_names_a_reason_for_every_record(records: list[dict[str, Any]]) -> None:
    for clock in (CLOCK, None):
        valid, rejected = validate_batch(records, clock)
        assert len(valid) + len(rejected) == len(records)
        assert all(r.reason in REASONS and r.detail for r in rejected)


@HYPOTHESIS
@given(st.lists(message_values, max_size=40), st.booleans())
def test_the_batch_step_counts_or_dead_letters_every_message_and_its_output_can_be_written(
    values: list[bytes | None], pseudonyms: bool
) -> None:
    steps = TwoSteps(
        fake_ingest(3, 2, followups=True, answers=True, customer_key=b"0123456789abcdef" if pseudonyms else b"")
    )
    messages = [FakeMessage(i % 2, i // 2, value) for i, value in enumerate(values)]
    routed, out = steps.batch(messages, CLOCK)
    assert routed.records == len(messages)
    assert out.counted + len(routed.dead_letters) + out.duplicates == len(messages)
    assert not out.dead_letters  # what the route step let through, the count step counts (or drops as a copy)
    assert all(letter.reason in REASONS for letter in routed.dead_letters)
    for letter in routed.dead_letters:  # librdkafka writes header values as UTF-8
        for _, header in letter.headers:
            if isinstance(header, str):
                header.encode()
    for followup in out.followups:
        encode_followup(followup)
    for batch in out.partials.values():
        encode_partials(batch)
    for buckets in out.seen.values():
        encode_seen(buckets)
    for partition, rows in out.answer_rows.items():  # what the ClickHouse sink makes of them: rows it can insert
        message = Record(partition, 0, encode_answer_rows(rows), 0, [(ANSWERS_FORMAT_HEADER, ANSWER_ROWS)])
        columns = answer_block(message, CATALOG)
        assert len(columns[0]) == len(rows)
        for column in columns:
            for cell in column:
                if isinstance(cell, str):
                    cell.encode()
    assert not out.answers  # (bytes: only for answers an older worker routed)


@HYPOTHESIS
@given(st.lists(st.one_of(json_values.map(json.dumps), event_like.map(json.dumps), st.text(max_size=40)), max_size=25))
def test_replay_reads_any_lines(tmp_path_factory: Any, lines: list[str]) -> None:
    path = Path(tmp_path_factory.mktemp("hostile")) / "events.jsonl"
    path.write_bytes("\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "surrogatepass") + b"\n")
    dead: list[Any] = []
    try:
        replay = replay_file(path, 60_000, dead.append)
    except InputFileError as exc:  # nothing in it is an event: the file is refused as a whole, with what it is
        assert "is not a file of FeedbackEvents: it looks like" in str(exc)
        assert not any(letter.reason != "undecodable" for letter in dead)
        return
    stats = replay.stats
    assert stats.valid + sum(stats.dead_letters.values()) == stats.read == len(dead) + stats.valid
    assert all(letter.reason in REASONS for letter in dead)
    list(replay.results())


@HYPOTHESIS
@given(st.lists(event_like | json_values.filter(lambda v: isinstance(v, dict)), min_size=1, max_size=20))
def test_http_ingest_accepts_or_rejects_every_item_with_a_reason(items: list[dict[str, Any]]) -> None:
    good, rejected = triage(items, CLOCK, CATALOG)
    assert len(good) + len(rejected) == len(items)
    assert [r["index"] for r in rejected] == sorted(r["index"] for r in rejected)
    assert all(r["reason"] in REASONS for r in rejected)
    json.dumps(rejected)  # the 202 body can be written


def test_an_event_with_a_lone_surrogate_is_a_dead_letter_not_a_retried_batch() -> None:
    """Found by the properties above: JSON may escape a lone surrogate (\\ud800), which no UTF-8 writer takes."""
    event = {"event_id": "e", "occurred_at": NOW, "source": "s", "channel": "chat", "journey": "billing"}
    value = json.dumps({**event, "metric": "CSAT", "score": 4, "comment": "\ud800"}).encode()
    out = fake_ingest(answers=True).batch([FakeMessage(0, 0, value)], CLOCK)
    assert [letter.reason for letter in out.dead_letters] == ["undecodable"]
    encode_feedback({**event, "metric": "CSAT", "score": 4}, CATALOG)


def test_a_feedback_message_of_a_megabyte_makes_messages_a_transaction_can_carry() -> None:
    """A detractor's comment of a megabyte of control characters (JSON writes each in six): its routed row and the
    answers message it goes on in stay under the internal topics' message limit, the comment written once (it was
    twice, in the follow-up context and the store fields: 12 MB, a batch that could never commit), and the
    follow-up and the store still get the whole comment."""
    said = "\x01" * 1_000_000
    event = {"event_id": "big", "occurred_at": NOW - 1000, "source": "s", "channel": "chat", "journey": "billing",
             "metric": "NPS", "score": 0, "comment": said, "agent_id": "a-1", "team": "t-1"}  # fmt: skip
    value = encode_feedback(event, CATALOG)
    steps = TwoSteps(fake_ingest(1, 1, followups=True, answers=True))
    routed, out = steps.batch([FakeMessage(0, 0, value)], CLOCK)
    message = encode_routed(routed.routed[0])
    assert 6 * len(said) <= len(message) < PARTIALS_MAX_MESSAGE_BYTES
    (back,) = decode_routed(message)
    assert back.context is not None and back.context["comment"] == said and back.context["event_id"] == "big"
    assert [f["comment"] for f in out.followups] == [said]
    (rows,) = out.answer_rows.values()
    assert len(encode_answer_rows(rows)) < PARTIALS_MAX_MESSAGE_BYTES
    columns = answer_block(Record(0, 0, encode_answer_rows(rows), 0, [(ANSWERS_FORMAT_HEADER, ANSWER_ROWS)]), CATALOG)
    assert columns[15] == [said] and columns[12] == ["a-1"]  # comment, agent_id
