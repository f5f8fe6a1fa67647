"""What customers say when effort spikes (docs/contract.md sections 7 and 9): the latest comments of high-effort CES
answers, kept per (pane, channel, journey) so that an effort alert can quote them.

A pane keeps the QUOTES_KEPT latest (by occurred_at, then event id) of its high-effort CES answers with a comment
(a word: the answer counts under "(any)"), each as kept (redacted; none under ``CXPULSE_COMMENTS=themes|off``),
white space collapsed and cut at QUOTE_CHARS.  "The latest k of a union" is the latest k of the parts' latest k, so
merging in any order and any split of the answers keeps the same quotes: the stream (hot path, merge, detector)
and replay quote the same comments.  An alert quotes the latest QUOTES_KEPT of its short window's panes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from streams.core.aggregate import contribution
from streams.core.comments import ANY
from streams.core.validate import Feedback

QUOTES_KEPT = 3
QUOTE_CHARS = 240  # a quote longer than this is cut, with "…"


class Quote(NamedTuple):
    """A comment of a high-effort CES answer, as kept."""

    occurred_at: int
    event_id: str
    text: str


Quotes = tuple[Quote, ...]  # the latest first


def quotable(event: Feedback) -> bool:
    """A high-effort CES answer with a comment: one whose comment an effort alert may quote."""
    return (
        event.metric == "CES"
        and ANY in event.themes
        and contribution("CES", event.score, event.scale_min, event.scale_max).high_effort == 1
    )


def quote_text(comment: str) -> str:
    """A comment as quoted: white space collapsed, at most QUOTE_CHARS characters."""
    text = " ".join(comment.split())
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1].rstrip() + "…"


def latest(quotes: Iterable[Quote], kept: int = QUOTES_KEPT) -> Quotes:
    """The ``kept`` latest quotes (by occurred_at, then event id, then text: a total order, so that any split
    keeps the same), the latest first; a quote twice counts once."""
    return tuple(sorted(set(quotes), reverse=True)[:kept])


def merge_quotes(a: Iterable[Quote], b: Iterable[Quote]) -> Quotes:
    """The quotes of the union of two sets of answers."""
    return latest([*a, *b])


def aggregate_quotes(
    answers: Iterable[tuple[Feedback, str | None]], pane_ms: int
) -> dict[tuple[int, str, str], Quotes]:
    """Per (pane, channel, journey): the latest quotes of ``answers`` ((answer, its comment as kept) pairs; the
    comment is only read for a :func:`quotable` answer, None when none is kept)."""
    found: dict[tuple[int, str, str], list[Quote]] = {}
    for event, comment in answers:
        if comment and quotable(event):
            pane = event.occurred_at - event.occurred_at % pane_ms
            found.setdefault((pane, event.channel, event.journey), []).append(
                Quote(event.occurred_at, event.event_id, quote_text(comment))
            )
    return {key: latest(quotes) for key, quotes in found.items()}


def quotes_in(panes: Mapping[int, Quotes], start: int, end: int) -> Quotes:
    """The latest quotes of the panes that start in [start, end)."""
    return latest(quote for pane, quotes in panes.items() if start <= pane < end for quote in quotes)
