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
- :class:`LocalCopyStore`: Faust's memory store, filled at assignment from a table partition's local copy
  (streams.agents.local_tables) whose checkpoint it reports as ``persisted_offset``: Faust's recovery then reads
  the changelog from there (faust/tables/recovery.py ``_add``; it reads the checkpoint's own message again, the
  "offset-1 discrepancy" of ``_seek_offsets``, which applies the same value twice).  Keys are decoded with the
  table's ``_to_key``/``_to_value``, as ``apply_changelog_batch`` does.  :class:`KeyPartitionedTable` makes its
  store one of these (``_new_store``) when given the process's LocalTables.
- :func:`recovered` / :func:`rebalancing`: readiness, from Faust's table recovery and rebalance state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol, cast

import aiokafka  # type: ignore[import-untyped]  # no type information shipped
import faust
import orjson
from confluent_kafka import KafkaException
from faust.stores.memory import Store as MemoryStore
from faust.tables.table import Table
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, StoreT

from streams.agents.keys import table_partition
from streams.agents.local_tables import LocalTables
from streams.errors import CxPulseError

LOG = logging.getLogger("cxpulse.tables")


# How long a fetch waits at the broker for data (Faust hard-codes 1,500 ms).  A broker answers the requests of one
# connection in order, so every other request of the consumer (the recovery's ListOffsets, offset fetches) queues
# behind an empty fetch's wait: profiled 2026-12-02, the merge's recovery asked for its 30 changelogs' earliest
# offsets right after a fetch of empty partitions and got the answer 1.5 s later, in every start.
FETCH_MAX_WAIT_MS = 100


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        created = super()._create_worker_consumer(transport)
        created._isolation_level = "read_committed"  # see the module docstring
        created._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read in start(), like the isolation level
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
    _local: LocalTables | None = None

    def partition_for_key(self, key: Any) -> int | None:
        return table_partition(key)

    def write_changelog_with(self, writer: ChangelogWriter) -> None:
        self._changelog_writer = writer

    def keep_local_copy(self, local: LocalTables) -> None:
        """Fill the table at assignment from its local copies (call before the app starts)."""
        self._local = local

    def _new_store(self) -> StoreT[Any, Any]:
        if self._local is None:
            return super()._new_store()
        store = LocalCopyStore(
            "memory://",
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )
        store.local = self._local
        return cast(StoreT[Any, Any], store)

    def on_key_set(self, key: Any, value: Any) -> None:
        if self._changelog_writer is None:
            super().on_key_set(key, value)
        else:
            self._send(key, encode_value(value))

    def on_key_del(self, key: Any) -> None:
        if self._changelog_writer is None:
            super().on_key_del(key)
        else:
            self._send(key, None)  # a tombstone, as Faust writes it (value None, raw)

    def _send(self, key: Any, value: bytes | None) -> None:
        writer = cast(ChangelogWriter, self._changelog_writer)
        writer.produce(self.changelog_topic.get_topic_name(), value, json.dumps(key).encode(), table_partition(key))


def encode_value(value: Any) -> bytes:
    """A table value as plain JSON, what Faust's json codec reads back (Faust's own encoder is ~5x slower: a
    Python default hook).  orjson (0.6 us for a pane value against 7.5 us for json.dumps); json for what orjson
    refuses (a tuple subclass, an int beyond 64 bits).

    orjson also reads the values back (here and, once it is installed, in Faust's json codec: 1.6 us against
    7.2 us); it reads an integer beyond 64 bits as a float.  The largest integers in the tables are the panes'
    sums of x^2 (streams.aggregate: at most 6.35e9 per answer), which reach 2^64 after 2.9e9 answers in one
    pane, far beyond any feed."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


class LocalCopyStore(MemoryStore[Any, Any]):
    """Faust's memory store, filled from the local copy of each changelog partition assigned to it, whose
    checkpoint it reports as the persisted offset (Faust's recovery reads the changelog from there)."""

    local: LocalTables | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._offsets: dict[int, int] = {}

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.local is None:
            return
        table: Any = self.table
        topic = table.changelog_topic.get_topic_name()
        partitions = [tp.partition for tp in newly_assigned if tp.topic == topic]
        if partitions:
            await self._restore(table, topic, partitions, self.local)

    async def _restore(self, table: Any, topic: str, partitions: list[int], local: LocalTables) -> None:
        """Fill the partitions from their copies (opened and read in a thread: 30 RocksDB opens on the event loop
        held a start-up for ~0.9 s under load), then from the changelog past each copy's checkpoint (read with
        librdkafka, in a thread); Faust's recovery reads whatever is left after the offsets reported here."""
        starts = {}
        copies = await asyncio.to_thread(local.load_all, topic, partitions)  # opened and read off the event loop
        for partition in partitions:
            items, offset = copies[partition]
            self._offsets.pop(partition, None)
            loaded = 0
            for raw_key, raw_value in items:
                self._put(table, partition, raw_key, raw_value)
                loaded += 1
            if offset is not None:
                self._offsets[partition] = offset
                local.loaded(table.name, topic, partition, loaded, offset)
            starts[partition] = 0 if offset is None else offset + 1
        try:
            tails = await asyncio.to_thread(local.read_tails, topic, starts)
        except (CxPulseError, KafkaException) as exc:
            LOG.warning("%s %s: reading the changelog's tail failed (%s); Faust reads it", topic, partitions, exc)
            return
        for partition, (latest, last) in tails.items():
            for tail_key, tail_value in latest.items():
                self._put(table, partition, tail_key, tail_value)
            self._offsets[partition] = last
            local.read(table.name, len(latest))

    def _put(self, table: Any, partition: int, raw_key: bytes, raw_value: bytes | None) -> None:
        """One changelog entry into the memory store, decoded as Faust's ``apply_changelog_batch`` does."""
        key = table._to_key(json.loads(raw_key))
        if raw_value is None:
            self.data.pop(key, None)
            self._key_partition.pop(key, None)
        else:
            self.data[key] = table._to_value(orjson.loads(raw_value))
            self._key_partition[key] = partition

    def persisted_offset(self, tp: TP) -> int | None:
        return self._offsets.get(tp.partition)


def recovered(app: faust.App) -> bool:
    """True once Faust has recovered the tables of its current assignment."""
    return bool(cast(Any, app.tables).recovery.completed.is_set())


def rebalancing(app: faust.App) -> bool:
    return bool(app.rebalancing)
