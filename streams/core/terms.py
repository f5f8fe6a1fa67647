"""The words of an effort spike (docs/contract.md sections 7 and 9, cxpulse's decision where the contract is silent):
the terms that customers use more in the comments of the spike than in those of its baseline, so that an incident
the taxonomy has no theme for still shows up in words.

- the spike's comments: the CES answers with a comment in the alert's short window (the 5 minutes that end with
  the pane that fired); the baseline's: those of the baseline window (24 h ending 30 min before the pane; where it
  would reach into the short window, it ends where that starts), the latest BASELINE_CAP of them (by occurred_at,
  then event id).  All of them, not only the high-effort ones: those who struggle complain before a spike too,
  and the spike's own complaint stands out more against everything customers wrote (on the simulator's bot
  incident of tests/integration/test_alerting.py, the high-effort comments alone, 36 in the spike against 65,
  named no word);
- a comment's words: its tokens (section 9: redacted, placeholders out, NFKD, marks out, case-folded), without
  Dutch and English stop words, without tokens of one character or of digits only; a word counts once per
  comment (document frequency), and every comment counts in its side's total, words or not;
- a word is over-represented when its share of the spike's comments is above its share of the baseline's and
  Dunning's log-likelihood ratio G2 of the 2 x 2 table (comments with / without it, spike / baseline) is at
  least G2_MIN (10.83: p < 0.001 for one degree of freedom), in at least MIN_COUNT of the spike's comments;
  the TOP with the largest G2 are named (ties: the word), each with its two counts.

No baseline comment: nothing to compare with, no terms.  The one implementation, used by the stream's detector (over
the store's answers, sinks/effort_terms.py) and by ``cxpulse replay --alerts`` (over the file's).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from streams.core.comments import tokens
from streams.core.effort import EffortConfig

TOP = 5
MIN_COUNT = 3
G2_MIN = 10.83
BASELINE_CAP = 20_000

# case-folded, without diacritics (as tokens are); words that say nothing about what went wrong
STOP_WORDS = frozenset(
    """
    aan al alle alleen alles als altijd ander andere ben bent bij daar dan dat de deze die dit doe doen door dus
    een eens en er erg geen gehad geweest had hadden heb hebben hebt heeft heel hem het hier hij hoe hun ik in is
    je jij jou jullie kan kon konden kunnen maar me mee meer men met mij mijn moest moet moeten na naar niet niets
    nog nu of om omdat onder ons onze ook op over te tegen toch toe tot u uit uw van veel voor want waren was wat
    we wel werd wie wij wil wilde worden wordt zal ze zei zelf zich zij zijn zo zoals zou zouden zonder zeer even
    keer weer iets iemand gewoon echt dus daarna toen waar waarom waren hebt ging gaat gaan gedaan deed
    a about after again all also am an and any are as at be because been before being but by can cant could
    couldn did didn do does doesn don dont done for from get got had has have he her here him his how i im if
    in into is isn it its ive just me more most my no not of off on one only or other our out over really she so
    some still such than that the their them then there these they this those to too up us very was wasn we
    were what when where which who why will with won would you your yours ll re ve
    """.split()
)


class Term(NamedTuple):
    """A word over-represented in a spike's comments: in how many of them, in how many of the baseline's, and G2."""

    term: str
    spike: int
    baseline: int
    g2: float


def comment_words(comment: str) -> frozenset[str]:
    """The words of a comment as kept (redacted) that may name what went wrong."""
    return frozenset(t for t in tokens(comment) if len(t) > 1 and not t.isdigit() and t not in STOP_WORDS)


def g2(a: int, n_a: int, b: int, n_b: int) -> float:
    """Dunning's log-likelihood ratio G2 = 2 sum O ln(O / E) over the 2 x 2 table of ``a`` of ``n_a`` against ``b``
    of ``n_b`` (a cell that is 0 adds nothing)."""
    total, used = n_a + n_b, a + b
    out = 0.0
    for observed, row, column in ((a, n_a, used), (n_a - a, n_a, total - used), (b, n_b, used),
                                  (n_b - b, n_b, total - used)):  # fmt: skip
        if observed > 0:
            out += observed * math.log(observed * total / (row * column))
    return 2.0 * out


def over_represented(spike: Iterable[str], baseline: Iterable[str]) -> tuple[Term, ...]:
    """The terms of the spike's comments against the baseline's (each a comment as kept), the largest G2 first."""
    spike_counts, n_spike = _document_counts(spike)
    base_counts, n_base = _document_counts(baseline)
    if not n_spike or not n_base:
        return ()
    found = []
    for word, a in spike_counts.items():
        b = base_counts.get(word, 0)
        if a < MIN_COUNT or a * n_base <= b * n_spike:
            continue
        score = g2(a, n_spike, b, n_base)
        if score >= G2_MIN:
            found.append(Term(word, a, b, round(score, 3)))
    found.sort(key=lambda term: (-term.g2, term.term))
    return tuple(found[:TOP])


Said = tuple[int, str, str]  # a CES answer's comment as kept: (occurred_at, event id, comment)


def windows(config: EffortConfig, pane: int, pane_ms: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The spike's and the baseline's [start, end) in event time, for the pane that fired (section 7's windows; a
    baseline that reaches into the short window, as with a guard shorter than it, ends where the spike starts)."""
    end = pane + pane_ms
    start, base_end = end - config.short_ms, pane - config.guard_ms
    return (start, end), (base_end - config.baseline_ms, min(base_end, start))


def spike_terms(said: Iterable[Said], config: EffortConfig, pane: int, pane_ms: int) -> tuple[Term, ...]:
    """The terms of the alert fired by ``pane``, from a segment's CES comments (replay: all of them)."""
    (start, end), (base_start, base_end) = windows(config, pane, pane_ms)
    spike, baseline = [], []
    for found in said:
        if start <= found[0] < end:
            spike.append(found[2])
        if base_start <= found[0] < base_end:
            baseline.append(found)
    return over_represented(spike, latest_baseline(baseline))


def latest_baseline(comments: Sequence[Said]) -> list[str]:
    """The baseline's comments read: the latest BASELINE_CAP (by occurred_at, then event id)."""
    return [text for _, _, text in sorted(comments, reverse=True)[:BASELINE_CAP]]


def _document_counts(comments: Iterable[str]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    n = 0
    for comment in comments:
        n += 1
        counts.update(comment_words(comment))
    return counts, n
