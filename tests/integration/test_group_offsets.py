"""GroupOffsets (the merge's and the journey agent's view of a group's committed offsets) on the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from streams.config import Settings
from streams.kafka import consumer
from streams.worker.merge_agent import GroupOffsets
from tests.support import RunningBroker, free_ports
from tests.workers import make_pipeline


def test_a_groups_committed_offsets_are_read_without_joining_it(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    settings = make_pipeline(kafka_broker.bootstrap, tmp_path).settings
    group = f"{settings.app_id}-hotpath"
    committer = consumer(settings.kafka, group)
    committer.commit(
        offsets=[TopicPartition(settings.feedback_topic, 0, 5), TopicPartition(settings.feedback_topic, 2, 7)],
        asynchronous=False,
    )
    committer.close()
    offsets = GroupOffsets(settings, group, settings.feedback_topic)
    assert offsets.read() == {0: 5, 2: 7}  # partition 1 has none
    assert offsets.read() == {0: 5, 2: 7}  # the same client again
    offsets.close()


def test_a_failed_read_raises_and_the_next_one_uses_a_new_client(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    offsets = GroupOffsets(Settings(kafka_bootstrap=nobody, data_dir=tmp_path), "g", "t")
    with pytest.raises(Exception):  # noqa: B017 - whatever librdkafka says of a broker that is not there
        offsets.read()
    assert offsets.client is None
