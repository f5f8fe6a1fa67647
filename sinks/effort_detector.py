"""The effort-spike detector: an agent of the merge process, handed merge's CES results as merge emits them
(:meth:`EffortDetector.take`; read from ``cx.metrics.panes`` by :meth:`EffortDetector.handle` when that topic's
partition count is not the partials'), whose tick feeds every closed pane of every segment to
streams/core/effort.py, the implementation replay uses too.

- table ``effort-panes``: per (results partition, channel, journey, pane) the latest CES counts and drivers;
- table ``effort-state``: per (results partition, channel, journey) the CUSUM S, whether it fires, and the last
  pane evaluated; a restarted worker goes on from there and evaluates the panes it missed, in order.

A pane is closed once its end has passed on the processing clock *and* its answers are merged and applied here
(EventClock: merge's watermark, from the hot path's ``through`` headers), so the panes of a backlog (a worker back
after downtime) are evaluated in event time, with their answers, as replay evaluates them; an answer arriving after
its pane was evaluated still counts in the pane's results and baselines, not in that evaluation.  FIRING and
RESOLVED go to ``cx.alerts`` (EffortAlert, Confluent wire format); the gauges ``cxpulse_effort_spike``,
``cxpulse_effort_cusum``, ``cxpulse_effort_zscore``, ``cxpulse_effort_baseline_share``,
``cxpulse_effort_short_share``, ``cxpulse_effort_short_responses`` and ``cxpulse_effort_baseline_responses`` per
(channel, journey) are served from a snapshot taken on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from schemas.codec import (
    EFFORT_ALERT,
    EFFORT_ALERT_RAW,
    WINDOW_RESULT,
    decode_confluent,
    encode_confluent,
)
from sinks.effort_terms import Ask, Found, TermsFinder
from sinks.prometheus import Snapshot
from streams.agents.base import AgentContext, TableAgent
from streams.agents.keys import PaneKey, ResultKey, SegmentKey
from streams.agents.record import Record
from streams.config import effort_config
from streams.core.effort import DetectorState, Driver, Evaluation, PaneEffort, alert_record, evaluate_range
from streams.core.quotes import Quote, Quotes
from streams.core.terms import Term

LOG = logging.getLogger("cxpulse.alerts")
EVALUATE_SECONDS = 1.0  # how often closed panes are looked for
MAX_STEPS = 240  # panes evaluated per segment and tick (a catch-up after downtime is spread over ticks)
LABELS = ["channel", "journey"]


def effort_families(
    evaluations: dict[tuple[str, str], Evaluation],
    threshold: float,
    causes: Mapping[tuple[str, str], Sequence[Driver]] | None = None,
    said: Mapping[tuple[str, str], Quotes] | None = None,
    terms: Mapping[tuple[str, str], Sequence[Term]] | None = None,
) -> list[Metric]:
    """The detector's gauges from the last evaluation of every segment, its threshold H, and the root cause,
    quoted comments and words of every alert that fires (``causes``, ``said``: per segment, as it fired; ``terms``:
    once read from the store)."""
    spike = GaugeMetricFamily("cxpulse_effort_spike", "1 while the segment's effort-spike alert fires", labels=LABELS)
    cusum = GaugeMetricFamily(
        "cxpulse_effort_cusum", "The CUSUM statistic S (fires at H, resolves at 0)", labels=LABELS
    )
    zscore = GaugeMetricFamily(
        "cxpulse_effort_zscore",
        "(p_short - p0) / sqrt(p0 (1 - p0) / n_short), the short window against the baseline",
        labels=LABELS,
    )
    p0 = GaugeMetricFamily("cxpulse_effort_baseline_share", "Baseline high-effort share p0", labels=LABELS)
    short = GaugeMetricFamily(
        "cxpulse_effort_short_share", "High-effort share of the short window (5 minutes)", labels=LABELS
    )
    n_short = GaugeMetricFamily(
        "cxpulse_effort_short_responses", "CES answers in the short window (n_s)", labels=LABELS
    )
    n_baseline = GaugeMetricFamily(
        "cxpulse_effort_baseline_responses", "CES answers in the baseline (n_B)", labels=LABELS
    )
    for (channel, journey), evaluation in sorted(evaluations.items()):
        labels = [channel, journey]
        spike.add_metric(labels, 1.0 if evaluation.firing else 0.0)
        cusum.add_metric(labels, evaluation.s)
        if evaluation.z is not None:
            zscore.add_metric(labels, evaluation.z)
        if evaluation.p0 is not None:
            p0.add_metric(labels, evaluation.p0)
        if evaluation.p_short is not None:
            short.add_metric(labels, evaluation.p_short)
        n_short.add_metric(labels, evaluation.n_short)
        n_baseline.add_metric(labels, evaluation.n_baseline)
    limit = GaugeMetricFamily(
        "cxpulse_effort_threshold", "The CUSUM threshold H (CXPULSE_EFFORT_THRESHOLD)", value=threshold
    )
    firing = firing_families(causes or {}, said or {}, terms or {})
    return [spike, cusum, zscore, p0, short, n_short, n_baseline, limit, *firing]


def firing_families(
    causes: Mapping[tuple[str, str], Sequence[Driver]],
    said: Mapping[tuple[str, str], Quotes],
    terms: Mapping[tuple[str, str], Sequence[Term]],
) -> list[Metric]:
    """While a segment's alert fires: its root cause, the comments it quotes and the words over-represented in its
    comments, for Alertmanager's message."""
    cause = GaugeMetricFamily(
        "cxpulse_effort_cause",
        "While a segment's alert fires: the touchpoints, reason codes and comment themes of its root cause, each with "
        "its high-effort answers in the short window when it fired (kind TOUCHPOINT, REASON_CODE or THEME)",
        labels=[*LABELS, "kind", "name"],
    )
    for (channel, journey), drivers in sorted(causes.items()):
        for driver in drivers:
            cause.add_metric([channel, journey, driver.kind, driver.name], driver.high_effort)
    quote = GaugeMetricFamily(
        "cxpulse_effort_quote",
        "While a segment's alert fires: the latest comments of its high-effort answers when it fired (rank 1 the "
        "latest; redacted; none under CXPULSE_COMMENTS=themes or off), value the time it was given (epoch seconds)",
        labels=[*LABELS, "rank", "comment"],
    )
    for (channel, journey), quotes in sorted(said.items()):
        for rank, found in enumerate(quotes, 1):
            quote.add_metric([channel, journey, str(rank), found.text], found.occurred_at / 1000)
    word = GaugeMetricFamily(
        "cxpulse_effort_term",
        "While a segment's alert fires: the words its CES comments use more than the baseline's (Dunning's "
        "G2 >= 10.83, in >= 3 comments; rank 1 the largest G2; read from the store once it holds the spike), value "
        "G2",
        labels=[*LABELS, "rank", "term"],
    )
    for (channel, journey), found_terms in sorted(terms.items()):
        for rank, term in enumerate(found_terms, 1):
            word.add_metric([channel, journey, str(rank), term.term], term.g2)
    return [cause, quote, word]


class EventClock:
    """When a pane counts as closed for the detector: its end has passed on the processing clock *and* every answer
    up to its end has been merged and its results applied here (docs/contract.md section 7: in event-time order, as in
    replay).  Live, the two agree within a batch; after downtime the data's own time leads, so the panes of the
    backlog are evaluated once their answers are in, not empty as they go by.

    Each tick remembers merge's watermark; at the next tick the results partitions' end offsets are noted beside it
    (merge flushed every result of that watermark before it moved it, so they are in by then), and the watermark
    becomes safe once this agent has applied up to those ends.  Under a steady load the agent reaches a fixed past
    end within a batch, so evaluation never waits for a moment without lag."""

    def __init__(self) -> None:
        self.previous: int | None = None  # merge's watermark at the last tick
        self.pending: deque[tuple[int, dict[int, int]]] = deque()  # (watermark, results ends that cover it)
        self.safe: int | None = None  # event time up to which results are known to be applied

    def now(self, processing_ms: int, merged: int | None, ends: dict[int, int], applied: dict[int, int]) -> int | None:
        """The time to close panes by (None: nothing merged yet since the start); ``ends`` and ``applied``: per
        results partition held, its end offset and the next offset this agent will apply."""
        if self.previous is not None:
            self.pending.append((self.previous, ends))
        self.previous = merged
        while self.pending and all(applied.get(p, -1) >= end for p, end in self.pending[0][1].items()):
            self.safe = max(self.safe or 0, self.pending.popleft()[0])
        return None if self.safe is None else min(processing_ms, self.safe)


def pane_effort(value: list[Any]) -> PaneEffort:
    """A pane of the ``effort-panes`` table ([version, n, high_effort, {driver: [n, high]}, [[occurred_at, event
    id, text], ...]], the quotes missing in a value from before them) for streams/core/effort.py."""
    quotes = (
        tuple(Quote(int(at), str(event_id), str(text)) for at, event_id, text in value[4]) if len(value) > 4 else ()
    )
    return PaneEffort(value[1], value[2], {name: (int(n), int(high)) for name, (n, high) in value[3].items()}, quotes)


class EffortDetector(TableAgent):
    """The effort detector's agent (see the module docstring): ``tables`` are its ``effort-panes`` and
    ``effort-state`` (any mappings); ``watermark`` is merge's (streams.worker.merge_agent.MergeAgent.watermark)."""

    name = "effort"
    tick_seconds = EVALUATE_SECONDS

    def __init__(
        self,
        context: AgentContext,
        topic: str,
        tables: tuple[MutableMapping[str, Any], MutableMapping[str, Any]],
        snapshot: Snapshot,
        watermark: Callable[[], int | None],
        fed_by_merge: bool = False,
    ) -> None:
        """``fed_by_merge``: merge hands its results over to :meth:`take` itself (streams/processes/agents.py);
        ``topic`` is then the partials topic, whose partitions are the results partitions this process holds."""
        super().__init__(context)
        settings = context.settings
        self.topic = topic
        self.panes, self.states = tables
        self.snapshot = snapshot
        self.watermark = watermark
        self.fed_by_merge = fed_by_merge
        self.config = effort_config(settings)
        self.alert_schema_id = context.catalog.id_for(EFFORT_ALERT_RAW)
        self.keep_ms = self.config.baseline_ms + self.config.guard_ms + 2 * self.pane_ms  # an evaluation's reach
        self.retention_ms = settings.retention_seconds * 1000
        self.clock = EventClock()
        self.evaluations: dict[tuple[str, str], Evaluation] = {}
        self.causes: dict[tuple[str, str], tuple[Driver, ...]] = {}  # the root cause of each alert that fires
        self.said: dict[tuple[str, str], Quotes] = {}  # the comments each alert that fires quotes
        self.terms: dict[tuple[str, str], tuple[Term, ...]] = {}  # the words of each alert that fires, once read
        self.finder = TermsFinder(settings, self.config, self.pane_ms)  # reads them from the store
        self.segments: dict[tuple[str, str], SegmentKey] = {}  # where each segment's state is kept
        self.fired: dict[tuple[str, str], int] = {}  # the pane that fired each alert that fires
        self.applied: dict[int, int] = {}  # results partition -> the next offset this agent applies
        self.started_at: dict[int, int] = {}  # results partition -> its end when first seen with nothing taken
        # the panes table by segment, decoded, kept in step with it from handle() while the process is settled: a
        # tick no longer decodes every pane held (70,608 panes, 48 segments x the 24.5 h an evaluation reaches: 855
        # ms a tick, every second, on the event loop: benchmarks/effort_tick.py); rebuilt after a rebalance (the
        # table may have been reloaded)
        self.by_segment: dict[SegmentKey, dict[int, PaneEffort]] | None = None
        self.built_at = -1  # the process's rebalance count when by_segment was built
        self.expired_mark: int | None = None  # the retention cutoff's pane at the last expiry pass
        self.dropped_below: dict[SegmentKey, int] = {}  # per segment, the horizon its panes were last dropped below

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        """The CES results of a batch read from the results topic (when merge does not feed this detector: see
        :meth:`take`)."""
        results: list[dict[str, Any]] = []
        for record in records:
            if record.key and ResultKey.metric_of(record.key) != b"CES":
                continue  # 4 in 5 results are not CES: told by the key, not decoded
            try:
                _, result = decode_confluent(record.value, self.catalog, WINDOW_RESULT)
            except Exception:  # noqa: BLE001 - not a result (the view logs it)
                self.metrics.sink_errors.labels(self.name).inc()
                continue
            results.append(result)
        self.take(partition, results)
        self.applied[partition] = records[-1].offset + 1

    def take(self, partition: int, results: Sequence[Mapping[str, Any]], stamps: Sequence[int] = ()) -> None:
        """Results of one results partition (WindowResult records, in the order merge emitted them; only CES ones
        are kept) into the ``effort-panes`` table.  Merge hands its results over here itself when it feeds this
        detector (streams.worker.merge_agent.MergeAgent.emit), else :meth:`handle` reads them from the results
        topic.  ``stamps`` (their Kafka timestamps) are not used here."""
        latest: dict[str, list[Any]] = {}
        panes: dict[str, PaneKey] = {}
        for result in results:
            if result["metric"] != "CES":
                continue
            pane = PaneKey(partition, result["channel"], result["journey"], result["window_start"])
            key = pane.encode()
            drivers = {d["name"]: [d["n"], d["high_effort"]] for d in result.get("drivers") or ()}
            quotes = [[q["occurred_at"], q["event_id"], q["text"]] for q in result.get("quotes") or ()]
            value = [result["version"], result["n"], result["high_effort"], drivers, quotes]
            before = latest.get(key) or self.panes.get(key)
            if before is None or before[0] < value[0]:
                latest[key] = value
                panes[key] = pane
        for key, value in latest.items():  # the changelog writes are flushed with the batch, before its ack
            self.panes[key] = value
            if self.by_segment is not None:
                pane = panes[key]
                segment = SegmentKey(pane.partition, pane.channel, pane.journey)
                self.by_segment.setdefault(segment, {})[pane.pane] = pane_effort(value)

    async def tick(self, now_ms: int) -> None:
        """Evaluate every closed pane of every segment held, in order; alerts out, state written, gauges set."""
        ends, done = self._positions()
        closing = self.clock.now(now_ms, self.watermark(), ends, done)
        if closing is None:
            return  # no answer merged yet since the start: nothing to evaluate in event time
        last_closed = closing - closing % self.pane_ms - self.pane_ms
        segments = self._segments(closing).items()
        steps = sum([self._evaluate(segment, panes, last_closed) for segment, panes in segments if panes])
        for ask, found in self.finder.step():
            steps += self._words(ask, found)
        if steps:
            await self.results.flush()  # alerts, and the state table's changelog
        self.snapshot.families = effort_families(
            self.evaluations, self.config.threshold, self.causes, self.said, self.terms
        )

    def _positions(self) -> tuple[dict[int, int], dict[int, int]]:
        """Per held results partition: its end as last fetched, and the next offset this agent applies (for a
        partition it took nothing of since it was assigned: its end when first seen, where Faust resumed).  Nothing
        when merge feeds this detector: it hands a batch's results over before it moves its watermark."""
        ends: dict[int, int] = {}
        if self.fed_by_merge:
            return ends, {}
        done: dict[int, int] = {}
        for partition in self.consumption.assigned(self.topic):
            end = self.consumption.end(self.topic, partition)
            if end is None:
                continue
            ends[partition] = end
            done[partition] = self.applied.get(partition, self.started_at.setdefault(partition, end))
        return ends, done

    def _segments(self, now_ms: int) -> dict[SegmentKey, dict[int, PaneEffort]]:
        """The CES panes of every segment held, by segment; panes older than the retention dropped.  From
        ``by_segment`` while the process stays settled, its expiry looked at once a pane; a full read of the table
        while it is not (a rebalance or a recovery under way) and once after it."""
        cutoff = now_ms - self.retention_ms
        if not self.consumption.settled():
            self.by_segment = None
            return self._read_table(cutoff)
        if self.by_segment is None or self.built_at != self.consumption.rebalances():
            self.built_at = self.consumption.rebalances()
            self.by_segment, self.dropped_below = self._read_table(cutoff), {}
            self.expired_mark = (cutoff - 1) // self.pane_ms
            return self.by_segment
        mark = (cutoff - 1) // self.pane_ms  # a pane start p is past the retention once p <= cutoff - 1
        if mark != self.expired_mark:
            self.expired_mark = mark
            for segment, panes in self.by_segment.items():
                for old in [p for p in panes if p < cutoff]:
                    del panes[old]
                    self.panes.pop(PaneKey(segment.partition, segment.channel, segment.journey, old).encode(), None)
        return self.by_segment

    def _read_table(self, cutoff: int) -> dict[SegmentKey, dict[int, PaneEffort]]:
        """Every CES pane of the table in a partition held, by segment; those before ``cutoff`` deleted."""
        held = self.consumption.assigned(self.topic)
        segments: dict[SegmentKey, dict[int, PaneEffort]] = defaultdict(dict)
        for key, value in list(self.panes.items()):
            pane = PaneKey.decode(key)
            if pane.partition not in held:
                continue
            if pane.pane < cutoff:  # no accepted answer can reach it any more
                del self.panes[key]
                continue
            segments[SegmentKey(pane.partition, pane.channel, pane.journey)][pane.pane] = pane_effort(value)
        return dict(segments)

    def _evaluate(self, segment: SegmentKey, panes: dict[int, PaneEffort], last_closed: int) -> int:
        """The segment's closed panes not evaluated yet (at most MAX_STEPS); returns how many were."""
        key, pane_ms = segment.encode(), self.pane_ms
        stored = self.states.get(key)
        state = DetectorState(stored["s"], stored["firing"], stored["evaluated"]) if stored else DetectorState()
        where = (segment.channel, segment.journey)
        if where not in self.segments and stored:  # a restart: spikes whose words were not read yet, asked again
            for pane_fired, n_short in stored.get("asked") or ():
                self.finder.ask(Ask(segment.channel, segment.journey, pane_fired, n_short, time.monotonic()))
        self.segments[where] = segment
        if state.firing and where not in self.causes and stored:  # a restart: the cause it fired with, kept
            self.causes[where] = tuple(Driver(*named) for named in stored.get("cause") or ())
            self.said[where] = tuple(Quote(*quoted) for quoted in stored.get("said") or ())
            if stored.get("fired") is not None:
                self.fired[where] = int(stored["fired"])
            if stored.get("terms") is not None:
                self.terms[where] = tuple(Term(*found) for found in stored["terms"])
        pane = state.evaluated + pane_ms if state.evaluated is not None else min(panes)
        pane = max(pane, last_closed - self.retention_ms)  # older panes are gone: nothing to evaluate them with
        until = min(last_closed, pane + (MAX_STEPS - 1) * pane_ms)  # a long catch-up goes on at the next tick
        steps = 0
        for evaluation in evaluate_range(self.config, state, panes, pane, until, pane_ms) if pane <= until else []:
            steps += 1
            self.evaluations[where] = evaluation
            if evaluation.change is not None:
                self._alert(segment, evaluation)
                self.terms.pop(where, None)
                if evaluation.firing:
                    self.causes[where], self.said[where] = evaluation.root_cause, evaluation.quotes
                    self.fired[where] = evaluation.pane
                    self.finder.ask(Ask(*where, evaluation.pane, evaluation.n_short, time.monotonic()))
                else:
                    self.causes.pop(where, None)
                    self.said.pop(where, None)
                    self.fired.pop(where, None)
        if steps:
            self._keep_state(segment, state)
        # panes no later evaluation of this segment needs (older than the next one's baseline): dropped, looked
        # for when the horizon moves (once a pane), or always while by_segment is not kept
        horizon = (state.evaluated if state.evaluated is not None else pane) + pane_ms - self.keep_ms
        if self.by_segment is None or horizon > self.dropped_below.get(segment, horizon - 1):
            for old in [p for p in panes if p < horizon]:
                del panes[old]
                del self.panes[PaneKey(segment.partition, segment.channel, segment.journey, old).encode()]
            self.dropped_below[segment] = horizon
        return steps

    def _keep_state(self, segment: SegmentKey, state: DetectorState) -> None:
        """The segment's state in the ``effort-state`` table: the CUSUM; while it fires the root cause, the quotes, the
        pane that fired and the words (None until read); the spikes whose words are not read yet (pane, n_s)."""
        where = (segment.channel, segment.journey)
        terms = self.terms.get(where)
        self.states[segment.encode()] = {
            "s": state.s,
            "firing": state.firing,
            "evaluated": state.evaluated,
            "cause": [list(driver) for driver in self.causes.get(where, ())],
            "said": [list(quote) for quote in self.said.get(where, ())],
            "fired": self.fired.get(where),
            "terms": [list(term) for term in terms] if terms is not None else None,
            "asked": [[ask.pane, ask.n_short] for ask in self.finder.asked(*where)],
        }

    def _words(self, ask: Ask, found: Found) -> int:
        """The words of a spike, read: in the log; on the gauges and kept with the segment's state while it fires."""
        where = (ask.channel, ask.journey)
        if self.fired.get(where) == ask.pane:
            self.terms[where] = found.terms
        LOG.warning(
            "effort spike words %s / %s: %s (from %d CES comments of the spike against %d of its baseline; "
            "the store held %d of its %d CES answers)",
            ask.channel, ask.journey,
            ", ".join(f"{t.term} ({t.spike} vs {t.baseline}, G2 {t.g2:.1f})" for t in found.terms) or "none stand out",
            found.spike, found.baseline, found.stored, ask.n_short,
        )  # fmt: skip
        segment = self.segments.get(where)
        if segment is None or segment.partition not in self.consumption.assigned(self.topic):
            return 0  # the segment moved to another worker meanwhile: its words stay in this log line only
        stored = self.states.get(segment.encode())
        if stored is None:
            return 0
        self._keep_state(segment, DetectorState(stored["s"], stored["firing"], stored["evaluated"]))
        return 1

    def _alert(self, segment: SegmentKey, evaluation: Evaluation) -> None:
        record = alert_record(segment.channel, segment.journey, evaluation, self.pane_ms)
        value = encode_confluent(record, EFFORT_ALERT, self.alert_schema_id)
        self.results.produce(self.settings.alerts_topic, value, f"{segment.channel}|{segment.journey}".encode())
        LOG.warning(
            "effort spike %s: %s / %s, S %.2f, p_short %s, p0 %.3f, root cause %s%s",
            evaluation.change, segment.channel, segment.journey, evaluation.s, evaluation.p_short, evaluation.p0,
            [f"{d.kind}:{d.name} {d.high_effort}/{d.n}" for d in evaluation.root_cause],
            f"; customers wrote {[quote.text for quote in evaluation.quotes]}" if evaluation.quotes else "",
        )  # fmt: skip
