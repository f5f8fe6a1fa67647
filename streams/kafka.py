"""Kafka clients (confluent-kafka) configured the cxpulse way: librdkafka's own log lines go to Python logging
at DEBUG instead of stderr, so a broker that is not up yet does not flood the terminal."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

LOG = logging.getLogger("cxpulse.kafka")


def _base(bootstrap: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": LOG, "log_level": 3}
    config.update(extra or {})
    return config


def admin_client(bootstrap: str, **extra: Any) -> AdminClient:
    """An AdminClient for ``bootstrap``."""
    return AdminClient(_base(bootstrap, extra))


def producer(bootstrap: str, **extra: Any) -> Producer:
    """An idempotent Producer for ``bootstrap`` (acks=all; retries never duplicate)."""
    return Producer(_base(bootstrap, {"enable.idempotence": True, "acks": "all", **extra}))


def consumer(bootstrap: str, group_id: str, **extra: Any) -> Consumer:
    """A Consumer in ``group_id`` that starts at the earliest offset and commits by hand."""
    settings = {"group.id": group_id, "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra}
    return Consumer(_base(bootstrap, settings))
