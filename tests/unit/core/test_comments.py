"""docs/contract.md section 9 by hand-worked examples: each redaction rule and their order, the words of a comment,
prefix and phrase patterns, "(any)", the taxonomy's refusals; and by Hypothesis: redaction never leaves an e-mail
address or a run of six digits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.comments import (
    ANY,
    PLACEHOLDERS,
    REDACTIONS,
    Comment,
    TaxonomyError,
    ThemeMatcher,
    fold,
    pattern_words,
    read_comment,
    redact,
    taxonomy,
    tokens,
    with_comments,
)
from tests.support import fb

EMAIL, _, SIX_DIGITS = (pattern for pattern, _ in REDACTIONS)


@pytest.mark.parametrize(
    ("comment", "redacted"),
    [
        ("mail me: jan.de-vries@example.co.uk!", "mail me: [email]"),
        ("Anna@Mail.NL", "[email]"),
        ("not an address: a@b", "not an address: a@b"),
        ("IBAN NL91ABNA0417164300 please", "IBAN [iban] please"),  # ungrouped
        ("iban nl91 abna 0417 1643 00.", "iban [iban]."),  # grouped by four, a short last group
        ("DE89 3704 0044 0532 0130 00", "[iban]"),
        ("call +31 6 1234 5678 or 020-123 4567", "call [number] or [number]"),
        ("order 123456", "order [number]"),
        ("order 12345", "order 12345"),  # five digits stay
        ("1.2.3.4.5.6", "[number]"),  # single separators between digits
        ("12  34 56", "12  34 56"),  # a double space breaks the run
        ("(06) 12345678", "(06) [number]"),  # ") " is two separators: the area code is a run of its own
        ("jan123456@example.nl", "[email]"),  # e-mail first: its digits go with it
        ("[email] [number] [iban]", "[email] [number] [iban]"),  # placeholders are never redacted again
        ("x@0.0@0.0", "[email]@0.0"),  # one pass: the rest after an address is not read again
        ("a@b.c@d.e", "[email]@d.e"),
    ],
)
def test_redaction_by_hand(comment: str, redacted: str) -> None:
    assert redact(comment) == redacted


def test_the_rules_apply_in_order_each_to_the_result_of_the_one_before() -> None:
    # an IBAN's digits would be a [number] too; the IBAN rule comes first and takes the whole account
    assert redact("NL91ABNA0417164300") == "[iban]"
    # a run of digits glued to an address: the address goes first, the digits after it are a run of their own
    assert redact("x@y.nl 1234567") == "[email] [number]"


@given(st.text(alphabet=st.sampled_from("ab1234567890 .-@()+x\n"), max_size=80))
def test_redaction_never_leaves_an_email_address_or_six_digits(text: str) -> None:
    """No address is left in what the customer wrote: every match of the e-mail rule in the output takes a
    placeholder in (one pass, as the contract says: `x@0.0@0.0` is `[email]@0.0`, never redacted again)."""
    out = redact(text)
    assert not EMAIL.search(PLACEHOLDERS.sub(" ", out)), out
    assert not SIX_DIGITS.search(out), out
    assert not re.search(r"\d{6}", out)


@pytest.mark.parametrize(
    ("comment", "words"),
    [
        ("Geïrriteerd, ÉCHT!", ["geirriteerd", "echt"]),  # accents off, case-folded
        ("Straße", ["strasse"]),  # case-folding, not lower-casing
        ("on-hold/on_hold", ["on", "hold", "on", "hold"]),  # _ is not a letter
        ("mail [email] now", ["mail", "now"]),  # placeholders are not the customer's words
        ("20 min.", ["20", "min"]),
        ("!!! ...", []),
    ],
)
def test_the_words_of_a_comment(comment: str, words: list[str]) -> None:
    assert tokens(comment) == words


@given(st.text(alphabet=st.characters(max_codepoint=0x24F), max_size=80))
def test_the_byte_table_for_ascii_cuts_the_tokens_the_contracts_regex_does(text: str) -> None:
    """tokens() cuts folded ASCII text with a byte table, the rest with the regex of section 9: the same tokens
    either way (Latin letters with and without diacritics, digits, punctuation, _ and control characters)."""
    folded = fold(text if "[" not in text else text.replace("[", " "))
    assert tokens(text.replace("[", " ")) == re.findall(r"[^\W_]+", folded)


def matcher(**themes: list[str]) -> ThemeMatcher:
    return ThemeMatcher(taxonomy({"themes": themes}, "test"))


def test_a_prefix_word_matches_every_word_it_starts_and_a_plain_word_only_itself() -> None:
    m = matcher(transfers=["transfer*"], bot=["bot"])
    assert m.themes(["transferred"]) == {"transfers"} and m.themes(["transfer"]) == {"transfers"}
    assert m.themes(["bots"]) == frozenset() and m.themes(["bot"]) == {"bot"}


def test_a_pattern_of_several_words_matches_them_in_a_row() -> None:
    m = matcher(waiting=["on hold", "in de wacht*"])
    assert m.themes(tokens("I was put on-hold")) == {"waiting"}  # on-hold: two words, as in the pattern
    assert m.themes(tokens("hold on")) == frozenset()  # not in that order
    assert m.themes(tokens("on the hold")) == frozenset()  # not in a row
    assert m.themes(tokens("lang in de wachtrij")) == {"waiting"}  # the last word a prefix
    assert m.themes(tokens("on")) == frozenset()  # the comment ends before the pattern


def test_one_comment_mentions_several_themes_and_patterns_share_words() -> None:
    m = matcher(waiting=["wait*"], callbacks=["wait* for a call*"], price=["price*"])
    assert m.themes(tokens("Waiting for a callback, no word on prices")) == {"waiting", "callbacks", "price"}


def test_any_holds_every_answer_with_a_word_and_modes_keep_what_they_say() -> None:
    m = matcher(waiting=["wait*"])
    assert read_comment("waited, mail a@b.nl", m, "redacted") == Comment("waited, mail [email]", (ANY, "waiting"))
    assert read_comment("no theme here", m, "redacted") == Comment("no theme here", (ANY,))
    assert read_comment("waited", m, "themes") == Comment(None, (ANY, "waiting"))
    assert read_comment("waited", m, "off") == Comment(None, ())
    assert read_comment("[email] !!", m, "redacted") == Comment("[email] !!", ())  # no word: no comment
    assert read_comment("", m, "redacted") == Comment(None, ())
    assert read_comment("waited", None, "redacted") == Comment("waited", (ANY,))  # no taxonomy: (any) only


def test_a_batch_gets_its_themes_and_says_which_records_changed() -> None:
    m = matcher(waiting=["wait*"])
    records = [{"comment": "waited, call 0612345678"}, {"comment": "fine"}, {}]
    events = [fb("NPS", 5, 0, 10, event_id=str(i)) for i in range(3)]
    out, changed = with_comments(events, records, m, "redacted")
    assert [e.themes for e in out] == [(ANY, "waiting"), (ANY,), ()]
    assert changed == [0] and records[0]["comment"] == "waited, call [number]" and records[1]["comment"] == "fine"
    _, dropped = with_comments(events, [{"comment": "fine"}], m, "themes")
    assert dropped == [0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "expected 'themes:'"),
        ({"themes": {}}, "expected 'themes:'"),
        ({"themes": {"a b c": ["x"], "A  b c": ["y"]}}, "theme 'A  b c': given twice"),
        ({"themes": {"(any)": ["x"]}}, "theme '(any)': not a label"),
        ({"themes": {"waiting": "wait*"}}, "theme 'waiting': expected a list of patterns"),
        ({"themes": {"waiting": ["wait*", "*hold"]}}, "theme 'waiting', pattern '*hold': a * must end a word"),
        ({"themes": {"waiting": ["wa*it"]}}, "theme 'waiting', pattern 'wa*it': a * must end a word"),
        ({"themes": {"waiting": ["..."]}}, "theme 'waiting', pattern '...': it has no word"),
        ({"themes": {"waiting": [3]}}, "theme 'waiting', pattern 3: not text"),
        ({"themes": {f"t{i}": ["x"] for i in range(65)}}, "65 themes, at most 64"),
    ],
)
def test_a_taxonomy_is_refused_in_one_line_naming_file_theme_and_pattern(raw: object, message: str) -> None:
    with pytest.raises(TaxonomyError) as caught:
        taxonomy(raw, "themes file /etc/cx/themes.yaml")
    text = str(caught.value)
    assert text.startswith("themes file /etc/cx/themes.yaml: ") and message in text and "\n" not in text


def test_pattern_words_are_normalised_as_comments_are() -> None:
    assert [(w.text, w.prefix) for w in pattern_words("Geïnformeerd on-Hold*")] == [
        ("geinformeerd", False),
        ("on", False),
        ("hold", True),
    ]
    assert taxonomy({"themes": {"Bot Service": ["bot"]}}, "f").themes.keys() == {"bot_service"}


def test_with_comments_sets_only_the_themes_of_an_answer() -> None:
    """with_comments builds the answer anew with its themes as the last field: every other field stays."""
    from streams.core.comments import with_comments
    from streams.core.validate import Feedback

    event = Feedback("e", 1, "s", "chat", "billing", "CES", 2, 1, 7, "bot", "c1", ("hold_time",), "i1")
    found, changed = with_comments([event], [{"comment": "the bot, mail a@b.nl"}], None, "redacted")
    assert Feedback._fields[-1] == "themes" and found[0] == event._replace(themes=("(any)",)) and changed == [0]
