"""The Kafka topics cxpulse uses, created with explicit partitions and configs, and looked up with the
difference between "does not exist", "not authorized" and "not ready yet" kept.

A topic created a moment ago (by this process or by ``cxpulse topics`` run beside it) has no leader for a
moment, and a broker that restarts answers without leaders for a while: a worker starting then waits for them
(:data:`TOPIC_WAIT_SECONDS`, logged once when the wait begins and once when it ends) instead of reading them as
missing.  What waiting cannot fix fails at once, in one line: no such topic, no right to it, refused credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings
from streams.errors import BrokerError, KafkaUnreachableError, NotAuthorizedError, TopicMissingError
from streams.kafka import Kafka, admin_client, reach

LOG = logging.getLogger("cxpulse.topics")
CREATE_TIMEOUT_SECONDS = 30.0
REACH_TIMEOUT_SECONDS = 10.0  # an unreachable bootstrap is reported after this long
TOPIC_WAIT_SECONDS = 120.0  # a worker starting waits this long for leaders, or for a broker that went away
WAIT_POLL_SECONDS = 0.5  # how often it looks again meanwhile
# A CreateTopics answer means the controller took the topic; each broker learns of it later from the metadata log
# (seconds on a loaded KRaft broker beside a dedicated controller: c19d6b2's CI read "does not exist" right after
# the create).  A topic that is known to exist (just created, or seen by the supervisor) but that a broker answers
# as unknown is looked for again this long before it counts as missing: librdkafka's own
# topic.metadata.propagation.max.ms default, for the same race (confluentinc/librdkafka#2858).
TOPIC_PROPAGATION_SECONDS = 30.0
ACLS_HINT = "`cxpulse acls` prints the grants each role needs"
# create_topics errors that a moment may fix (a broker restarting, a controller moving)
_TRANSIENT_CREATE = {
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_CONTROLLER,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.BROKER_NOT_AVAILABLE,
}
PARTIALS_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # one hot-path batch's partials for one partition, with room


class TopicSpec(NamedTuple):
    """A topic and the configs it is created with."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics of the pipeline (DESIGN.md): feedback in, dead letters, window results, alerts."""
    week_ms = str(7 * 86400 * 1000)
    return [
        TopicSpec(settings.feedback_topic, settings.partitions, {"retention.ms": week_ms}),
        TopicSpec(settings.dlq_topic, settings.partitions, {"retention.ms": str(30 * 86400 * 1000)}),
        # results are versioned upserts per group: compaction keeps the latest revision of each
        TopicSpec(
            settings.results_topic,
            settings.partitions,
            {"cleanup.policy": "compact,delete", "retention.ms": week_ms},
        ),
        TopicSpec(settings.alerts_topic, 1, {"retention.ms": str(30 * 86400 * 1000)}),
        TopicSpec(settings.followups_topic, settings.partitions, {"retention.ms": str(30 * 86400 * 1000)}),
        # journey instances are versioned upserts per (customer, journey, start), like the results
        TopicSpec(
            settings.journeys_topic,
            settings.partitions,
            {"cleanup.policy": "compact,delete", "retention.ms": str(30 * 86400 * 1000)},
        ),
    ]


class InternalTopics(NamedTuple):
    """The worker's own topics: hot path to merge, and the hot path's de-duplication changelog."""

    partials: str
    seen_ids: str
    answers: str  # the counted answers of every hot-path batch, for the ClickHouse sink
    journey_answers: str  # the counted answers with a customer id, by customer, for the journey agent
    routed: str  # the valid answers, by event id: every copy of an answer meets one de-duplicator


def internal_topics(settings: Settings) -> InternalTopics:
    """The names of the worker's internal topics (prefixed by the app id, like Faust's table changelogs)."""
    app = settings.app_id
    return InternalTopics(
        f"{app}-partials", f"{app}-seen-ids", f"{app}-answers", f"{app}-journey-answers", f"{app}-routed"
    )


def internal_topic_specs(settings: Settings, feedback_partitions: int) -> list[TopicSpec]:
    """The internal topics with their configs.

    ``-routed`` has as many partitions as the feedback topic, and ``-seen-ids`` one per routed partition (the ids
    counted in routed partition q in partition q).  It is not compacted: an id can be forgotten once no event with
    it can be accepted any more (occurred_at within the retention, at most 5 minutes ahead of the clock), so
    Kafka's time retention deletes old entries.
    """
    names = internal_topics(settings)
    seen_retention_ms = (settings.retention_seconds + DEFAULT_FUTURE_TOLERANCE_SECONDS + 3600) * 1000
    return [
        TopicSpec(
            names.routed,
            feedback_partitions,
            {"retention.ms": str(7 * 86400 * 1000), "max.message.bytes": str(PARTIALS_MAX_MESSAGE_BYTES)},
        ),
        TopicSpec(
            names.partials,
            settings.partitions,
            {"retention.ms": str(7 * 86400 * 1000), "max.message.bytes": str(PARTIALS_MAX_MESSAGE_BYTES)},
        ),
        TopicSpec(names.seen_ids, feedback_partitions, {"retention.ms": str(seen_retention_ms)}),
        TopicSpec(
            names.answers,
            feedback_partitions,
            {"retention.ms": str(7 * 86400 * 1000), "max.message.bytes": str(PARTIALS_MAX_MESSAGE_BYTES)},
        ),
        TopicSpec(
            names.journey_answers,
            settings.partitions,
            {"retention.ms": str(7 * 86400 * 1000), "max.message.bytes": str(PARTIALS_MAX_MESSAGE_BYTES)},
        ),
    ]


# The Faust tables of the worker's Faust processes and the topic whose partitions each one follows.  Their
# changelogs (``<app>-<table>-changelog``, compacted) are created with the other internal topics, before Faust
# starts: Faust would create them itself, but its recovery looks for them first and logs an ERROR for each one
# a fresh app id does not have yet.
FAUST_TABLES = (
    ("panes", "partials"),
    ("positions", "partials"),
    ("kpi-view", "results"),
    ("effort-panes", "results"),
    ("effort-state", "results"),
    ("journeys-state", "journey-answers"),  # table "state" of the journeys process (its app id: <app>-journeys)
)


def changelog_specs(
    settings: Settings, partials_partitions: int, results_partitions: int, journey_partitions: int
) -> list[TopicSpec]:
    """The changelog topics of the worker's Faust tables: compacted (Faust's own topic config), with a segment
    rolled every ``changelog_segment_seconds``.  Kafka compacts only outside a partition's active segment, which
    by default rolls at 1 GB or after 7 days: until then a restore from the changelog reads every revision of
    every key (4.4 records per remembered answer at 1,000,000 answers, docs/benchmarks.md)."""
    counts = {"partials": partials_partitions, "results": results_partitions, "journey-answers": journey_partitions}
    config = {"cleanup.policy": "compact", "segment.ms": str(settings.changelog_segment_seconds * 1000)}
    return [
        TopicSpec(f"{settings.app_id}-{table}-changelog", counts[follows], dict(config))
        for table, follows in FAUST_TABLES
    ]


class TopicsFound(NamedTuple):
    """What :func:`describe_topics` found: the cluster's id and each topic's partition count."""

    cluster_id: str
    partitions: dict[str, int]


class KafkaWait:
    """How a caller waits for Kafka: for up to ``seconds`` per episode, logged once when an episode begins and once
    when it ends (never once per look).  Kafka unreachable is waited for only once it has answered through this
    object (``reached``): a wrong address still fails at once, a broker restarting after the first answer is
    waited for.  One object serves a whole start-up (several calls); ``KafkaWait(0)`` never waits."""

    def __init__(self, seconds: float = TOPIC_WAIT_SECONDS, log: logging.Logger = LOG, reached: bool = False) -> None:
        self.seconds = seconds
        self.log = log
        self.reached = reached  # True in a worker's processes: the supervisor reached Kafka before it started them
        self.since: float | None = None
        self.why = ""

    def answered(self) -> None:
        self.reached = True

    def again(self, why: str, unreachable: KafkaUnreachableError | None = None) -> None:
        """Not there yet because of ``why``: wait a little, or raise once the bound has passed (``unreachable``
        itself when Kafka never answered)."""
        if unreachable is not None and not self.reached:
            raise unreachable
        self.why = why
        now = time.monotonic()
        if self.since is None:
            self.since = now
            if self.seconds > 0:
                self.log.warning("waiting for Kafka: %s (for up to %.0f s)", why, self.seconds)
        if now - self.since >= self.seconds:
            self.since = None  # a caller that goes on waiting begins a new episode (and logs it)
            waited = f" (waited {self.seconds:.0f} s)" if self.seconds > 0 else ""
            raise unreachable or BrokerError(f"{why}{waited}")
        time.sleep(WAIT_POLL_SECONDS)

    def over(self) -> None:
        if self.since is not None and self.seconds > 0:
            self.log.warning("Kafka ready after %.1f s of waiting (%s)", time.monotonic() - self.since, self.why)
        self.since = None


def _topic_state(kafka: Kafka, topic: str, metadata: Any) -> int | str:
    """The partition count of a usable topic (every partition led), or why it is not usable yet; raises what
    waiting cannot fix."""
    found = metadata.topics.get(topic)
    code = found.error.code() if found is not None and found.error is not None else None
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise NotAuthorizedError(
            f"not authorized to use topic {topic} on Kafka at {kafka} (the principal needs Describe on it; {ACLS_HINT})"
        )
    if found is None or code == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise TopicMissingError(f"topic {topic} does not exist on Kafka at {kafka}")
    if code is not None:
        return f"topic {topic}: {found.error.str()}"
    leaderless = sorted(p for p, meta in found.partitions.items() if meta.leader < 0)
    if not found.partitions or leaderless:
        return f"topic {topic} has no leader yet for partitions {leaderless}"
    return len(found.partitions)


def describe_topics(
    kafka: Kafka, topics: Sequence[str], wait: KafkaWait | None = None, propagation: float = 0.0
) -> TopicsFound:
    """Each topic's partition count, once every partition of every topic has a leader.

    A topic that does not exist (TopicMissingError) or may not be described (NotAuthorizedError) fails at once, as
    do refused credentials (KafkaRefusedError); with ``propagation`` (topics known to exist: just created, or
    seen by the supervisor), a topic the broker does not know yet is looked for again that long first
    (:data:`TOPIC_PROPAGATION_SECONDS`).  A topic without leaders yet, or Kafka gone after it answered, is waited
    for as ``wait`` says (:class:`KafkaWait`), then BrokerError."""
    wait = wait or KafkaWait(0)
    counts: dict[str, int] = {}
    cluster_id = ""
    missing_since: float | None = None
    while True:
        try:
            for topic in topics:
                if topic in counts:
                    continue
                metadata = reach(kafka, topic, timeout=REACH_TIMEOUT_SECONDS)
                wait.answered()
                cluster_id = metadata.cluster_id or cluster_id
                try:
                    state = _topic_state(kafka, topic, metadata)
                except TopicMissingError:
                    missing_since = time.monotonic() if missing_since is None else missing_since
                    if time.monotonic() - missing_since >= propagation:
                        raise
                    state = f"topic {topic} not known to the broker yet (a new topic reaches each broker later)"
                if isinstance(state, str):
                    wait.again(state)
                    break
                counts[topic] = state
        except KafkaUnreachableError as exc:
            wait.again(str(exc), exc)
        if len(counts) == len(set(topics)):
            wait.over()
            return TopicsFound(cluster_id, counts)


def partition_count(kafka: Kafka, topic: str, wait: KafkaWait | None = None, propagation: float = 0.0) -> int:
    """How many partitions ``topic`` has (:func:`describe_topics` for one topic)."""
    return describe_topics(kafka, [topic], wait, propagation).partitions[topic]


def ensure_topics(kafka: Kafka, specs: list[TopicSpec], replicas: int = 1, wait: KafkaWait | None = None) -> list[str]:
    """Create the topics that do not exist yet, each with ``replicas`` replicas; return the names created.

    Without a wait this is ``cxpulse topics``: Kafka unreachable or a failed create ends it.  With one (a worker
    starting), a broker gone after it answered or a create that a moment may fix is tried again as ``wait`` says,
    and the topics are returned only once every partition has a leader.  A topic that another process created
    meanwhile (``cxpulse topics`` beside a starting worker) is no error.  Either way, the topics it created are
    returned once the broker knows them and every partition has a leader (:data:`TOPIC_PROPAGATION_SECONDS`)."""
    wait = wait or KafkaWait(0)
    created: list[str] = []
    while True:
        try:
            existing = set(reach(kafka, timeout=REACH_TIMEOUT_SECONDS).topics)
            wait.answered()
            problem = _create(kafka, [s for s in specs if s.name not in existing], replicas, created)
        except KafkaUnreachableError as exc:
            wait.again(str(exc), exc)
            continue
        if problem is None:
            break
        wait.again(problem)
    wait.over()
    if wait.seconds > 0:
        describe_topics(kafka, [s.name for s in specs], wait, TOPIC_PROPAGATION_SECONDS)
    elif created:  # `cxpulse topics`: what it says it created can be used by the next command
        usable = KafkaWait(TOPIC_PROPAGATION_SECONDS, wait.log, reached=True)
        describe_topics(kafka, created, usable, TOPIC_PROPAGATION_SECONDS)
    return created


def _create(kafka: Kafka, missing: list[TopicSpec], replicas: int, created: list[str]) -> str | None:
    """Create ``missing`` (appending what was created to ``created``); return what a moment may fix, if anything
    failed so, and raise what it will not fix."""
    if not missing:
        return None
    admin = admin_client(kafka)
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replicas, config=s.config) for s in missing]
    transient = None
    for name, future in admin.create_topics(new, operation_timeout=CREATE_TIMEOUT_SECONDS).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                raise NotAuthorizedError(
                    f"could not create topic {name}: not authorized (the principal needs Create on it, or the topic "
                    f"made by an administrator; {ACLS_HINT})"
                ) from exc
            if error.code() in _TRANSIENT_CREATE or error.retriable():
                transient = f"could not create topic {name}: {error.str()}"
                continue
            raise BrokerError(f"could not create topic {name}: {error.str()}") from exc
    return transient
