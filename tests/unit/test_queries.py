"""The root-cause decomposition and the answers framing, pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.commands.queries import decompose
from streams.core.aggregate import State, kpi, merge
from streams.worker.records import decode_answers, encode_answers

pytestmark = pytest.mark.unit


def nps_state(promoters: int, passives: int, detractors: int) -> State:
    n = promoters + passives + detractors
    return State(n, promoters, passives, detractors, 0, 0, 0, 0)


counts = st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)).filter(lambda c: sum(c) > 0)


@given(now=st.dictionaries(st.sampled_from("abcde"), counts, min_size=1),
       before=st.dictionaries(st.sampled_from("abcdef"), counts, min_size=1))  # fmt: skip
def test_the_terms_add_up_to_the_change(now: dict, before: dict) -> None:
    a = {k: nps_state(*v) for k, v in now.items()}
    b = {k: nps_state(*v) for k, v in before.items()}
    terms, k_now, k_before = decompose("NPS", a, b, "touchpoint")
    total_now, total_before = State(), State()
    for state in a.values():
        total_now = merge(total_now, state)
    for state in b.values():
        total_before = merge(total_before, state)
    assert k_now == kpi("NPS", total_now).value and k_before == kpi("NPS", total_before).value
    assert sum(t.contribution for t in terms) == pytest.approx(k_now - k_before, abs=1e-9)
    assert {t.name for t in terms} == set(a) | set(b)
    assert [abs(t.contribution) for t in terms] == sorted((abs(t.contribution) for t in terms), reverse=True)


def test_a_value_that_only_got_worse_carries_the_change() -> None:
    before = {"bot": nps_state(40, 40, 20), "agent": nps_state(40, 40, 20)}
    now = {"bot": nps_state(10, 20, 70), "agent": nps_state(40, 40, 20)}
    terms, k_now, k_before = decompose("NPS", now, before, "touchpoint")
    assert (k_now, k_before) == (-20.0, 20.0)
    assert terms[0].name == "bot" and terms[0].contribution == pytest.approx(-40.0)
    assert terms[1].contribution == pytest.approx(0.0)
    assert terms[0].interval is not None and terms[0].interval > 0


def test_nothing_before_gives_no_terms() -> None:
    terms, k_now, k_before = decompose("NPS", {"bot": nps_state(1, 0, 0)}, {}, "touchpoint")
    assert terms == [] and k_now == 100.0 and k_before is None


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_answers_framing_round_trips(values: list[bytes]) -> None:
    assert decode_answers(encode_answers(values)) == values


def test_a_broken_answers_frame_is_refused() -> None:
    data = encode_answers([b"abcdef"])
    with pytest.raises(ValueError, match="runs past the end"):
        decode_answers(data[:-1])
    with pytest.raises(ValueError, match="truncated length"):
        decode_answers(data + b"\x00")
