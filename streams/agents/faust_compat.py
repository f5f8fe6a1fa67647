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
  And its changelog messages go through a librdkafka producer (``on_key_set`` / ``on_key_del``, the hooks
  ``Table.__setitem__`` calls) instead of Faust's aiokafka producer: in the backlog shape merge writes about
  one table key per event, and Faust's per-message send path (~50 us each, cProfile) was merge's largest cost.
  Same topic, partition and JSON bytes, so Faust recovers the table from it as before; the caller flushes the
  producer before it acks a batch, as Faust flushes its own before it commits.
- :func:`recovered` / :func:`rebalancing`: readiness, from Faust's table recovery and rebalance state.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

import aiokafka  # type: ignore[import-untyped]  # no type information shipped
import faust
from faust.tables.table import Table
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.agents.keys import table_partition


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        created = super()._create_worker_consumer(transport)
        created._isolation_level = "read_committed"  # see the module docstring
        return created


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


def read_committed(app: faust.App) -> None:
    """Make the app's worker consumer read committed records only (call before the app starts)."""
    cast(Any, app.transport).Consumer = _ReadCommittedConsumer


class ChangelogWriter(Protocol):
    """Where a table's changelog goes: streams.agents.results.ResultsProducer (flushed before a batch is acked)."""

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1) -> None: ...


class KeyPartitionedTable(Table[Any, Any]):
    """A table whose keys are ``"<partition>|..."``: the changelog partition is the key's prefix; the changelog
    is written with the producer given to :meth:`write_changelog_with` (Faust's when none is)."""

    _changelog_writer: ChangelogWriter | None = None

    def partition_for_key(self, key: Any) -> int | None:
        return table_partition(key)

    def write_changelog_with(self, writer: ChangelogWriter) -> None:
        self._changelog_writer = writer

    def on_key_set(self, key: Any, value: Any) -> None:
        if self._changelog_writer is None:
            super().on_key_set(key, value)
        else:
            # plain JSON, what Faust's json codec reads back (its own encoder is ~5x slower: a Python default hook)
            self._send(key, json.dumps(value, separators=(",", ":")).encode())

    def on_key_del(self, key: Any) -> None:
        if self._changelog_writer is None:
            super().on_key_del(key)
        else:
            self._send(key, None)  # a tombstone, as Faust writes it (value None, raw)

    def _send(self, key: Any, value: bytes | None) -> None:
        writer = cast(ChangelogWriter, self._changelog_writer)
        writer.produce(self.changelog_topic.get_topic_name(), value, json.dumps(key).encode(), table_partition(key))


def recovered(app: faust.App) -> bool:
    """True once Faust has recovered the tables of its current assignment."""
    return bool(cast(Any, app.tables).recovery.completed.is_set())


def rebalancing(app: faust.App) -> bool:
    return bool(app.rebalancing)
