"""Fixtures of the integration tests that run workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import RunningBroker
from tests.workers import Pipeline, make_pipeline


@pytest.fixture()
def pipeline(kafka_broker: RunningBroker, tmp_path: Path) -> Pipeline:
    """Fresh topics and settings for one worker test (3 partitions, metrics off unless a test turns them on)."""
    return make_pipeline(kafka_broker.bootstrap, tmp_path)
