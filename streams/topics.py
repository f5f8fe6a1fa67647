"""The Kafka topics cxpulse uses, created with explicit partitions and configs."""

from __future__ import annotations

from typing import NamedTuple

from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings
from streams.errors import BrokerError
from streams.kafka import Kafka, admin_client, reach

CREATE_TIMEOUT_SECONDS = 30.0
REACH_TIMEOUT_SECONDS = 10.0  # an unreachable bootstrap is reported after this long
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


def internal_topics(settings: Settings) -> InternalTopics:
    """The names of the worker's internal topics (prefixed by the app id, like Faust's table changelogs)."""
    app = settings.app_id
    return InternalTopics(f"{app}-partials", f"{app}-seen-ids", f"{app}-answers", f"{app}-journey-answers")


def internal_topic_specs(settings: Settings, feedback_partitions: int) -> list[TopicSpec]:
    """The internal topics with their configs.

    ``-seen-ids`` needs one partition per feedback partition (entry of source partition p in partition p).  It
    is not compacted: an id can be forgotten once no event with it can be accepted any more (occurred_at within
    the retention, at most 5 minutes ahead of the clock), so Kafka's time retention deletes old entries.
    """
    names = internal_topics(settings)
    seen_retention_ms = (settings.retention_seconds + DEFAULT_FUTURE_TOLERANCE_SECONDS + 3600) * 1000
    return [
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


def partition_count(kafka: Kafka, topic: str) -> int:
    """How many partitions ``topic`` has (BrokerError when it does not exist or Kafka cannot be used)."""
    metadata = reach(kafka, topic, timeout=REACH_TIMEOUT_SECONDS)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise BrokerError(f"topic {topic} does not exist on Kafka at {kafka}")
    return len(found.partitions)


def ensure_topics(kafka: Kafka, specs: list[TopicSpec], replicas: int = 1) -> list[str]:
    """Create the topics that do not exist yet, each with ``replicas`` replicas; return the names created."""
    existing = set(reach(kafka, timeout=REACH_TIMEOUT_SECONDS).topics)
    admin = admin_client(kafka)
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=replicas, config=s.config)
        for s in specs
        if s.name not in existing
    ]
    if not new:
        return []
    futures = admin.create_topics(new, operation_timeout=CREATE_TIMEOUT_SECONDS)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                continue
            if "AUTHORIZATION_FAILED" in str(exc):
                raise BrokerError(
                    f"could not create topic {name}: not authorized (the principal needs Create on it, or the topic "
                    "made by an administrator; `cxpulse acls` prints what each role needs)"
                ) from exc
            raise BrokerError(f"could not create topic {name}: {exc}") from exc
    return created
