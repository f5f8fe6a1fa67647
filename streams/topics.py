"""The Kafka topics cxpulse uses, created with explicit partitions and configs."""

from __future__ import annotations

from typing import NamedTuple

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings
from streams.errors import BrokerError
from streams.kafka import admin_client

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
    ]


class InternalTopics(NamedTuple):
    """The worker's own topics: hot path to merge, and the hot path's de-duplication changelog."""

    partials: str
    seen_ids: str
    answers: str  # the counted answers of every hot-path batch, for the ClickHouse sink


def internal_topics(settings: Settings) -> InternalTopics:
    """The names of the worker's internal topics (prefixed by the app id, like Faust's table changelogs)."""
    return InternalTopics(f"{settings.app_id}-partials", f"{settings.app_id}-seen-ids", f"{settings.app_id}-answers")


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
    ]


def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions ``topic`` has (BrokerError when it does not exist or Kafka is unreachable)."""
    admin = admin_client(bootstrap)
    try:
        metadata = admin.list_topics(topic, timeout=REACH_TIMEOUT_SECONDS)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise BrokerError(f"topic {topic} does not exist on Kafka at {bootstrap}")
    return len(found.partitions)


def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics(timeout=REACH_TIMEOUT_SECONDS).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from exc
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
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
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"could not create topic {name}: {exc}") from exc
    return created
