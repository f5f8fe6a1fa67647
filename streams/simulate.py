"""``cxpulse simulate``: contact-center feedback as a platform sends it, with scripted incidents.

Deterministic for a seed and a start time: events are generated in fixed slices of simulated time
(``SLICE_MS``), so a live run (paced by the wall clock) and a ``--to-file`` run of the same seed, start, rate and
duration produce the same events.  What is simulated:

- channels with their own volume share and touchpoints (phone: ivr, agent_call, callback; chat: bot,
  live_agent; ...), journeys, the five metrics on their usual scales, reason codes, comments (English and
  Dutch, saying what went wrong or well: streams.core.synth.comment_for), agents and teams on assisted touchpoints;
- customers going through multi-contact journeys (docs/contract.md section 8): a customer starts a journey on
  one channel; a contact resolves the matter with a probability that depends on its touchpoint (self-service
  less often than an agent); unresolved, the customer comes back later (up to ``--comeback``, 6 h by default)
  on the next channel of an escalation path (ivr, then an agent call, then email; a web FAQ, then chat, then the
  phone), at most four contacts; each contact is surveyed once or twice (one interaction id), and NPS, NLS,
  CSAT and CAS fall with every extra stop and rise when the matter is resolved (CES stays the contact's own);
- with ``--daily-curve``, a contact center's day: the rate is the day's average, quiet at night and peaking
  mid-morning and mid-afternoon (UTC hours of the simulated time);
- a share of invalid events (``--invalid-share``, 0.5% by default on the command line), spoiled the ways
  streams/core/synth.py spoils them, so the dead-letter topic and its metrics have something to show;
- per-channel score levels: CES answers are high-effort with a channel's base share (docs/contract.md section 3);
- incidents (``--incident``), from a start offset for a duration (default: to the end):

  - ``effort:CHANNEL/JOURNEY@+START[~DURATION]``: the channel's first touchpoint (chat: bot) goes bad in that journey:
    its CES answers are high-effort 75% of the time with reason code ``repeat_contact``, and it takes more of the
    segment's traffic, and its unhappy customers write more often (70%, else 40%) what went wrong, in the incident's own
    words (the chatbot "stuck in a loop": streams.core.synth.COMMENTS_INCIDENT): the effort-spike alert should fire and
    name that touchpoint, and the words;
  - ``nps:CHANNEL/JOURNEY@+START[~DURATION]``: NPS/NLS answers of the segment drop (detractors 60%);
  - ``outage:CHANNEL@+START[~DURATION]``: the channel sends nothing.

Example: ``effort:chat/billing@+30s~5m``.  The daily volume curve and more incident kinds come with the demo.
"""

from __future__ import annotations

import heapq
import json
import random
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
from confluent_kafka import KafkaError, Message

from schemas.codec import FEEDBACK, FEEDBACK_RAW, SchemaCatalog, encode_confluent
from streams.config import parse_duration
from streams.core.synth import JOURNEYS as SYNTH_JOURNEYS
from streams.core.synth import METRIC_SCALES, METRIC_WEIGHTS, SOURCES, comment_for, spoil
from streams.kafka import Kafka, produce_waiting, producer
from streams.produce import check_topic

SLICE_MS = 100  # events are generated slice by slice of simulated time
PROGRESS_SECONDS = 5.0
CHANNELS = ("phone", "chat", "email", "web", "app", "store")
JOURNEYS = SYNTH_JOURNEYS
CHANNEL_WEIGHTS = {"phone": 30, "chat": 22, "email": 10, "web": 18, "app": 15, "store": 5}
CHANNEL_TOUCHPOINTS = {
    "phone": ("ivr", "agent_call", "callback"),
    "chat": ("bot", "live_agent"),
    "email": ("agent_reply", "auto_reply"),
    "web": ("faq", "checkout", "invoice_page"),
    "app": ("app_login", "checkout", "invoice_page"),
    "store": ("counter", "returns_desk"),
}
ASSISTED = {"agent_call", "callback", "live_agent", "agent_reply", "counter", "returns_desk"}
# who writes a comment: unhappy customers say why more often than happy ones say thanks (about 15% in all)
COMMENT_SHARE_LOW, COMMENT_SHARE = 0.4, 0.08
# a broken touchpoint makes the customers it fails write: 40% gave the demo's incident theme a z of 1.5-2.8 at the
# pane that fired (streams.core.effort.root_cause names it from 1.96), so the alert named it in about 3 runs of 4
COMMENT_SHARE_INCIDENT = 0.7
BASE_HIGH_EFFORT = {"phone": 0.22, "chat": 0.2, "email": 0.25, "web": 0.18, "app": 0.15, "store": 0.12}
INCIDENT_HIGH_EFFORT = 0.75
REASONS_BAD = ("hold_time", "transfer", "repeat_contact", "knowledge", "policy")
REASONS_GOOD = ("fast", "friendly", "first_contact_resolution")
DUTCH_SHARE = 0.6  # customers who write their comments in Dutch (the rest in English)
SELF_SERVICE = {"ivr", "bot", "faq", "auto_reply", "app_login", "invoice_page", "checkout"}
RESOLVES = {True: 0.75, False: 0.45}  # a contact resolves the matter: assisted, self-service
MAX_CONTACTS = 4  # the last contact of a journey resolves it
SECOND_ANSWER_SHARE = 0.2  # a contact surveyed twice (e.g. CES and CSAT of one call)
WORSE_PER_STOP = 0.12  # the share of bad scores grows by this with every contact after the first
ESCALATION = {  # where an unresolved customer goes next
    "phone": ("phone", "email", "store"),
    "chat": ("phone", "email"),
    "email": ("phone",),
    "web": ("chat", "phone", "email"),
    "app": ("chat", "phone"),
    "store": ("phone",),
}
DEFAULT_COMEBACK_MS = 6 * 3_600_000
CUSTOMERS = 10_000_000  # customer ids are drawn from this many
_INCIDENT = re.compile(
    r"^(?P<kind>effort|nps|outage):(?P<channel>[a-z0-9_-]+)(/(?P<journey>[a-z0-9_-]+))?"
    r"@\+(?P<start>[0-9.]+[a-z]*)(~(?P<duration>[0-9.]+[a-z]*))?$"
)


class Incident(NamedTuple):
    """A scripted incident: what, where, from ``start_ms`` after the simulation's start, for ``duration_ms``."""

    kind: str
    channel: str
    journey: str | None
    start_ms: int
    duration_ms: int | None

    def active(self, offset_ms: int) -> bool:
        return offset_ms >= self.start_ms and (self.duration_ms is None or offset_ms < self.start_ms + self.duration_ms)

    def applies(self, offset_ms: int, channel: str, journey: str) -> bool:
        return self.active(offset_ms) and channel == self.channel and self.journey in (None, journey)


def dutch(customer: str | None, count: int) -> bool:
    """Whether a customer writes in Dutch: fixed per customer (a hash, no random draw), by answer without one."""
    key = zlib.crc32(customer.encode()) if customer else count
    return key % 100 < DUTCH_SHARE * 100


def parse_incident(text: str) -> Incident:
    """``effort:chat/billing@+30s~5m`` and the like; ValueError saying what is expected otherwise."""
    match = _INCIDENT.match(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not an incident: use effort:CHANNEL/JOURNEY@+START[~DURATION], "
            "nps:CHANNEL/JOURNEY@+START[~DURATION] or outage:CHANNEL@+START[~DURATION], e.g. effort:chat/billing@+30s"
        )
    kind, journey = match["kind"], match["journey"]
    if kind in ("effort", "nps") and journey is None:
        raise ValueError(f"{text!r}: an {kind} incident needs CHANNEL/JOURNEY")
    if kind == "outage" and journey is not None:
        raise ValueError(f"{text!r}: an outage takes a whole channel (outage:CHANNEL@+START)")
    start = parse_duration(match["start"]) if match["start"] not in ("0", "0s") else 0.0
    duration = parse_duration(match["duration"]) if match["duration"] else None
    duration_ms = None if duration is None else round(duration * 1000)
    return Incident(kind, match["channel"], journey, round(start * 1000), duration_ms)


# a contact center's day (UTC hours): quiet at night, a morning peak, a lunch dip, an afternoon peak
_HOURLY = (0.15, 0.1, 0.08, 0.08, 0.1, 0.2, 0.45, 0.85, 1.35, 1.6, 1.65, 1.5, 1.2, 1.35, 1.55, 1.6, 1.5, 1.3,
           1.05, 0.85, 0.65, 0.45, 0.3, 0.2)  # fmt: skip


def daily_volume(at_ms: int) -> float:
    """The share of the average rate at this time of day (mean 1 over a day), linear between hours."""
    hours = (at_ms / 3_600_000) % 24
    low = int(hours)
    frac = hours - low
    level = _HOURLY[low] * (1 - frac) + _HOURLY[(low + 1) % 24] * frac
    return level * 24 / sum(_HOURLY)


class Contact(NamedTuple):
    """A customer's next contact of a journey, due at ``due_ms`` (simulated offset); ``stop`` counts from 1."""

    due_ms: int
    number: int  # tie-break: the order contacts were scheduled in (deterministic)
    customer: str
    journey: str
    channel: str
    stop: int


def comment_share(low: bool, culprit: bool) -> float:
    """How likely an answer carries a comment: an incident's unhappy customers, other unhappy ones, happy ones."""
    return COMMENT_SHARE_INCIDENT if low and culprit else COMMENT_SHARE_LOW if low else COMMENT_SHARE


class Simulator:
    """Generates the events of consecutive slices of simulated time, from ``start_ms`` on."""

    def __init__(
        self,
        *,
        seed: int,
        rate: float,
        start_ms: int,
        incidents: Sequence[Incident] = (),
        channels: Sequence[str] = CHANNELS,
        journeys: Sequence[str] = JOURNEYS,
        invalid_share: float = 0.0,
        daily_curve: bool = False,
        comeback_ms: int = DEFAULT_COMEBACK_MS,
    ) -> None:
        unknown = [c for c in channels if c not in CHANNEL_TOUCHPOINTS]
        if unknown:
            raise ValueError(f"unknown channel {unknown[0]!r} (known: {', '.join(CHANNELS)})")
        for incident in incidents:
            if incident.channel not in channels or (incident.journey is not None and incident.journey not in journeys):
                raise ValueError(
                    f"incident {incident.kind}:{incident.channel}/{incident.journey or '*'} is outside the simulated "
                    f"channels ({', '.join(channels)}) and journeys ({', '.join(journeys)})"
                )
        self.rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by seed; not security
        self.seed = seed
        self.rate = rate
        self.start_ms = start_ms
        self.incidents = tuple(incidents)
        self.channels = tuple(channels)
        self.journeys = tuple(journeys)
        self.invalid_share = invalid_share
        self.daily_curve = daily_curve
        self.offset_ms = 0  # simulated time generated so far
        self.count = 0
        self._owed = 0.0  # fractional events carried to the next slice
        self.comeback_ms = max(SLICE_MS, comeback_ms)
        self._due: list[Contact] = []  # unresolved customers' next contacts (a heap by due time)
        self._scheduled = 0
        self._second: deque[dict[str, Any]] = deque()  # second answers of contacts, sent in the next slice

    def slice(self) -> list[dict[str, Any]]:
        """The events of the next SLICE_MS of simulated time (occurred_at inside the slice)."""
        offset = self.offset_ms
        self.offset_ms += SLICE_MS
        factor = daily_volume(self.start_ms + offset) if self.daily_curve else 1.0
        self._owed += self.rate * factor * SLICE_MS / 1000
        count = int(self._owed)
        self._owed -= count
        down = {i.channel for i in self.incidents if i.kind == "outage" and i.active(offset)}
        weights = [0 if c in down else CHANNEL_WEIGHTS[c] for c in self.channels]
        if not any(weights):
            return []
        out: list[dict[str, Any]] = []
        while len(out) < count and self._second:  # a contact's second answer, a moment after its first
            second = self._second.popleft()
            if second["contact"]["channel"] in down:  # the channel went down: that survey is never answered
                continue
            out.append(self._answer(offset + self.rng.randrange(SLICE_MS), second["contact"], second["resolved"]))
        while len(out) < count and self._due and self._due[0].due_ms < offset + SLICE_MS:
            contact = heapq.heappop(self._due)  # a customer coming back (late by a slice at most when it is busy)
            if weights[self.channels.index(contact.channel)] == 0:  # that channel is down: another one
                contact = contact._replace(channel=self.rng.choices(self.channels, weights)[0])
            out.extend(self._contact(offset + self.rng.randrange(SLICE_MS), contact, count - len(out)))
        while len(out) < count:
            channel = self.rng.choices(self.channels, weights)[0]
            customer = f"cust-{self.rng.randrange(CUSTOMERS)}"
            contact = Contact(0, 0, customer, self.rng.choice(self.journeys), channel, 1)
            out.extend(self._contact(offset + self.rng.randrange(SLICE_MS), contact, count - len(out)))
        return out

    def run(self, duration_ms: int) -> Iterator[list[dict[str, Any]]]:
        """Slices until ``duration_ms`` of simulated time."""
        while self.offset_ms < duration_ms:
            yield self.slice()

    def _contact(self, offset_ms: int, contact: Contact, room: int) -> list[dict[str, Any]]:
        """The answers of one contact (one, or two with one interaction id: the second in the next slice when
        this one has no room), and the customer's next contact when it does not resolve the matter."""
        rng = self.rng
        self._scheduled += 1
        touchpoints = CHANNEL_TOUCHPOINTS[contact.channel]
        if contact.stop == 1 or contact.channel not in ("phone", "chat"):
            touchpoint = rng.choice(touchpoints)
        else:  # called or chatted again: an agent this time
            touchpoint = next(t for t in touchpoints if t in ASSISTED)
        effort = any(i.kind == "effort" for i in self._active(offset_ms, contact.channel, contact.journey))
        if effort and rng.random() < 0.5:
            touchpoint = touchpoints[0]
        resolved = contact.stop >= MAX_CONTACTS or rng.random() < RESOLVES[touchpoint not in SELF_SERVICE] * (
            0.5 if effort and touchpoint == touchpoints[0] else 1.0
        )
        about = {**contact._asdict(), "touchpoint": touchpoint, "interaction": f"int-{self.seed}-{self._scheduled}"}
        out = [self._answer(offset_ms, about, resolved)]
        if rng.random() < SECOND_ANSWER_SHARE:
            if room > 1:
                out.append(self._answer(min(offset_ms + 1 + rng.randrange(50), self.offset_ms - 1), about, resolved))
            else:
                self._second.append({"contact": about, "resolved": resolved})
        if not resolved:
            paths = [c for c in ESCALATION[contact.channel] if c in self.channels] or [contact.channel]
            later = rng.randint(self.comeback_ms // 20, self.comeback_ms)
            heapq.heappush(
                self._due,
                Contact(offset_ms + later, self._scheduled, contact.customer, contact.journey, rng.choice(paths),
                        contact.stop + 1),
            )  # fmt: skip
        return out

    def _active(self, offset_ms: int, channel: str, journey: str) -> list[Incident]:
        return [i for i in self.incidents if i.kind != "outage" and i.applies(offset_ms, channel, journey)]

    def _answer(self, offset_ms: int, contact: dict[str, Any], resolved: bool) -> dict[str, Any]:
        rng = self.rng
        customer, journey, channel = contact["customer"], contact["journey"], contact["channel"]
        touchpoint, stop = contact["touchpoint"], contact["stop"]
        active = self._active(offset_ms, channel, journey)
        touchpoints = CHANNEL_TOUCHPOINTS[channel]
        effort = any(i.kind == "effort" for i in active)
        metric = rng.choices(tuple(METRIC_SCALES), METRIC_WEIGHTS)[0]
        lo, hi = rng.choice(METRIC_SCALES[metric])
        worse = WORSE_PER_STOP * (stop - 1) + (0.0 if resolved else 0.1) - (0.08 if resolved and stop > 1 else 0.0)
        score, low = self._score(metric, channel, touchpoint, lo, hi, active, worse)
        reasons = [] if rng.random() < 0.4 else rng.sample(REASONS_BAD if low else REASONS_GOOD, rng.randint(1, 2))
        if effort and touchpoint == touchpoints[0] and low and "repeat_contact" not in reasons:
            reasons = ["repeat_contact", *reasons[:1]]
        self.count += 1
        culprit = effort and touchpoint == touchpoints[0]  # the incident's customers write its words
        comment = comment_for(rng, low, touchpoint, reasons, dutch(customer, self.count), culprit)  # every answer draws
        event = {
            "event_id": f"sim-{self.seed}-{self.count}",
            "occurred_at": self.start_ms + offset_ms,
            "source": rng.choice(SOURCES),
            "channel": channel,
            "journey": journey,
            "touchpoint": touchpoint,
            "metric": metric,
            "score": score,
            "scale_min": None if (lo, hi) == METRIC_SCALES[metric][0] else lo,
            "scale_max": None if (lo, hi) == METRIC_SCALES[metric][0] else hi,
            "customer_id": customer,
            "interaction_id": contact["interaction"],
            "agent_id": f"agent-{rng.randrange(300)}" if touchpoint in ASSISTED else None,
            "team": f"team-{rng.randrange(12)}" if touchpoint in ASSISTED else None,
            "reason_codes": reasons,
            "comment": comment if rng.random() < comment_share(low, culprit) else None,
        }
        if self.invalid_share and rng.random() < self.invalid_share:
            spoil(event, rng)  # as a real feed does: the dead-letter topic has something to show
        return event

    def _score(
        self, metric: str, channel: str, touchpoint: str, lo: int, hi: int, active: list[Incident], worse: float
    ) -> tuple[int, bool]:
        """A score on [lo, hi] and whether it is a bad experience; ``worse`` adds to the share of bad NPS, NLS, CSAT
        and CAS answers (more stops, an unresolved matter) or takes from it (resolved after several)."""
        rng = self.rng
        d = hi - lo
        if metric == "CES":
            culprit = any(i.kind == "effort" for i in active) and touchpoint == CHANNEL_TOUCHPOINTS[channel][0]
            # effort is the contact's own (its touchpoint, an incident), not the stops before it: a simulation that
            # starts has no returning customers yet, and effort growing while they arrive looked like a spike
            high = rng.random() < (INCIDENT_HIGH_EFFORT if culprit else BASE_HIGH_EFFORT[channel])
            high_max = lo + (d - 1) // 2  # the highest score with 2 * (s - lo) < d (docs/contract.md section 3)
            return (rng.randint(lo, high_max) if high else rng.randint(high_max + 1, hi)), high
        if metric in ("NPS", "NLS"):
            base = 0.2 + 0.1 * BASE_HIGH_EFFORT[channel] + worse
            detractor_share = 0.6 if any(i.kind == "nps" for i in active) else min(0.9, max(0.02, base))
            u = rng.random()
            if u < detractor_share:
                return rng.randint(0, 6), True
            return (rng.randint(7, 8) if u < detractor_share + 0.3 else rng.randint(9, 10)), False
        u = rng.betavariate(max(1.2, 4.0 - 8 * worse), 1.6)  # CSAT, CAS: mostly satisfied
        score = lo + min(d, round(u * d))
        return score, 4 * (score - lo) < 3 * d


class Sent(NamedTuple):
    """What a simulation run produced."""

    events: int
    seconds: float
    failed: int


def to_file(simulator: Simulator, duration_ms: int, path: Path) -> Sent:
    """Write the events of ``duration_ms`` of simulated time to ``path``: an Avro container for ``.avro``, JSON
    lines otherwise (no pacing: as fast as they are generated)."""
    started = time.monotonic()
    slices = simulator.run(duration_ms)
    with path.open("wb") as out:
        if path.suffix == ".avro":
            fastavro.writer(out, FEEDBACK, (event for batch in slices for event in batch), codec="deflate")
        else:
            for batch in slices:
                out.write(b"".join(json.dumps(event, separators=(",", ":")).encode() + b"\n" for event in batch))
    return Sent(simulator.count, time.monotonic() - started, 0)


def to_kafka(
    simulator: Simulator,
    duration_ms: int | None,
    kafka: Kafka,
    topic: str,
    catalog: SchemaCatalog,
    stopping: Callable[[], bool],
    progress: Callable[[int, float, list[Incident]], None] | None = None,
) -> Sent:
    """Produce the events to ``topic`` (Confluent-framed Avro, keyed by customer), paced by the wall clock: the
    slice of simulated time [t, t + SLICE_MS) is sent at start + t + SLICE_MS, once all of it has happened, so that
    no event is dated after the moment it is sent (a worker dead-letters the future).  Stops after ``duration_ms``
    or when ``stopping()``."""
    failed = [0]

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failed[0] += 1

    out = producer(kafka, **{"linger.ms": 20, "compression.type": "lz4", "on_delivery": delivered})
    check_topic(kafka, topic)
    schema_id = catalog.id_for(FEEDBACK_RAW)
    started = time.monotonic()
    reported = started
    while not stopping() and (duration_ms is None or simulator.offset_ms < duration_ms):
        due = started + (simulator.offset_ms + SLICE_MS) / 1000  # the slice's end: none of its events ahead
        while (wait := due - time.monotonic()) > 0 and not stopping():
            out.poll(wait)  # returns early when it serves a delivery report: wait again for the rest
        for event in simulator.slice():
            key = event["customer_id"].encode()
            produce_waiting(out, topic, encode_confluent(event, FEEDBACK, schema_id), key)
        out.poll(0)
        now = time.monotonic()
        if progress is not None and now - reported >= PROGRESS_SECONDS:
            reported = now
            active = [i for i in simulator.incidents if i.active(simulator.offset_ms)]
            progress(simulator.count, now - started, active)
    left = out.flush(30)
    return Sent(simulator.count, time.monotonic() - started, failed[0] + left)
