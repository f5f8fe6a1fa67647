"""Customer journeys (docs/contract.md section 8): one customer's answers in one journey, split into instances
where two consecutive answers are more than the journey gap G apart.

The one implementation of the instance record and the journey KPIs, used by ``cxpulse replay --journeys``, the
stream's journey agent and the tests.

An instance depends only on the *set* of answers of its (customer, journey), never on their arrival order:
:class:`JourneyBook` keeps each group's answers in (occurred_at, event_id) order and recomputes the instances of
a group from them, so a late answer can extend an instance or join two (the two are then replaced).
:class:`Revisions` turns successive instance lists of a group into the records a stream emits: a new or changed
instance with a version one higher, a replaced one once more with ``deleted`` true.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from streams.validate import Feedback
from streams.windows import iso_utc

DEFAULT_JOURNEY_GAP_SECONDS = 72 * 3600


class Answer(NamedTuple):
    """What an instance needs of one answer; tuples sort in the contract's order (occurred_at, event_id)."""

    occurred_at: int
    event_id: str
    interaction_id: str | None
    channel: str
    touchpoint: str | None
    metric: str
    score: int
    scale_min: int
    scale_max: int

    @property
    def x(self) -> float:
        """The normalised value (section 3)."""
        return (self.score - self.scale_min) / (self.scale_max - self.scale_min)

    @property
    def low(self) -> bool:
        """x < 0.5, in integers."""
        return 2 * (self.score - self.scale_min) < self.scale_max - self.scale_min


Group = tuple[str, str]  # (customer_id, journey)


def group_of(event: Feedback) -> Group | None:
    """The (customer, journey) an answer belongs to; None without a customer id (empty or blank counts as none)."""
    customer = event.customer_id
    if not customer or customer.isspace():
        return None
    return customer, event.journey


def answer_of(event: Feedback) -> Answer:
    interaction = event.interaction_id
    return Answer(
        event.occurred_at,
        event.event_id,
        interaction if interaction and not interaction.isspace() else None,
        event.channel,
        event.touchpoint if event.touchpoint and not event.touchpoint.isspace() else None,
        event.metric,
        event.score,
        event.scale_min,
        event.scale_max,
    )


def nps_category(answer: Answer) -> str:
    return "promoter" if answer.score >= 9 else "passive" if answer.score >= 7 else "detractor"


class Instance(NamedTuple):
    """One journey instance (section 8), without its version and deleted flag (those belong to a revision)."""

    customer_id: str
    journey: str
    start: int
    end: int
    first_channel: str  # the channel of the first answer (report --journeys --by channel)
    answers: int
    contacts: int
    channels: int
    channel_switches: int
    touchpoints: int
    ces_n: int
    ces_high_effort: int
    first_x: float
    last_x: float
    first_low: bool  # first_x < 0.5, exactly (recovery rate's denominator)
    last_nps: str | None
    one_stop: bool
    recovered: bool
    closed: bool

    @property
    def recoverable(self) -> bool:
        return self.answers >= 2 and self.first_low


def instance_of(group: Group, answers: list[Answer], closed: bool) -> Instance:
    """The record of one instance from its answers, in (occurred_at, event_id) order."""
    first, last = answers[0], answers[-1]
    interactions: set[str] = set()
    own_contacts = 0
    channels: set[str] = set()
    touchpoints: set[str] = set()
    switches = ces_n = ces_high = 0
    last_nps: Answer | None = None
    previous_channel: str | None = None
    for answer in answers:
        if answer.interaction_id is None:
            own_contacts += 1
        else:
            interactions.add(answer.interaction_id)
        channels.add(answer.channel)
        if previous_channel is not None and answer.channel != previous_channel:
            switches += 1
        previous_channel = answer.channel
        if answer.touchpoint is not None:
            touchpoints.add(answer.touchpoint)
        if answer.metric == "CES":
            ces_n += 1
            ces_high += answer.low  # high effort: 2 * (s - lo) < d, the same rule as x < 0.5
        elif answer.metric == "NPS":
            last_nps = answer
    contacts = len(interactions) + own_contacts
    return Instance(
        group[0],
        group[1],
        first.occurred_at,
        last.occurred_at,
        first.channel,
        len(answers),
        contacts,
        len(channels),
        switches,
        len(touchpoints),
        ces_n,
        ces_high,
        first.x,
        last.x,
        first.low,
        None if last_nps is None else nps_category(last_nps),
        contacts == 1,
        len(answers) >= 2 and first.low and not last.low,
        closed,
    )


def split(answers: list[Answer], gap_ms: int) -> Iterator[list[Answer]]:
    """The maximal runs of ``answers`` (sorted) whose consecutive answers are at most ``gap_ms`` apart."""
    begin = 0
    for i in range(1, len(answers)):
        if answers[i].occurred_at - answers[i - 1].occurred_at > gap_ms:
            yield answers[begin:i]
            begin = i
    if answers:
        yield answers[begin:]


class JourneyBook:
    """Every (customer, journey)'s answers in order; the instances of a group computed from them."""

    def __init__(self, gap_ms: int) -> None:
        if gap_ms < 0:
            raise ValueError(f"the journey gap must be >= 0 ms, not {gap_ms}")
        self.gap_ms = gap_ms
        self.groups: dict[Group, list[Answer]] = {}

    def add(self, events: Iterable[Feedback]) -> set[Group]:
        """Add de-duplicated valid answers; return the groups they touched (answers without a customer: none)."""
        touched: set[Group] = set()
        for event in events:
            group = group_of(event)
            if group is None:
                continue
            answers = self.groups.get(group)
            answer = answer_of(event)
            if answers is None:
                self.groups[group] = [answer]
            elif answer > answers[-1]:
                answers.append(answer)  # the common case: answers arrive about in order
            else:
                bisect.insort(answers, answer)
            touched.add(group)
        return touched

    def instances(self, group: Group, now_ms: int) -> list[Instance]:
        """The instances of one group, oldest first; closed: end + G < ``now_ms``."""
        return [
            instance_of(group, run, run[-1].occurred_at + self.gap_ms < now_ms)
            for run in split(self.groups.get(group, []), self.gap_ms)
        ]

    def all_instances(self, now_ms: int) -> Iterator[Instance]:
        """Every instance, by (customer, journey, start)."""
        for group in sorted(self.groups):
            yield from self.instances(group, now_ms)

    def answers(self, group: Group) -> list[Answer]:
        return self.groups.get(group, [])


class Revision(NamedTuple):
    """An instance as a stream emits it: with its version, or a replaced one with ``deleted`` true."""

    instance: Instance
    version: int
    deleted: bool


class Revisions:
    """What a group's instances were last emitted as (start -> instance, version); :meth:`revise` gives the
    records that take them to a new list: new and changed instances with a version one higher than any this key
    had, replaced ones (whose start is gone) once more, deleted."""

    def __init__(self) -> None:
        self.emitted: dict[Group, dict[int, tuple[Instance, int]]] = {}

    def revise(self, group: Group, instances: list[Instance]) -> list[Revision]:
        before = self.emitted.get(group, {})
        after: dict[int, tuple[Instance, int]] = {}
        out: list[Revision] = []
        for instance in instances:
            previous = before.get(instance.start)
            if previous is not None and previous[0] == instance:
                after[instance.start] = previous
                continue
            version = 1 if previous is None else previous[1] + 1
            after[instance.start] = (instance, version)
            out.append(Revision(instance, version, False))
        for start, (instance, version) in before.items():
            if start not in after:
                out.append(Revision(instance, version + 1, True))
        if after:
            self.emitted[group] = after
        else:
            self.emitted.pop(group, None)
        return out


def instance_json(instance: Instance, version: int = 1, deleted: bool = False) -> dict[str, Any]:
    """The JSON form of an instance record (section 8): start and end as ISO-8601 UTC."""
    return {
        "customer_id": instance.customer_id,
        "journey": instance.journey,
        "start": iso_utc(instance.start),
        "end": iso_utc(instance.end),
        "first_channel": instance.first_channel,
        "answers": instance.answers,
        "contacts": instance.contacts,
        "channels": instance.channels,
        "channel_switches": instance.channel_switches,
        "touchpoints": instance.touchpoints,
        "ces_n": instance.ces_n,
        "ces_high_effort": instance.ces_high_effort,
        "first_x": instance.first_x,
        "last_x": instance.last_x,
        "last_nps": instance.last_nps,
        "one_stop": instance.one_stop,
        "recovered": instance.recovered,
        "closed": instance.closed,
        "version": version,
        "deleted": deleted,
    }


class JourneyCounts(NamedTuple):
    """The journey KPIs' additive counters (section 8) over a set of closed instances."""

    journeys: int = 0
    one_stop: int = 0
    contacts_sum: int = 0
    switches_sum: int = 0
    high_effort: int = 0
    nps_promoters: int = 0
    nps_passives: int = 0
    nps_detractors: int = 0
    recoverable: int = 0
    recovered: int = 0

    def __add__(self, other: object) -> JourneyCounts:
        if not isinstance(other, JourneyCounts):
            return NotImplemented
        return JourneyCounts(*(a + b for a, b in zip(self, other, strict=True)))


def counts_of(instance: Instance) -> JourneyCounts:
    """The counters of one instance."""
    return JourneyCounts(
        1,
        int(instance.one_stop),
        instance.contacts,
        instance.channel_switches,
        int(instance.ces_high_effort >= 1),
        int(instance.last_nps == "promoter"),
        int(instance.last_nps == "passive"),
        int(instance.last_nps == "detractor"),
        int(instance.recoverable),
        int(instance.recovered),
    )


def journey_kpis(counts: JourneyCounts) -> dict[str, float | None]:
    """The journey KPI values from their counters; None where the denominator is 0."""

    def ratio(num: int, den: int, scale: float = 100.0) -> float | None:
        return scale * num / den if den else None

    nps_n = counts.nps_promoters + counts.nps_passives + counts.nps_detractors
    return {
        "one_stop_rate": ratio(counts.one_stop, counts.journeys),
        "contacts_per_journey": ratio(counts.contacts_sum, counts.journeys, 1.0),
        "switches_per_journey": ratio(counts.switches_sum, counts.journeys, 1.0),
        "high_effort_rate": ratio(counts.high_effort, counts.journeys),
        "journey_nps": ratio(counts.nps_promoters - counts.nps_detractors, nps_n),
        "recovery_rate": ratio(counts.recovered, counts.recoverable),
    }


def counts_by(
    instances: Iterable[Instance], key: str = "journey", window_ms: int | None = None
) -> Mapping[tuple[Any, ...], JourneyCounts]:
    """Counters of the closed instances by ``key`` (an Instance field) and, with ``window_ms``, by the window
    [k * window_ms, (k + 1) * window_ms) that holds their end."""
    out: dict[tuple[Any, ...], JourneyCounts] = {}
    for instance in instances:
        if not instance.closed:
            continue
        at: tuple[Any, ...] = (getattr(instance, key),)
        if window_ms is not None:
            at = (instance.end - instance.end % window_ms, *at)
        out[at] = out.get(at, JourneyCounts()) + counts_of(instance)
    return out
