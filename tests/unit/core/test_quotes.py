"""What an effort alert quotes (streams/core/quotes.py, contract sections 7 and 9): the latest comments of
high-effort CES answers, by hand, and the same whatever the split of the answers."""

from __future__ import annotations

from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from streams.core.quotes import (
    QUOTE_CHARS,
    Quote,
    aggregate_quotes,
    latest,
    merge_quotes,
    quotable,
    quote_text,
    quotes_in,
)
from streams.core.validate import Feedback

P = 60_000


def answer(event_id: str, at: int, score: int, metric: str = "CES", commented: bool = True) -> Feedback:
    return Feedback(event_id, at, "s", "chat", "billing", metric, score, 1, 7, None, None, (),
                    themes=("(any)",) if commented else ())  # fmt: skip


def test_what_is_quoted_by_hand() -> None:
    assert quotable(answer("a", 0, 1)) and quotable(answer("a", 0, 3))  # 1-3 of 1-7: high effort
    assert not quotable(answer("a", 0, 4))  # the middle of the scale is not high effort
    assert not quotable(answer("a", 0, 1, metric="NPS")) and not quotable(answer("a", 0, 1, commented=False))
    found = aggregate_quotes(
        [
            (answer("a", 10, 1), "first"),
            (answer("b", 30, 2), "third"),
            (answer("c", 20, 1), "second"),
            (answer("d", 40, 1), "fourth"),
            (answer("e", 50, 6), "easy: not quoted"),
            (answer("f", P + 1, 1), "next pane"),
            (answer("g", 60, 1), None),  # no text kept (CXPULSE_COMMENTS=themes)
        ],
        P,
    )
    assert {key: [q.text for q in quotes] for key, quotes in found.items()} == {
        (0, "chat", "billing"): ["fourth", "third", "second"],
        (P, "chat", "billing"): ["next pane"],
    }
    assert [
        q.text for q in quotes_in({0: found[(0, "chat", "billing")], P: found[(P, "chat", "billing")]}, 0, 2 * P)
    ] == [
        "next pane",
        "fourth",
        "third",
    ]


def test_a_quote_is_one_line_and_not_too_long() -> None:
    assert quote_text("  the bot\n\tkept   looping ") == "the bot kept looping"
    long = quote_text("word " * 200)
    assert len(long) == QUOTE_CHARS and long.endswith("…")


quotes = st.lists(
    st.builds(Quote, st.integers(0, 50), st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["x", "y"])),
    max_size=12,
)


@given(quotes, st.lists(st.integers(0, 12), max_size=4))
def test_any_split_merged_in_any_order_keeps_the_same_quotes(found: list[Quote], cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(found)]
    parts = [latest(found[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert reduce(merge_quotes, parts, ()) == latest(found) == reduce(merge_quotes, reversed(parts), ())
    assert merge_quotes(latest(found), latest(found)) == latest(found)  # a part delivered twice changes nothing
