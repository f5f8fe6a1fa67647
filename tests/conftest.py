"""Test session fixtures: a real single-node Kafka broker on loopback, started once per session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from streams.kafka import admin_client
from streams.topics import TopicSpec, ensure_topics
from tests.support import RunningBroker, start_broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """The real Apache Kafka broker of this test session (`cxpulse broker` on free loopback ports)."""
    running = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def topic_factory(kafka_broker: RunningBroker) -> Iterator[Callable[..., str]]:
    """Creates fresh `test-{uuid}` topics on the session broker and deletes them after the test."""
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_broker.bootstrap, [TopicSpec(name, partitions, {})])
        created.append(name)
        return name

    yield make
    if created:
        admin = admin_client(kafka_broker.bootstrap)  # keep a reference until the futures resolve
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.result()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder: `pytest -m unit` runs the pure-logic tests alone, without a broker; `pytest -m faults`
    the fault suite (brokers of their own, killed and restarted)."""
    for item in items:
        path = str(item.path)
        if "/tests/unit/" in path:
            item.add_marker(pytest.mark.unit)
        elif "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/tests/faults/" in path:
            item.add_marker(pytest.mark.faults)
