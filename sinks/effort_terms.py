"""The words of a firing effort spike in the stream (streams/core/terms.py), read from the store.

The detector's panes carry counts, drivers and three quotes, not every word of every comment (a pane state is
rewritten per batch; at a busy segment thousands of CES comments fall in one pane), so the words are read where the
comments are kept anyway: ClickHouse's ``cxpulse.answers``.  When an alert fires, the detector asks for them; this
waits until the store holds the short window's CES answers (the sink lags the stream by a batch or more), at most
WAIT_SECONDS, then reads the spike's and the baseline's CES comments and counts their words with the same
code as replay.  A store that is behind at the deadline gives the words of what it holds (the log line says how
many answers of how many); a store that does not answer is asked again until the deadline, then the alert goes on
without words (one log line).  Every read is bounded (QUERY_SECONDS) and runs in a thread, never on the event loop.

No words without a store (``CXPULSE_CLICKHOUSE_URL`` empty) or without kept text (``CXPULSE_COMMENTS=themes`` or
``off``).  The embedded store is read through the query endpoint of the process that holds it, never opened here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from sinks import clickhouse as store
from sinks.store_access import ClientReader, EndpointReader, Reader
from streams.config import Settings
from streams.core.effort import EffortConfig
from streams.core.terms import BASELINE_CAP, Term, over_represented, windows

LOG = logging.getLogger("cxpulse.alerts")
WAIT_SECONDS = 120.0  # how long the words of a spike may wait for the store to hold its answers
CHECK_SECONDS = 2.0  # between two looks at the store
QUERY_SECONDS = 20.0  # one read at most

_SEGMENT = (
    "FROM cxpulse.answers FINAL WHERE metric = 'CES' AND channel = {channel:String} AND journey = {journey:String} "
)
_BETWEEN = (
    "AND occurred_at >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
    "AND occurred_at < fromUnixTimestamp64Milli({end:Int64}, 'UTC')"
)
COUNT_SQL = "SELECT count() " + _SEGMENT + _BETWEEN
COMMENTS_SQL = (
    "SELECT toUnixTimestamp64Milli(occurred_at), event_id, comment "
    + _SEGMENT
    + "AND commented = 1 AND comment != '' "
    + _BETWEEN
    + " ORDER BY occurred_at DESC, event_id DESC LIMIT {limit:UInt32}"
)


class Ask(NamedTuple):
    """The words an alert that fired wants: its segment, the pane that fired, the short window's CES answers."""

    channel: str
    journey: str
    pane: int
    n_short: int
    asked: float  # time.monotonic() when it fired


Spike = tuple[str, str, int]  # channel, journey, the pane that fired


class Found(NamedTuple):
    """The words of one spike, and what they were counted from."""

    terms: tuple[Term, ...]
    stored: int  # CES answers of the short window in the store
    spike: int  # comments of the spike read
    baseline: int  # comments of the baseline read


def open_store(settings: Settings) -> Reader | None:
    """A reader of the store the sink writes; None while the embedded store's holder serves no endpoint yet."""
    if store.chdb_path(settings.clickhouse_url) is not None:
        endpoint = store.endpoint_of(settings.data_dir)
        return EndpointReader(endpoint, timeout=QUERY_SECONDS) if endpoint is not None else None
    return ClientReader(store.connect(settings, QUERY_SECONDS), settings.clickhouse_url)


def read_terms(reader: Reader, ask: Ask, config: EffortConfig, pane_ms: int, force: bool) -> Found | None:
    """The words of ``ask``'s spike from the store; None while it holds fewer of the short window's CES answers than
    the detector counted (unless ``force``: the deadline has passed)."""
    (start, end), (base_start, base_end) = windows(config, ask.pane, pane_ms)
    segment = {"channel": ask.channel, "journey": ask.journey}
    stored = int(reader.rows(COUNT_SQL, {**segment, "start": start, "end": end})[0][0])
    if stored < ask.n_short and not force:
        return None
    spike = _comments(reader.rows(COMMENTS_SQL, {**segment, "start": start, "end": end, "limit": 1_000_000}))
    baseline = _comments(
        reader.rows(COMMENTS_SQL, {**segment, "start": base_start, "end": base_end, "limit": BASELINE_CAP})
    )
    return Found(over_represented(spike, baseline), stored, len(spike), len(baseline))


def _comments(rows: Sequence[Sequence[Any]]) -> list[str]:
    return [str(row[2]) for row in rows]


class TermsFinder:
    """The spikes waiting for their words, one read at a time in a thread; ``step`` is called from the detector's
    tick and returns the words found since the last call."""

    def __init__(self, settings: Settings, config: EffortConfig, pane_ms: int) -> None:
        self.settings = settings
        self.config = config
        self.pane_ms = pane_ms
        self.enabled = bool(settings.clickhouse_url) and settings.comments == "redacted"
        # by (channel, journey, the pane that fired): a spike's words are read even once it resolved (a backlog's
        # alert can fire and resolve within one tick), for the log
        self.waiting: dict[Spike, Ask] = {}
        self.next_look: dict[Spike, float] = {}
        self.failed: dict[Spike, str] = {}  # the last error of a spike's reads
        self.reading: tuple[Spike, asyncio.Task[Found | None]] | None = None

    def ask(self, ask: Ask) -> None:
        spike = (ask.channel, ask.journey, ask.pane)
        if self.enabled and spike not in self.waiting:
            self.waiting[spike] = ask
            self.next_look[spike] = ask.asked

    def asked(self, channel: str, journey: str) -> list[Ask]:
        """The segment's spikes whose words are not read yet."""
        return [ask for ask in self.waiting.values() if (ask.channel, ask.journey) == (channel, journey)]

    def forget(self, spike: Spike) -> None:
        self.waiting.pop(spike, None)
        self.next_look.pop(spike, None)
        self.failed.pop(spike, None)

    def step(self, now: float | None = None) -> list[tuple[Ask, Found]]:
        """Collect a read that finished, start the next one that is due; the words found."""
        now = time.monotonic() if now is None else now
        out: list[tuple[Ask, Found]] = []
        if self.reading is not None:
            spike, task = self.reading
            if not task.done():
                return out
            self.reading = None
            ask = self.waiting.get(spike)
            if ask is not None:
                found = self._outcome(ask, task, now)
                if found is not None:
                    self.forget(spike)
                    out.append((ask, found))
        due = [spike for spike, at in self.next_look.items() if at <= now]
        if due:
            spike = min(due, key=lambda s: self.next_look[s])
            ask = self.waiting[spike]
            force = now - ask.asked >= WAIT_SECONDS
            self.next_look[spike] = now + CHECK_SECONDS
            self.reading = (spike, asyncio.ensure_future(asyncio.to_thread(self._read, ask, force)))
        return out

    def _read(self, ask: Ask, force: bool) -> Found | None:
        reader = open_store(self.settings)
        if reader is None:
            raise store.StoreError("the process that holds the embedded store serves no query endpoint yet")
        return read_terms(reader, ask, self.config, self.pane_ms, force)

    def _outcome(self, ask: Ask, task: asyncio.Task[Found | None], now: float) -> Found | None:
        spike = (ask.channel, ask.journey, ask.pane)
        late = now - ask.asked >= WAIT_SECONDS + QUERY_SECONDS  # a forced read was tried, or could not be
        try:
            found = task.result()
        except Exception as exc:  # noqa: BLE001 - a store that does not answer: asked again until the deadline
            if spike not in self.failed:
                LOG.warning("effort spike words %s / %s: the store did not answer yet: %s", ask.channel,
                            ask.journey, exc)  # fmt: skip
            self.failed[spike] = str(exc)
            if late:
                LOG.warning("effort spike words %s / %s: none (the store did not answer for %.0f s)", ask.channel,
                            ask.journey, now - ask.asked)  # fmt: skip
                self.forget(spike)
            return None
        if found is None and late:  # cannot happen after a forced read; a guard against waiting forever
            self.forget(spike)
        return found
