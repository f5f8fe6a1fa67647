"""The merge step, pure: partial messages of one partials partition in, pane table values and WindowResults out.

Every (segment, pane) key of the ``panes`` table holds the counters absorbed so far and, per source partition,
the end offset of the last hot-path batch absorbed.  A batch's delta is absorbed only when its end is beyond
that, so a partial message that is delivered twice, or read back by the repair, never counts twice.

The ``positions`` table follows each source partition's chain of ranges in each partials partition: every
hot-path batch sends every partials partition a message whose ranges start where the previous batch of that
source partition ended.  A range that starts later than the last one followed means a message this partition
never handed to ``merge`` (Faust's consumer can skip messages, see streams.worker.repair): the caller reads
the partition back from the last message followed and applies what it missed first.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from streams.agents.keys import PaneKey, SourceKey
from streams.core.aggregate import merge, merge_drivers, merge_mentions
from streams.core.quotes import merge_quotes
from streams.core.windows import WindowResult, window_result
from streams.worker.records import (
    FROM_THE_START,
    PanePartial,
    PaneState,
    PartialBatch,
    Position,
    SourceRange,
    pane_state_from_table,
    pane_state_to_table,
    position_from_table,
    position_to_table,
)

LOG = logging.getLogger("cxpulse.merge")


class Link(enum.Enum):
    """How a source range relates to the chain followed so far."""

    NEXT = "next"  # starts where the last one ended (or is a partition's first range)
    REPEAT = "repeat"  # ends at or before the last one: delivered again
    GAP = "gap"  # starts after the last one ended: messages in between were not seen
    BREAK = "break"  # overlaps, or restarts from the start: the source's committed offsets went back


def follow(position: Position | None, source: SourceRange) -> Link:
    """Where ``source`` stands relative to the chain followed so far (None: nothing followed yet)."""
    if position is None:
        return Link.NEXT if source.start == FROM_THE_START else Link.GAP
    if source.end <= position.end:
        return Link.REPEAT
    if source.start == position.end:
        return Link.NEXT
    if source.start > position.end:
        return Link.GAP
    return Link.BREAK


def absorb(pane: PaneState, partial: PanePartial, end: int) -> bool:
    """Add a batch's delta for one source partition to a pane; False when that batch was absorbed before."""
    if pane.ends.get(partial.source, -1) >= end:
        return False
    pane.ends[partial.source] = end
    states = pane.states
    for metric, delta in partial.states.items():
        before = states.get(metric)
        states[metric] = delta if before is None else merge(before, delta)
    if partial.drivers:
        pane.drivers = merge_drivers(pane.drivers, partial.drivers)
    if partial.quotes:
        pane.quotes = merge_quotes(pane.quotes, partial.quotes)
    for metric, found in partial.mentions.items():
        pane.mentions[metric] = merge_mentions(pane.mentions.get(metric, {}), found)
    return True


def merged_results(
    channel: str, journey: str, pane_start: int, pane_ms: int, pane: PaneState, metrics: Iterable[str]
) -> list[WindowResult]:
    """The WindowResults of one (segment, pane) for ``metrics``.

    ``version`` is the sum of the source partitions' end offsets: it grows with every revision of the pane.
    """
    version = sum(pane.ends.values())
    out = []
    for metric in sorted(metrics):
        state = pane.states.get(metric)
        if state is not None and state.n > 0:
            ces = metric == "CES"
            out.append(
                window_result(
                    pane_start,
                    pane_start + pane_ms,
                    channel,
                    journey,
                    metric,
                    state,
                    version,
                    pane.drivers if ces else None,
                    pane.quotes if ces else (),
                    pane.mentions.get(metric),
                )
            )
    return out


@dataclass
class _Touched:
    channel: str
    journey: str
    start: int
    pane: PaneState
    metrics: set[str] = field(default_factory=set)  # to emit: absorbed now, or absorbed before and seen again
    changed: bool = False  # to write: a delta was absorbed now


@dataclass
class MergeStep:
    """Applies the partial messages of one partials partition, in offset order, then writes each touched pane
    and position once (:meth:`finish`).  ``panes`` and ``positions`` are the Faust tables (any mapping)."""

    partition: int
    pane_ms: int
    panes: MutableMapping[str, Any]
    positions: MutableMapping[str, Any]
    ignore_before: int = -(2**62)  # panes that ended at or before this were expired: a delta for them is stale
    breaks: int = 0  # ranges that did not link up (after any read-back): logged
    stale: int = 0  # deltas for expired panes, dropped
    _touched: dict[str, _Touched] = field(default_factory=dict)
    _positions: dict[int, Position] = field(default_factory=dict)

    def position(self, source: int) -> Position | None:
        """How far the chain of ``source`` has been followed in this partition (this step's updates included)."""
        known = self._positions.get(source)
        if known is not None:
            return known
        return position_from_table(self.positions.get(SourceKey(self.partition, source).encode()))

    def read_back_from(self, batch: PartialBatch) -> int | None:
        """The partials offset from which messages are missing before ``batch``, or None when it links up.

        0 stands for "from the start of the partition" (the reader starts at the first retained offset)."""
        starts = []
        for source in batch.ranges:
            position = self.position(source.partition)
            if follow(position, source) is Link.GAP:
                starts.append(0 if position is None else position.offset + 1)
        return min(starts) if starts else None

    def apply(self, batch: PartialBatch, offset: int) -> None:
        """Absorb one partial message (the one at ``offset``); links that still do not hold are logged."""
        ends = {}
        for source in batch.ranges:
            position = self.position(source.partition)
            link = follow(position, source)
            if link in (Link.GAP, Link.BREAK):
                self.breaks += 1
                LOG.error(
                    "partials[%d] offset %d: source %d range %d..%d does not follow %s (%s); counted as it is",
                    self.partition,
                    offset,
                    source.partition,
                    source.start,
                    source.end,
                    position,
                    link.value,
                )
            if link is not Link.REPEAT:
                self._positions[source.partition] = Position(source.end, offset)
            ends[source.partition] = source.end
        for partial in batch.panes:
            if partial.pane + self.pane_ms <= self.ignore_before:
                self.stale += 1
                continue
            key = PaneKey(self.partition, partial.channel, partial.journey, partial.pane).encode()
            touched = self._touched.get(key)
            if touched is None:
                pane = pane_state_from_table(self.panes.get(key))
                touched = self._touched[key] = _Touched(partial.channel, partial.journey, partial.pane, pane)
            if absorb(touched.pane, partial, ends[partial.source]):
                touched.changed = True
            # emitted also when it was absorbed before: a message seen again may be one whose results never got
            # out (a crash between the table write and the results), and a repeat is harmless (same version)
            touched.metrics.update(partial.states)

    def finish(self) -> list[WindowResult]:
        """Write every pane that changed, once; return the results of every pane touched.

        The positions are written by :meth:`advance`, once the caller has delivered the results: a batch that
        fails before that is read back later (the chain did not move), and its results come out then."""
        results: list[WindowResult] = []
        for key, touched in self._touched.items():
            if touched.changed:
                self.panes[key] = pane_state_to_table(touched.pane)
            results.extend(
                merged_results(
                    touched.channel, touched.journey, touched.start, self.pane_ms, touched.pane, touched.metrics
                )
            )
        self._touched.clear()
        return results

    def advance(self) -> None:
        """Record how far each source's chain was followed (after the batch's results are delivered)."""
        for source, position in self._positions.items():
            self.positions[SourceKey(self.partition, source).encode()] = position_to_table(position)
        self._positions.clear()
