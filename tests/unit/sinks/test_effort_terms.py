"""The detector's reads of a spike's words from the store (sinks/effort_terms.py): it waits until the store holds
the short window's CES answers, reads once it does (or at the deadline, from what it holds), retries a store that
does not answer until the deadline, and forgets nothing a resolved alert still wants for its log line."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sinks import effort_terms
from sinks.effort_terms import WAIT_SECONDS, Ask, Found, TermsFinder
from streams.config import Settings
from streams.core.effort import EffortConfig
from streams.core.terms import Term


class Store:
    """A store that holds ``stored`` of the spike's CES answers, or raises ``failing``."""

    def __init__(self) -> None:
        self.stored = 0
        self.failing: Exception | None = None
        self.reads: list[bool] = []  # force, per read

    def read(self, reader: Any, ask: Ask, config: EffortConfig, pane_ms: int, force: bool) -> Found | None:
        self.reads.append(force)
        if self.failing is not None:
            raise self.failing
        if self.stored < ask.n_short and not force:
            return None
        return Found((Term("chatbot", 9, 1, 20.5),), self.stored, 12, 40)


def steps(finder: TermsFinder, at: list[float]) -> list[tuple[Ask, Found]]:
    """A step at each of the times ``at``, the reads it starts run to their end before the next."""

    async def run() -> list[tuple[Ask, Found]]:
        out = []
        for now in at:
            out.extend(finder.step(now))
            if finder.reading is not None:
                await asyncio.wait([finder.reading[1]])
        return out

    return asyncio.run(run())


@pytest.fixture()
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    fake = Store()
    monkeypatch.setattr(effort_terms, "open_store", lambda settings: object())
    monkeypatch.setattr(effort_terms, "read_terms", fake.read)
    return fake


def finder(**settings: Any) -> TermsFinder:
    return TermsFinder(Settings(clickhouse_url="chdb://x", **settings), EffortConfig(), 60_000)


def test_the_words_wait_for_the_store_to_hold_the_spike(store: Store) -> None:
    words = finder()
    words.ask(Ask("chat", "billing", 600_000, 50, 100.0))
    assert steps(words, [100.0, 101.0, 102.5]) == []  # read at 100 and 102.5 (every 2 s): 0 of 50 stored
    store.stored = 50
    found = steps(words, [104.6, 104.7])
    assert [(ask.channel, f.terms[0].term, f.stored) for ask, f in found] == [("chat", "chatbot", 50)]
    assert store.reads == [False, False, False] and not words.waiting  # read, then forgotten


def test_a_store_that_stays_behind_gives_its_words_at_the_deadline(store: Store) -> None:
    words = finder()
    words.ask(Ask("chat", "billing", 600_000, 50, 100.0))
    store.stored = 30
    assert steps(words, [100.0]) == []
    found = steps(words, [100.0 + WAIT_SECONDS, 100.1 + WAIT_SECONDS])
    assert store.reads == [False, True] and [f.stored for _, f in found] == [30]


def test_a_store_that_does_not_answer_is_asked_again_then_given_up(store: Store, caplog: Any) -> None:
    words = finder()
    words.ask(Ask("chat", "billing", 600_000, 50, 100.0))
    store.failing = OSError("connection refused")
    times = [100.0 + 2.5 * i for i in range(70)]  # past the deadline and a read's bound
    assert steps(words, times) == []
    assert not words.waiting and len(store.reads) > 40
    said = [r.getMessage() for r in caplog.records if "effort spike words" in r.getMessage()]
    assert len(said) == 2 and "did not answer yet" in said[0] and said[1].startswith("effort spike words chat")


def test_no_words_without_a_store_or_without_kept_text(store: Store) -> None:
    for settings in ({"clickhouse_url": ""}, {"comments": "themes"}):
        words = TermsFinder(Settings(**{"clickhouse_url": "chdb://x", **settings}), EffortConfig(), 60_000)
        words.ask(Ask("chat", "billing", 600_000, 50, 100.0))
        assert not words.waiting and steps(words, [100.0, 200.0]) == []
    assert store.reads == []
