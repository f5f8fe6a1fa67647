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
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from streams.core.validate import Feedback
from streams.core.windows import iso_utc

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


def journey_partition(customer_id: str, partitions: int) -> int:
    """The partition of ``<app>-journey-answers`` a customer's answers go to (CRC-32: the same in every process)."""
    return zlib.crc32(customer_id.encode()) % partitions


def answer_row(event: Feedback, customer_id: str) -> list[Any]:
    """One counted answer as the hot path forwards it to the journey agent (a JSON list)."""
    a = answer_of(event)
    return [customer_id, event.journey, a.occurred_at, a.event_id, a.interaction_id, a.channel, a.touchpoint,
            a.metric, a.score, a.scale_min, a.scale_max]  # fmt: skip


def encode_answer_rows(rows: list[list[Any]]) -> bytes:
    """One ``<app>-journey-answers`` message: the rows of one hot-path batch for one partition."""
    return orjson.dumps(rows)


def decode_answer_rows(data: bytes) -> list[tuple[Group, Answer]]:
    """The answers of a ``<app>-journey-answers`` message; ValueError when it is not one."""
    try:
        rows = orjson.loads(data)
        out = []
        new = tuple.__new__  # an Answer from its fields without the generated __new__'s argument parsing
        for row in rows:
            if not (isinstance(row, list) and len(row) == _ROW_LENGTH):
                raise ValueError(f"not a journey answer: {row!r:.200}")
            customer, journey = row[0], row[1]
            if not (isinstance(customer, str) and isinstance(journey, str)):
                raise ValueError(f"not a journey answer: {row!r:.200}")
            out.append(((customer, journey), new(Answer, row[2:])))
        return out
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"not a journey answers message: {exc}") from exc


_ROW_LENGTH = 2 + len(Answer._fields)  # customer, journey, then the Answer's fields


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
    if len(answers) == 1:  # most instances (a backfill's profile: 99,000 of 225,000 rows, instance_of the most)
        return single_instance(group, answers[0], closed)
    return _instance(group, answers, closed)


def single_instance(group: Group, answer: Answer, closed: bool) -> Instance:
    """:func:`_instance` of one answer: one contact, one channel, no switch."""
    low, ces, x = answer.low, answer.metric == "CES", answer.x
    return Instance(
        group[0],
        group[1],
        answer.occurred_at,
        answer.occurred_at,
        answer.channel,
        1,
        1,
        1,
        0,
        0 if answer.touchpoint is None else 1,
        int(ces),
        int(ces and low),
        x,
        x,
        low,
        nps_category(answer) if answer.metric == "NPS" else None,
        True,
        False,
        closed,
    )


def _instance(group: Group, answers: list[Answer], closed: bool) -> Instance:
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


def add_answers(answers: list[Answer], new: Iterable[Answer]) -> bool:
    """Add answers to a sorted list in place, each once (an answer read again after a restart changes nothing);
    True when the list changed."""
    changed = False
    for answer in new:
        if not answers or answer > answers[-1]:
            answers.append(answer)  # the common case: answers arrive about in order
            changed = True
            continue
        at = bisect.bisect_left(answers, answer)
        if at < len(answers) and answers[at][:2] == answer[:2]:
            continue  # this (occurred_at, event_id) is here already
        answers.insert(at, answer)
        changed = True
    return changed


def instances_of(group: Group, answers: list[Answer], gap_ms: int, now_ms: int) -> list[Instance]:
    """The instances of one group's sorted answers, oldest first; closed: end + G < ``now_ms``."""
    return [instance_of(group, run, run[-1].occurred_at + gap_ms < now_ms) for run in split(answers, gap_ms)]


class JourneyBook:
    """Every (customer, journey)'s answers in order; the instances of a group computed from them."""

    def __init__(self, gap_ms: int) -> None:
        if gap_ms < 0:
            raise ValueError(f"the journey gap must be >= 0 ms, not {gap_ms}")
        self.gap_ms = gap_ms
        self.groups: dict[Group, list[Answer]] = {}

    def add(self, events: Iterable[Feedback]) -> set[Group]:
        """Add de-duplicated valid answers; return the groups that changed (answers without a customer: none)."""
        by_group: dict[Group, list[Answer]] = {}
        for event in events:
            group = group_of(event)
            if group is not None:
                by_group.setdefault(group, []).append(answer_of(event))
        touched = set()
        for group, answers in by_group.items():
            if add_answers(self.groups.setdefault(group, []), answers):
                touched.add(group)
        return touched

    def instances(self, group: Group, now_ms: int) -> list[Instance]:
        """The instances of one group, oldest first; closed: end + G < ``now_ms``."""
        return instances_of(group, self.groups.get(group, []), self.gap_ms, now_ms)

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


SENT = 1  # Emitted flag: the revision is known to be in Kafka (a batch flushed it and then went on)
DELETED = 2  # Emitted flag: the last revision of this start said ``deleted``

# start -> (version, end, answers, closed, flags) of the last revision of each start.  A revision is recorded
# here before it is sent (so a crash in between cannot leave an instance in Kafka that the state does not know
# of, which no later revision would ever replace); until it is known sent (SENT), a later revise sends it again.
Emitted = dict[int, tuple[int, int, int, bool, int]]


def revise(
    group: Group, emitted: Emitted, instances: list[Instance], version_at_least: int = 1
) -> tuple[list[Revision], Emitted]:
    """The records that take a group's emitted instances to ``instances``: a new or changed instance, or one
    not known sent, with a version above any its key had (at least ``version_at_least``: the stream passes its
    clock, so a revision emitted again after a crash still gets a higher version); a replaced one (its start is
    gone), deleted, until that deletion is known sent.  Answers are only ever added, so (end, answers, closed)
    tell whether an instance with the same start changed.  Returns the records and the new emitted state, in
    which what the records say is not SENT yet (:func:`confirm`)."""
    after: Emitted = {}
    out: list[Revision] = []
    for instance in instances:
        previous = emitted.get(instance.start)
        signature = (instance.end, instance.answers, instance.closed)
        if previous is not None and previous[4] == SENT and previous[1:4] == signature:
            after[instance.start] = previous
            continue
        version = max(version_at_least, 1 if previous is None else previous[0] + 1)
        after[instance.start] = (version, *signature, 0)
        out.append(Revision(instance, version, False))
    for start, (version, end, answers, closed, flags) in emitted.items():
        if start not in after and flags != SENT | DELETED:
            version = max(version_at_least, version + 1)
            after[start] = (version, end, answers, closed, DELETED)
            out.append(Revision(_replaced(group, start, end, answers, closed), version, True))
    return out, after


def confirm(emitted: Emitted) -> Emitted:
    """The emitted state once its revisions are known sent: deletions done are forgotten."""
    return {start: (*e[:4], SENT) for start, e in emitted.items() if not e[4] & DELETED}


def _replaced(group: Group, start: int, end: int, answers: int, closed: bool) -> Instance:
    """What a deleted revision says of the instance it replaces: its key and last span (the rest is moot)."""
    return Instance(
        group[0], group[1], start, end, "", answers, 0, 0, 0, 0, 0, 0, 0.0, 0.0, False, None, False, False, closed
    )


class Revisions:
    """:func:`revise` with the emitted state of every group kept here (replay-side and tests; the stream keeps it
    in its table)."""

    def __init__(self) -> None:
        self.emitted: dict[Group, Emitted] = {}

    def revise(self, group: Group, instances: list[Instance]) -> list[Revision]:
        out, after = revise(group, self.emitted.get(group, {}), instances)
        after = confirm(after)  # replay sends nothing: what it emits is emitted
        if after:
            self.emitted[group] = after
        else:
            self.emitted.pop(group, None)
        return out


INSTANCE_FIELDS = (
    "customer_id", "journey", "start", "end", "first_channel", "answers", "contacts", "channels", "channel_switches",
    "touchpoints", "ces_n", "ces_high_effort", "first_x", "last_x", "last_nps", "one_stop", "recoverable",
    "recovered", "closed", "version", "deleted",
)  # fmt: skip  # the instance record's fields in the order of schemas/journey_instance.avsc


def instance_row(revision: Revision) -> tuple[Any, ...]:
    """A revision as the values of the record JourneyInstance in INSTANCE_FIELDS' order (what the journeys process
    encodes: schemas.codec.encode_journey_row)."""
    i = revision.instance
    return (
        i.customer_id, i.journey, i.start, i.end, i.first_channel, i.answers, i.contacts, i.channels,
        i.channel_switches, i.touchpoints, i.ces_n, i.ces_high_effort, i.first_x, i.last_x, i.last_nps, i.one_stop,
        i.answers >= 2 and i.first_low, i.recovered, i.closed, revision.version, revision.deleted,
    )  # fmt: skip


def instance_record(revision: Revision) -> dict[str, Any]:
    """A revision as the Avro record JourneyInstance (schemas/journey_instance.avsc)."""
    return dict(zip(INSTANCE_FIELDS, instance_row(revision), strict=True))


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
        "recoverable": instance.recoverable,
        "recovered": instance.recovered,
        "closed": instance.closed,
        "version": version,
        "deleted": deleted,
    }
