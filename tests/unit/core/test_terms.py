"""The words of an effort spike (streams/core/terms.py): a comment's words, G2 by hand, the threshold and the minimum
count, the windows (a baseline that reaches into the short window), the cap on the baseline read."""

from __future__ import annotations

import math

import pytest

from streams.core import terms
from streams.core.effort import EffortConfig
from streams.core.terms import Term, comment_words, g2, over_represented, spike_terms, windows


def test_a_comments_words_leave_out_stop_words_digits_single_letters_and_placeholders() -> None:
    said = "Ik heb 3x gebeld, maar de chatbót begreep me NIET! Bel 2024 of mail [email] ([number]) a"
    assert comment_words(said) == {"3x", "gebeld", "chatbot", "begreep", "bel", "mail"}
    assert comment_words("The bot didn't get what I wanted and I've been on hold") == {"bot", "wanted", "hold"}
    assert comment_words("") == frozenset() and comment_words("[email] 123456") == frozenset()


def test_g2_by_hand() -> None:
    # 6 of 10 spike comments against 2 of 40: expected cells 1.6, 8.4, 6.4, 33.6
    by_hand = 2 * (6 * math.log(6 / 1.6) + 4 * math.log(4 / 8.4) + 2 * math.log(2 / 6.4) + 38 * math.log(38 / 33.6))
    assert g2(6, 10, 2, 40) == pytest.approx(by_hand) == pytest.approx(14.6255, abs=1e-4)
    assert g2(3, 10, 12, 40) == pytest.approx(0.0)  # the same share: no evidence
    assert g2(3, 10, 0, 40) == pytest.approx(10.4795, abs=1e-4)  # a cell of 0 adds nothing


def test_a_word_is_named_when_its_rise_is_significant_and_frequent_enough() -> None:
    spike = ["chatbot begreep het niet"] * 6 + ["lang wachten"] * 3 + ["nieuw woord"] * 2 + ["prima"]
    spike = spike[:10]  # 6 chatbot, 3 wachten, 1 nieuw
    baseline = ["chatbot ok"] * 2 + ["lang wachten"] * 12 + ["goed geholpen"] * 26
    found = over_represented(spike, baseline)
    # chatbot: 6/10 against 2/40, G2 14.63; wachten and lang: 3/10 against 12/40, the same share: not named;
    # begreep: 6/10 against 0/40; nieuw: 1 comment, below the minimum count
    begreep = round(g2(6, 10, 0, 40), 3)
    assert found == (Term("begreep", 6, 0, begreep), Term("chatbot", 6, 2, 14.626))
    assert begreep > 14.626


def test_three_comments_are_not_enough_when_the_table_is_small() -> None:
    spike = ["storing app"] * 3 + ["prima"] * 7
    baseline = ["prima"] * 40
    assert g2(3, 10, 0, 40) < terms.G2_MIN
    assert over_represented(spike, baseline) == ()
    assert over_represented(spike * 2, baseline) == (
        Term("app", 6, 0, round(g2(6, 20, 0, 40), 3)),
        Term("storing", 6, 0, round(g2(6, 20, 0, 40), 3)),
    )  # ties: by the word


def test_no_baseline_comment_no_terms() -> None:
    assert over_represented(["chatbot kapot"] * 20, []) == ()
    assert over_represented([], ["chatbot kapot"] * 20) == ()


def test_at_most_top_words_largest_g2_first() -> None:
    spike = [f"w{i} common" for i in range(8) for _ in range(10 + i)]
    baseline = ["common"] * 200
    found = over_represented(spike, baseline)
    assert [t.term for t in found] == ["w7", "w6", "w5", "w4", "w3"] and len(found) == terms.TOP


def test_the_windows_and_the_baseline_that_reaches_into_the_spike() -> None:
    config = EffortConfig(guard_ms=2_000, baseline_ms=20_000, short_ms=5_000)
    (start, end), (base_start, base_end) = windows(config, 100_000, 1_000)
    assert (start, end) == (96_000, 101_000)
    assert (base_start, base_end) == (78_000, 96_000)  # it would end at 98,000: inside the spike
    default = EffortConfig()
    assert windows(default, 10 * 3_600_000, 60_000) == (
        (10 * 3_600_000 - 240_000, 10 * 3_600_000 + 60_000),
        (10 * 3_600_000 - 1_800_000 - 86_400_000, 10 * 3_600_000 - 1_800_000),
    )


def test_spike_terms_reads_the_windows_and_the_latest_baseline_only(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EffortConfig(guard_ms=2_000, baseline_ms=20_000, short_ms=5_000)
    said = [(96_000 + i, f"s{i}", "chatbot kapot") for i in range(10)]
    said += [(101_000 + i, f"late{i}", "na de piek") for i in range(10)]  # after the pane: not read
    said += [(80_000 + i, f"b{i}", "wachten") for i in range(30)]
    said += [(70_000 + i, f"old{i}", "chatbot kapot") for i in range(30)]  # before the baseline
    found = spike_terms(said, config, 100_000, 1_000)
    assert [(t.term, t.spike, t.baseline) for t in found] == [("chatbot", 10, 0), ("kapot", 10, 0)]
    monkeypatch.setattr(terms, "BASELINE_CAP", 5)
    capped = spike_terms([*said, (79_000, "older", "chatbot")], config, 100_000, 1_000)
    assert capped[0].g2 == round(g2(10, 10, 0, 5), 3)  # the latest 5 of the baseline, not the one before
