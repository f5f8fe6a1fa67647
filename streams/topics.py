"""The Kafka topics cxpulse uses, created with explicit partitions and configs."""

from __future__ import annotations

from typing import NamedTuple

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

from streams.config import Settings
from streams.errors import BrokerError
from streams.kafka import admin_client

CREATE_TIMEOUT_SECONDS = 30.0
REACH_TIMEOUT_SECONDS = 10.0  # an unreachable bootstrap is reported after this long


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
    ]


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
