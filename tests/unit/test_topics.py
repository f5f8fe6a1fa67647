"""Looking topics up: a topic known to exist that a broker does not know yet (Kafka tells its brokers of a new
topic a moment after the controller took it) is looked for again, not read as missing; one that stays unknown past
the bound is missing, and a topic nobody made fails at once."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from streams import topics
from streams.errors import TopicMissingError
from streams.topics import KafkaWait, describe_topics

pytestmark = pytest.mark.unit


class LaggingBroker:
    """What ``reach`` answers: ``topic`` unknown for the first ``lag`` looks, then known with two led partitions."""

    def __init__(self, topic: str, lag: int) -> None:
        self.topic, self.lag, self.looks = topic, lag, 0

    def __call__(self, kafka: Any, topic: str | None = None, timeout: float = 0.0) -> Any:
        self.looks += 1
        partitions = {p: SimpleNamespace(leader=1) for p in (0, 1)}
        known = {} if self.looks <= self.lag else {self.topic: SimpleNamespace(error=None, partitions=partitions)}
        return SimpleNamespace(topics=known, cluster_id="c1")


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> LaggingBroker:
    lagging = LaggingBroker("cx-routed", lag=5)
    monkeypatch.setattr(topics, "reach", lagging)
    monkeypatch.setattr(topics, "WAIT_POLL_SECONDS", 0.001)
    return lagging


def test_a_known_topic_the_broker_does_not_know_yet_is_looked_for_again(
    broker: LaggingBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cxpulse.topics"):
        found = describe_topics("127.0.0.1:9", ["cx-routed"], KafkaWait(reached=True), propagation=30.0)
    assert found.partitions == {"cx-routed": 2}
    assert broker.looks == 6
    waits = [r.getMessage() for r in caplog.records]
    assert len(waits) == 2, waits  # once when the wait began, once when it ended: never once per look
    assert "cx-routed not known to the broker yet" in waits[0]


def test_without_propagation_an_unknown_topic_is_missing_at_once(broker: LaggingBroker) -> None:
    with pytest.raises(TopicMissingError, match="topic cx-routed does not exist"):
        describe_topics("127.0.0.1:9", ["cx-routed"], KafkaWait(reached=True))
    assert broker.looks == 1


def test_a_topic_unknown_past_the_propagation_bound_is_missing(
    broker: LaggingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.lag = 10**9
    clock = iter(float(i) for i in range(10**6))
    monkeypatch.setattr(topics.time, "monotonic", lambda: next(clock))
    with pytest.raises(TopicMissingError, match="topic cx-routed does not exist"):
        describe_topics("127.0.0.1:9", ["cx-routed"], KafkaWait(reached=True), propagation=30.0)
    assert 5 < broker.looks < 40


def test_cxpulse_topics_returns_what_it_created_once_the_broker_knows_it(
    broker: LaggingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cxpulse topics` (no wait) then the next command: the topics it reports created are usable."""
    broker.lag = 3

    class Admin:
        def create_topics(self, new: list[Any], operation_timeout: float) -> dict[str, Any]:
            return {t.topic: SimpleNamespace(result=lambda: None) for t in new}

    monkeypatch.setattr(topics, "admin_client", lambda kafka: Admin())
    # the first look (which topics exist) is before the create: the broker does not know it then either
    created = topics.ensure_topics("127.0.0.1:9", [topics.TopicSpec("cx-routed", 2, {})])
    assert created == ["cx-routed"]
    assert broker.looks == 4  # the existing-topics look and two more unknown, then known
