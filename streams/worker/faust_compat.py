"""Every use of faust-streaming beyond its documented API, in one place (faust-streaming 0.15.3).

- :func:`read_committed`: Faust's worker consumer reads ``read_uncommitted`` unless the app runs
  ``processing_guarantee="exactly_once"`` (faust/transport/drivers/aiokafka.py, ``_create_worker_consumer``),
  and that mode has open upstream bugs (faust-streaming #323, #517, #177, #47).  The partials come from
  transactional producers, so the merge agent must not see aborted records: the aiokafka consumer Faust builds
  gets ``isolation_level="read_committed"`` before it starts (aiokafka reads ``_isolation_level`` in
  ``start()``).
- :class:`KeyPartitionedTable`: Faust writes a table's changelog to the partition of the *current event*
  (``partition_for_key``, faust/tables/base.py), which a batch spanning partitions, a timer or a read-back
  does not have.  Our table keys start with their partition number, so the partition comes from the key.
- :func:`recovered` / :func:`rebalancing`: readiness, from Faust's table recovery and rebalance state.
"""

from __future__ import annotations

from typing import Any, cast

import aiokafka  # type: ignore[import-untyped]  # no type information shipped
import faust
from faust.tables.table import Table
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        created = super()._create_worker_consumer(transport)
        created._isolation_level = "read_committed"  # noqa: SLF001 - see the module docstring
        return created


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


def read_committed(app: faust.App) -> None:
    """Make the app's worker consumer read committed records only (call before the app starts)."""
    cast(Any, app.transport).Consumer = _ReadCommittedConsumer


class KeyPartitionedTable(Table[Any, Any]):
    """A table whose keys are ``"<partition>|..."``: the changelog partition is the key's prefix."""

    def partition_for_key(self, key: Any) -> int | None:
        return int(str(key).split("|", 1)[0])


def recovered(app: faust.App) -> bool:
    """True once Faust has recovered the tables of its current assignment."""
    return bool(cast(Any, app.tables).recovery.completed.is_set())


def rebalancing(app: faust.App) -> bool:
    return bool(app.rebalancing)
