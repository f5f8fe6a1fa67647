"""Fixtures of the integration tests that run workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RunningBroker
from tests.workers import STARTED, Pipeline, batch_errors, make_pipeline


@pytest.fixture(autouse=True)
def no_unexpected_batch_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test whose workers logged a failed batch it did not expect: the Faust agents' Runner acks a batch
    whose handling raised (the agent reads it back), and the hot path reads a failed batch again, so a broken
    batch step can still end in the right numbers.  A test that breaks batches on purpose says so with
    ``@pytest.mark.batch_errors``."""
    STARTED.clear()
    yield
    if request.node.get_closest_marker("batch_errors") is None:
        found = {str(log): lines[:3] for log in dict.fromkeys(STARTED) if (lines := batch_errors(log))}
        assert not found, f"unexpected batch errors: {found}"


@pytest.fixture()
def pipeline(kafka_broker: RunningBroker, tmp_path: Path) -> Pipeline:
    """Fresh topics and settings for one worker test (3 partitions, metrics off unless a test turns them on)."""
    return make_pipeline(kafka_broker.bootstrap, tmp_path)
