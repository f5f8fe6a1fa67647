"""Fixtures of the fault suite: brokers the test owns (killed, stopped, restarted), never the session's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import LocalCluster


@pytest.fixture()
def own_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Makes and starts a LocalCluster of ``size`` nodes for this test; every node is killed at the end."""
    made: list[LocalCluster] = []

    def make(size: int = 1, **options: object) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"kafka-{len(made)}", size, **options)  # type: ignore[arg-type]
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
