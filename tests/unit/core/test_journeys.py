"""Customer journeys (docs/contract.md section 8): replay against an independent computation, order and batching
independence, revisions (a late answer that joins two instances), the KPIs from their counters, the CLI."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from streams.agents.faust_compat import encode_value
from streams.agents.local_tables import index_entry
from streams.cli import app
from streams.core.journey_kpis import JourneyCounts, counts_by, counts_of, journey_kpis
from streams.core.journey_state import OUTSIDE_A_BATCH, GroupState, closed_counts
from streams.core.journeys import (
    Instance,
    JourneyBook,
    Revisions,
    answer_of,
    confirm,
    instance_json,
    instances_of,
    revise,
)
from streams.core.validate import Feedback, validate_batch
from streams.core.windows import iso_utc
from streams.replay import replay_file
from streams.worker.journey_agent import journey_index
from tests.support import G, H, T, event, generated

runner = CliRunner()
SCALES = {"NPS": (0, 10), "NLS": (0, 10), "CES": (1, 7), "CSAT": (1, 5), "CAS": (1, 5)}


# --- an independent computation of section 8, from the raw events of a file ----------------------------------


def reference(events: list[dict[str, Any]], gap_ms: int) -> list[dict[str, Any]]:
    """Section 8 computed the plain way: valid events (validate_batch is section 2's one implementation), the
    first of each event_id, grouped, sorted, split at gaps > G, every field by its definition."""
    valid, _ = validate_batch(events)
    counted: dict[str, Feedback] = {}
    for answer in valid:
        counted.setdefault(answer.event_id, answer)
    now = max(a.occurred_at for a in counted.values())
    groups: dict[tuple[str, str], list[Feedback]] = {}
    for answer in counted.values():
        if answer.customer_id and answer.customer_id.strip():
            groups.setdefault((answer.customer_id, answer.journey), []).append(answer)
    out = []
    for (customer, journey), answers in sorted(groups.items()):
        answers.sort(key=lambda a: (a.occurred_at, a.event_id))
        runs: list[list[Feedback]] = [[answers[0]]]
        for a in answers[1:]:
            if a.occurred_at - runs[-1][-1].occurred_at > gap_ms:
                runs.append([a])
            else:
                runs[-1].append(a)
        for run in runs:

            def x(a: Feedback) -> float:
                return (a.score - a.scale_min) / (a.scale_max - a.scale_min)

            ids = [a.interaction_id if a.interaction_id and a.interaction_id.strip() else None for a in run]
            contacts = len({i for i in ids if i is not None}) + ids.count(None)
            nps = [a for a in run if a.metric == "NPS"]
            last_nps = None
            if nps:
                s = nps[-1].score
                last_nps = "promoter" if s >= 9 else ("passive" if s >= 7 else "detractor")
            ces = [a for a in run if a.metric == "CES"]
            out.append(
                {
                    "customer_id": customer,
                    "journey": journey,
                    "start": iso_utc(run[0].occurred_at),
                    "end": iso_utc(run[-1].occurred_at),
                    "first_channel": run[0].channel,
                    "answers": len(run),
                    "contacts": contacts,
                    "channels": len({a.channel for a in run}),
                    "channel_switches": sum(1 for a, b in itertools.pairwise(run) if a.channel != b.channel),
                    "touchpoints": len({a.touchpoint for a in run if a.touchpoint and a.touchpoint.strip()}),
                    "ces_n": len(ces),
                    "ces_high_effort": sum(1 for a in ces if x(a) < 0.5),
                    "first_x": x(run[0]),
                    "last_x": x(run[-1]),
                    "last_nps": last_nps,
                    "one_stop": contacts == 1,
                    "recoverable": len(run) >= 2 and x(run[0]) < 0.5,
                    "recovered": len(run) >= 2 and x(run[0]) < 0.5 and x(run[-1]) >= 0.5,
                    "closed": run[-1].occurred_at + gap_ms < now,
                    "version": 1,
                    "deleted": False,
                }
            )
    return out


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_equals_an_independent_computation(tmp_path: Path, seed: int) -> None:
    events = generated(seed)
    replay = replay_file(write(tmp_path / "e.jsonl", events), 60_000, lambda _: None, journey_gap_ms=G)
    got = [instance_json(i) for i in replay.journey_instances()]
    want = reference(events, G)
    assert got == want
    assert len(want) > 50 and any(i["answers"] > 2 for i in want) and any(i["closed"] for i in want)
    assert any(not i["closed"] for i in want) and any(i["recovered"] for i in want)


def test_a_gap_of_exactly_g_keeps_the_instance_one_ms_more_splits_it(tmp_path: Path) -> None:
    def ends(*offsets: int) -> list[tuple[str, str, int]]:
        events = [event(event_id=f"e{i}", occurred_at=T + o, customer_id="c") for i, o in enumerate(offsets)]
        replay = replay_file(write(tmp_path / "e.jsonl", events), 60_000, lambda _: None, journey_gap_ms=G)
        return [(i["start"], i["end"], i["answers"]) for i in map(instance_json, replay.journey_instances())]

    assert ends(0, G) == [(iso_utc(T), iso_utc(T + G), 2)]
    assert ends(0, G - 1) == [(iso_utc(T), iso_utc(T + G - 1), 2)]
    assert ends(0, G + 1) == [(iso_utc(T), iso_utc(T), 1), (iso_utc(T + G + 1), iso_utc(T + G + 1), 1)]


def answers_of(events: list[dict[str, Any]]) -> list[Feedback]:
    valid, _ = validate_batch(events)
    first: dict[str, Feedback] = {}
    for a in valid:
        first.setdefault(a.event_id, a)
    return list(first.values())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), order=st.randoms(use_true_random=False), cuts=st.lists(st.integers(0, 200)))
def test_any_order_and_any_batching_give_the_same_instances(seed: int, order: random.Random, cuts: list[int]) -> None:
    answers = answers_of(generated(seed, 120))
    now = max(a.occurred_at for a in answers) + 1
    whole = JourneyBook(G)
    whole.add(sorted(answers, key=lambda a: (a.occurred_at, a.event_id)))
    shuffled = list(answers)
    order.shuffle(shuffled)
    batched = JourneyBook(G)
    bounds = sorted({0, len(shuffled), *(c % (len(shuffled) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        batched.add(shuffled[lo:hi])
    assert list(batched.all_instances(now)) == list(whole.all_instances(now))


def test_a_late_answer_joins_two_instances_and_the_replaced_one_is_deleted() -> None:
    book, revisions = JourneyBook(G), Revisions()
    group = ("c", "billing")

    def add(event_id: str, at: int, **fields: Any) -> list[tuple[int, int, int, bool]]:
        (answer,), _ = validate_batch([event(event_id=event_id, occurred_at=at, customer_id="c", **fields)])
        book.add([answer])
        revised = revisions.revise(group, book.instances(group, 0))
        return [(r.instance.start, r.instance.answers, r.version, r.deleted) for r in revised]

    assert add("a", T) == [(T, 1, 1, False)]
    assert add("b", T + 2 * G) == [(T + 2 * G, 1, 1, False)]  # more than G later: a second instance
    assert add("c", T + G) == [(T, 3, 2, False), (T + 2 * G, 1, 2, True)]  # joins both: one revised, one deleted
    assert add("d", T - 1) == [(T - 1, 4, 1, False), (T, 3, 3, True)]  # an earlier start: a new key, the old deleted
    assert add("e", T + G // 2) == [(T - 1, 5, 2, False)]
    assert revisions.revise(group, book.instances(group, 0)) == []  # nothing changed: nothing emitted


def test_closing_is_a_revision_of_its_own() -> None:
    book, revisions = JourneyBook(G), Revisions()
    group = ("c", "billing")
    (answer,), _ = validate_batch([event(event_id="a", occurred_at=T, customer_id="c")])
    book.add([answer])
    assert [r.instance.closed for r in revisions.revise(group, book.instances(group, T + G))] == [False]
    assert revisions.revise(group, book.instances(group, T + G)) == []
    (closing,) = revisions.revise(group, book.instances(group, T + G + 1))
    assert closing.instance.closed and closing.version == 2 and not closing.deleted


def test_what_a_state_records_before_sending_is_sent_again_until_confirmed() -> None:
    """The stream writes a group's state before its revisions are in Kafka: a revision not known sent is sent
    again (higher version) at the next revise, a replaced start's deletion too; once confirmed, nothing repeats.
    The case the kill -9 test found: the start moved by a late answer, the old start's instance sent, its state
    lost; the old start must still be deleted."""
    group = ("c", "billing")
    answers = [answer_of(a) for a in validate_batch([event(event_id="b", occurred_at=T + H, customer_id="c")])[0]]
    first, emitted = revise(group, {}, instances_of(group, answers, G, 0), 10)
    assert [(r.instance.start, r.version, r.deleted) for r in first] == [(T + H, 10, False)]
    again, emitted = revise(group, emitted, instances_of(group, answers, G, 0), 11)  # a crash: not known sent
    assert [(r.instance.start, r.version, r.deleted) for r in again] == [(T + H, 11, False)]
    late = [answer_of(a) for a in validate_batch([event(event_id="a", occurred_at=T, customer_id="c")])[0]]
    moved, emitted = revise(group, emitted, instances_of(group, late + answers, G, 0), 12)
    assert [(r.instance.start, r.version, r.deleted) for r in moved] == [(T, 12, False), (T + H, 12, True)]
    closing = instances_of(group, late + answers, G, T + 3 * G)  # the clock past end + G: closed
    state = GroupState(late + answers, emitted, 7, closed_counts(closing))
    assert state.closed == ((T + H, counts_of(closing[0])),) and state.closed[0][1].journeys == 1
    restored = GroupState.from_table(state.to_table(G, 7 * 24 * H))
    assert restored == state
    # not sent yet: written by a look at due groups, looked at again at once; written by a batch (offset 7), due
    # when it closes, as if sent: the batch, read again until it is done, sends them again
    assert restored._replace(offset=OUTSIDE_A_BATCH).due(G, 7 * 24 * H) == 1
    assert restored.due(G, 7 * 24 * H) == T + H + G + 1
    resent, _ = revise(group, restored.emitted, instances_of(group, late + answers, G, 0), 13)
    assert [(r.instance.start, r.version, r.deleted) for r in resent] == [(T, 13, False), (T + H, 13, True)]
    done = restored.confirmed()
    assert list(done.emitted) == [T] and done.due(G, 7 * 24 * H) == T + H + G + 1  # the deletion done is forgotten
    assert done.closed == state.closed  # the KPI gauges' counters stay with the state
    assert done.without_closed_before(T + H + G, G).closed == state.closed
    assert done.without_closed_before(T + H + G + 1, G).closed == ()  # forgotten with its instance
    assert revise(group, done.emitted, instances_of(group, late + answers, G, 0), 14)[0] == []
    assert confirm(done.emitted) == done.emitted


def instance(**fields: Any) -> Instance:
    base: dict[str, Any] = dict(
        customer_id="c",
        journey="billing",
        start=T,
        end=T,
        first_channel="phone",
        answers=1,
        contacts=1,
        channels=1,
        channel_switches=0,
        touchpoints=0,
        ces_n=0,
        ces_high_effort=0,
        first_x=0.0,
        last_x=0.0,
        first_low=True,
        last_nps=None,
        one_stop=True,
        recovered=False,
        closed=True,
    )
    base.update(fields)
    return Instance(**base)


def test_kpis_come_from_counters_that_add_up() -> None:
    instances = [
        instance(),  # one stop, not recoverable (one answer)
        instance(answers=3, contacts=3, one_stop=False, channel_switches=2, ces_high_effort=1, last_nps="detractor"),
        instance(answers=2, contacts=2, one_stop=False, channel_switches=1, recovered=True, last_nps="promoter"),
        instance(answers=2, contacts=1, first_low=False, last_nps="promoter"),
        instance(answers=4, contacts=4, one_stop=False, closed=False, last_nps="detractor"),  # open: not counted
        instance(journey="support", end=T + 86_400_000),
    ]
    by_journey = counts_by(instances)
    assert by_journey[("billing",)] == JourneyCounts(4, 2, 7, 3, 1, 2, 0, 1, 2, 1)
    kpis = journey_kpis(by_journey[("billing",)])
    assert kpis == {
        "one_stop_rate": 50.0,
        "contacts_per_journey": 1.75,
        "switches_per_journey": 0.75,
        "high_effort_rate": 25.0,
        "journey_nps": 100 * (2 - 1) / 3,
        "recovery_rate": 50.0,
    }
    daily = counts_by(instances, window_ms=86_400_000)
    assert sum(daily.values(), JourneyCounts()) == sum(by_journey.values(), JourneyCounts())  # rollups add up
    assert journey_kpis(JourneyCounts())["journey_nps"] is None


def test_cli_writes_instances_and_refuses_a_gap_without_a_file(tmp_path: Path) -> None:
    events = generated(5, 200)
    source = write(tmp_path / "e.jsonl", events)
    out = tmp_path / "journeys.jsonl"
    result = runner.invoke(
        app, ["replay", str(source), "-o", str(tmp_path / "r"), "--journeys", str(out), "--journey-gap", "1h"]
    )
    assert result.exit_code == 0, result.output
    assert "journey instance" in result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == reference(events, H)
    refused = runner.invoke(app, ["replay", str(source), "-o", str(tmp_path / "r"), "--journey-gap", "1h"])
    assert refused.exit_code == 2 and "--journey-gap needs --journeys" in refused.output


def test_the_gap_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = generated(6, 200)
    source = write(tmp_path / "e.jsonl", events)
    out = tmp_path / "journeys.jsonl"
    monkeypatch.setenv("CXPULSE_JOURNEY_GAP_SECONDS", "7200")
    result = runner.invoke(app, ["replay", str(source), "-o", str(tmp_path / "r"), "--journeys", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == reference(events, 2 * H)


@given(
    due=st.integers(min_value=-1, max_value=2**50),
    closed=st.lists(st.tuples(st.integers(0, 2**50), st.lists(st.integers(0, 99), min_size=10, max_size=10))),
    ids=st.lists(st.text(), max_size=4),
)
def test_a_group_state_on_disk_is_indexed_by_its_due_time_and_closed_ends(
    due: int, closed: list[tuple[int, list[int]]], ids: list[str]
) -> None:
    """journey_index reads ``t`` and ``k`` from the value's tail, whatever the answers' event ids hold (quotes,
    ``,"t":`` itself): the same entries as from the whole value decoded."""
    value = {"a": [[1, event_id, "CSAT", 4] for event_id in [*ids, ',"t":5}']], "e": [], "o": 3, "t": due}
    value["k"] = [[end, *counts] for end, counts in closed]
    raw_key = json.dumps("2|billing|cust-1").encode()
    entries = journey_index(raw_key, encode_value(value))
    expected = [(index_entry(b"t:", due, raw_key), b"")] if due > 0 else []
    expected += [
        (index_entry(b"k:", end, raw_key), json.dumps(counts).replace(" ", "").encode()) for end, counts in closed
    ]
    assert entries == expected


@given(
    st.sampled_from(["NPS", "CES", "CSAT", "NLS", "CAS"]),
    st.integers(0, 10),
    st.sampled_from([(0, 10), (1, 7), (1, 5)]),
    st.one_of(st.none(), st.just("i-1")),
    st.one_of(st.none(), st.just("bot")),
    st.booleans(),
)
def test_an_instance_of_one_answer_is_the_general_rule_of_one(
    metric: str, score: int, scale: tuple[int, int], interaction: str | None, touchpoint: str | None, closed: bool
) -> None:
    """instance_of's shortcut for a single answer (most instances) gives what the general rule gives."""
    from streams.core.journeys import Answer, _instance, instance_of

    lo, hi = scale
    answer = Answer(1_000, "e-1", interaction, "chat", touchpoint, metric, lo + score % (hi - lo + 1), lo, hi)
    assert instance_of(("c-1", "billing"), [answer], closed) == _instance(("c-1", "billing"), [answer], closed)


@settings(max_examples=1000)
@example("NPS", 10, (0, 10), None, "bot", 0, G + 1, 5)  # each counter of a closed instance, as generated ones are rare
@example("NPS", 7, (0, 10), None, None, 0, G + 1, 5)
@example("NPS", 3, (0, 10), "i-1", None, 0, 2 * G, 5)
@example("CES", 1, (1, 7), None, "bot", 0, G + 1, 5)
@given(
    st.sampled_from(["NPS", "CES", "CSAT", "NLS", "CAS"]),
    st.integers(0, 10),
    st.sampled_from([(0, 10), (1, 7), (1, 5)]),
    st.one_of(st.none(), st.just("i-1")),
    st.one_of(st.none(), st.just("bot")),
    st.integers(0, 10 * G),
    st.sampled_from([0, G - 1, G, G + 1]) | st.integers(0, 2 * G),  # the clock at end + G and around it
    st.integers(-1, 2**40),
)
def test_a_new_groups_first_answer_is_the_general_step_of_one(
    metric: str,
    score: int,
    scale: tuple[int, int],
    interaction: str | None,
    touchpoint: str | None,
    occurred: int,
    age: int,
    offset: int,
) -> None:
    """first_answer (the journey agent's shortcut for a group without state and one answer: most groups of a live
    stream) writes the table value and the revision the general step writes: the instances, revise at the clock,
    the closed instances' counters, the state's table value and the revision's row; closed or open (the clock
    around end + G)."""
    from streams.core.journey_state import first_answer
    from streams.core.journeys import Answer, add_answers, instance_row

    lo, hi = scale
    answer = Answer(occurred, "e-1", interaction, "chat", touchpoint, metric, lo + score % (hi - lo + 1), lo, hi)
    group, now, retention = ("c-1", "billing"), occurred + age, 7 * G
    answers: list[Answer] = []
    add_answers(answers, [answer])
    instances = instances_of(group, answers, G, now)
    revisions, emitted = revise(group, GroupState.from_table(None).emitted, instances, now)
    general = GroupState(answers, emitted, offset, closed_counts(instances))
    value, row = first_answer(group, answer, G, retention, now, offset)
    assert (value, [row]) == (general.to_table(G, retention), [instance_row(r) for r in revisions])
    assert GroupState.from_table(value) == general  # read back as the general step's state


def test_instance_rows_are_the_records_fields_in_the_schemas_order() -> None:
    """instance_row (what the journeys process encodes) follows schemas/journey_instance.avsc, and
    instance_record is the same values by name."""
    from schemas.codec import JOURNEY_INSTANCE_FIELDS
    from streams.core.journeys import INSTANCE_FIELDS, Revision, instance_record, instance_row

    assert INSTANCE_FIELDS == JOURNEY_INSTANCE_FIELDS
    from streams.core.journeys import Answer

    answers = [Answer(1_000 * i, f"e-{i}", None, "chat", None, "CES", 1 + 3 * i, 1, 7) for i in range(3)]
    (instance,) = instances_of(("c-1", "billing"), answers, G, 0)
    assert instance.recoverable
    row = instance_row(Revision(instance, 4, True))
    assert instance_record(Revision(instance, 4, True)) == dict(zip(INSTANCE_FIELDS, row, strict=True))
    assert row[INSTANCE_FIELDS.index("recoverable")] == instance.recoverable
    assert row[-2:] == (4, True) and row[:3] == ("c-1", "billing", instance.start)


def test_table_keys_are_json_dumps_bytes_for_every_character() -> None:
    """raw_key (orjson for ASCII keys) writes the bytes json.dumps writes, which every copy and changelog holds:
    each ASCII character, DEL, and characters beyond ASCII."""
    from streams.agents.stores import raw_key

    for key in [f"0|j|{chr(c)}x" for c in range(128)] + ["0|é|ü", "0|j|\u2028", "0|j|😀", 'a"b\\c']:
        assert raw_key(key) == json.dumps(key).encode(), repr(key)
