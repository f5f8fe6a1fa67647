"""The Faust stores of cxpulse's tables, both built on the local copies of streams.agents.local_tables.

- :class:`LocalCopyStore`: Faust's memory store, filled at assignment from a table partition's local copy
  whose checkpoint it reports as ``persisted_offset``: Faust's recovery then reads the changelog from there
  (faust/tables/recovery.py ``_add``; it reads the checkpoint's own message again, the "offset-1 discrepancy"
  of ``_seek_offsets``, which applies the same value twice).  Keys are decoded with the table's
  ``_to_key``/``_to_value``, as ``apply_changelog_batch`` does.  For the small tables the agents read whole
  every tick (positions, the KPI view, the effort detector's).
- :class:`DiskStore`: a table on disk (issue 19: the merge process's memory and restart time grew with the
  retention, ~4 KB and a decode per pane key; the journeys process's with the answers of the journey gap).
  Its data is the local copy itself plus, in memory, what the copy does not have yet (:class:`DiskMapping`):
  a value written stays in memory until its changelog message was acknowledged by Kafka *and* written to the
  copy by a checkpoint, and is read from the copy after that.
  The copy stays a prefix of the changelog (nothing Kafka did not take ever gets there), so exactly-once holds as
  with the memory store: a crash between a write and its delivery loses only what the changelog never had,
  and the agent's own chain (merge: its positions) takes it again.  A restart opens the copies and reads the
  changelogs' tails past their checkpoints: nothing is decoded, whatever the size of the state.  What an agent's
  tick used to find by reading the whole table (the panes to expire, the journey groups due, the closed
  instances of the last 24 h) it reads from the copy's index entries (streams.agents.local_tables).

Which writes are in the copy is told by the ResultsProducer's counts: a value written when ``queued`` messages
had been queued is covered once a flush that started at a count above that has returned (``delivered_through``)
and a checkpoint that started after that has written what was delivered (``checkpointed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson
from confluent_kafka import KafkaException
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT

from streams.agents.keys import table_partition
from streams.agents.local_tables import BUCKET, IndexEntries, LocalTables, index_entries, index_entry
from streams.errors import CxPulseError

LOG = logging.getLogger("cxpulse.tables")
_DELETED = object()  # a key deleted in memory, its tombstone not in the copy yet
_MISSING = object()


def raw_key(key: Any) -> bytes:
    """A table key as its changelog messages carry it: ``json.dumps(key)``, the bytes every copy and changelog
    already holds.  orjson writes the same bytes for an ASCII string without DEL (a test checks every ASCII
    character) in a third of the time; anything else goes through json (its \\u escapes of non-ASCII)."""
    if type(key) is str and key.isascii() and "\x7f" not in key:
        return orjson.dumps(key)
    return json.dumps(key).encode()


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
        copies = await asyncio.to_thread(self._open, local, topic, partitions)  # off the event loop
        for partition in partitions:
            items, loaded, offset = copies[partition]
            for raw_key_, raw_value in items:  # on the event loop: the agents read the same dict
                self._put(table, partition, raw_key_, raw_value)
            self._offsets.pop(partition, None)
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

    def _open(
        self, local: LocalTables, topic: str, partitions: list[int]
    ) -> dict[int, tuple[list[tuple[bytes, bytes]], int, int | None]]:
        """Open the partitions' copies and read their pairs: per partition the pairs, how many keys and the
        checkpoint (blocking, for a thread)."""
        return {
            partition: (items, len(items), offset)
            for partition, (items, offset) in local.load_all(topic, partitions).items()
        }

    def _put(self, table: Any, partition: int, raw_key_: bytes, raw_value: bytes | None) -> None:
        """One changelog entry into the memory store, decoded as Faust's ``apply_changelog_batch`` does."""
        key = table._to_key(json.loads(raw_key_))
        if raw_value is None:
            self.data.pop(key, None)
            self._key_partition.pop(key, None)
        else:
            self.data[key] = table._to_value(orjson.loads(raw_value))
            self._key_partition[key] = partition

    def persisted_offset(self, tp: TP) -> int | None:
        return self._offsets.get(tp.partition)


class DiskMapping(MutableMapping[str, Any]):
    """A table's data: the local copies of its changelog partitions, and in memory the values written since
    (see the module docstring).  A partition whose copy did not open at assignment (RocksDB or Kafka failed) is
    kept in memory whole, like the memory store; any other partition without an open copy (closed at a stop, not
    held) raises on a read.  ``len`` is the copies' key counts as of their checkpoints."""

    def __init__(
        self,
        local: LocalTables,
        topic: str,
        decode: Callable[[bytes], Any],
        clock: Callable[[], int],
        index: IndexEntries | None = None,
        encode: Callable[[Any], bytes] = orjson.dumps,
    ) -> None:
        self.local = local
        self.topic = topic
        self.decode = decode
        self.encode = encode
        self.clock = clock  # the ResultsProducer's count of messages queued
        self.index = index  # the index entries of a raw key and value (LocalTables.index_by)
        self.recent: dict[str, tuple[Any, int]] = {}  # key -> (value or _DELETED, clock when written)
        self.memory_only: set[int] = set()  # partitions whose copy did not open: held in ``recent`` whole
        self._last: tuple[str, Any] | None = None  # the last key read and what it held (`in`, then `[]`)

    def _read(self, key: str) -> Any:
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        entry = self.recent.get(key)
        partition = table_partition(key)
        if entry is not None:
            value = entry[0]
            if type(value) is bytes:  # written encoded (set_encoded): read as the copy's bytes would be
                value = self.decode(value)
        elif partition in self.memory_only:
            value = _DELETED
        else:  # raises when the copy is not open (a stop closed it): never taken for "no such key"
            raw = self.local.get(self.topic, partition, raw_key(key))
            value = _DELETED if raw is None else self.decode(raw)
        self._last = (key, value)
        return value

    def __getitem__(self, key: str) -> Any:
        value = self._read(key)
        if value is _DELETED:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._read(key)
        return default if value is _DELETED else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._read(key) is not _DELETED

    def __setitem__(self, key: str, value: Any) -> None:
        self._last = None
        self.recent[key] = (value, self.clock())

    def set_encoded(self, key: str, raw: bytes) -> None:
        """``self[key] = value`` given the value's encoding (its changelog message's bytes), which memory keeps
        until the checkpoint instead of the value: bytes are no container for the cyclic collector to walk (the
        journeys' states, one an answer and held ~2 s each: a third of that process's CPU was collecting, most
        of it walking them; issue 35).  A table's values are never bytes themselves: a read decodes them."""
        self._last = None
        self.recent[key] = (raw, self.clock())

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._last = None
        self.recent[key] = (_DELETED, self.clock())

    def __iter__(self) -> Iterator[str]:
        """Every key (the copies read whole: for tests and tools, not for an agent's tick)."""
        for key, (value, _) in list(self.recent.items()):
            if value is not _DELETED:
                yield key
        for partition in self.local.partitions(self.topic):
            for raw in self.local.keys(self.topic, partition):
                key = json.loads(raw)
                if key not in self.recent:
                    yield key

    def __len__(self) -> int:
        held = sum(self.local.count(self.topic, partition) for partition in self.local.partitions(self.topic))
        if not self.memory_only:
            return held
        return held + sum(1 for key in list(self.recent) if table_partition(key) in self.memory_only)

    def clear_read(self) -> None:
        """Forget the last key read (its value changed underneath: the copy was written)."""
        self._last = None

    def clear(self) -> None:
        """Forget what is in memory (the copies belong to streams.agents.local_tables)."""
        self._last = None
        self.recent.clear()

    def checkpointed(self, mark: int) -> int:
        """Drop from memory the values a checkpoint wrote to the copies: written before the ``mark``-th message
        was queued (delivered) in a partition whose copy is open; how many were dropped."""
        self._last = None
        done = [
            key
            for key, (_, written) in self.recent.items()
            if written < mark and self.local.has(self.topic, table_partition(key))
        ]
        for key in done:
            del self.recent[key]
        return len(done)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what memory holds for ``partitions`` (revoked, or about to be read from their copies again)."""
        gone = set(partitions)
        self._last = None
        for key in [key for key in self.recent if table_partition(key) in gone]:
            del self.recent[key]

    def index_range(self, partitions: Iterable[int], name: bytes, start: int, end: int) -> list[tuple[str, bytes, int]]:
        """The index entries ``name`` of ``partitions`` with a time in [start, end): (key, value, time) each, from
        the copies' index and from memory, in time order (blocking: the index read, for a thread)."""
        if self.index is None:
            raise TypeError(f"{self.topic}: a table on disk without an index")
        wanted = set(partitions)
        # what memory holds of them, taken once: a checkpoint may move it to the copy meanwhile
        held = {key: entry[0] for key, entry in list(self.recent.items()) if table_partition(key) in wanted}
        found = [
            (key, value, time)
            for partition in sorted(wanted)
            for raw, value, time in self.local.index_range(self.topic, partition, name, start, end)
            if (key := json.loads(raw)) not in held
        ]
        first, stop = index_entry(name, start, b""), index_entry(name, end, b"")
        for key, held_value in held.items():
            if held_value is _DELETED:
                continue
            raw = raw_key(key)
            encoded = held_value if type(held_value) is bytes else self.encode(held_value)
            for indexed, value in index_entries(self.index, raw, encoded):
                if first <= indexed < stop and indexed.endswith(raw):
                    found.append((key, value, BUCKET.unpack_from(indexed, len(name))[0]))
        found.sort(key=lambda item: item[2])
        return found

    def keys_before(self, partitions: Iterable[int], time: int) -> list[str]:
        """The keys of ``partitions`` with an index entry ``t:`` before ``time`` (the panes' start)."""
        return sorted({key for key, _, _ in self.index_range(partitions, b"t:", 0, time)})


class DiskStore(LocalCopyStore):
    """A table on disk (see the module docstring): its ``data`` is a :class:`DiskMapping`."""

    clock: Callable[[], int] = staticmethod(lambda: 0)
    index: IndexEntries | None = None
    encode: Callable[[Any], bytes] = staticmethod(orjson.dumps)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data: DiskMapping | None = None  # type: ignore[assignment]  # made by disk()

    def disk(self) -> DiskMapping:
        """The mapping (made at first use: the table's changelog topic and codecs are known by then)."""
        if self.data is None:
            table: Any = self.table
            local = self.local
            if local is None:
                raise TypeError("a DiskStore needs the process's LocalTables")
            topic = table.changelog_topic.get_topic_name()
            if self.index is not None:
                local.index_by(topic, self.index)
            self.data = DiskMapping(
                local, topic, lambda raw: table._to_value(orjson.loads(raw)), self.clock, self.index, self.encode
            )
        return self.data

    def __getitem__(self, key: Any) -> Any:
        return self.disk()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.disk()

    def get(self, key: Any, default: Any = None) -> Any:
        return self.disk().get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.disk()[key] = value

    def set_encoded(self, key: Any, raw: bytes) -> None:
        self.disk().set_encoded(key, raw)

    def __delitem__(self, key: Any) -> None:
        del self.disk()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.disk())

    def __len__(self) -> int:
        return len(self.disk())

    def keys(self) -> Any:
        return self.disk().keys()

    def items(self) -> Any:
        return self.disk().items()

    def values(self) -> Any:
        return self.disk().values()

    def _clear(self) -> None:
        self.disk().clear()

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        # what memory holds of a revoked partition stays until the recovery completes, as in the memory store (a
        # batch still under way reads it); a partition assigned anew is read from its copy
        topic = self.disk().topic
        self.disk().forget(tp.partition for tp in newly_assigned if tp.topic == topic)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def _open(
        self, local: LocalTables, topic: str, partitions: list[int]
    ) -> dict[int, tuple[list[tuple[bytes, bytes]], int, int | None]]:
        """Open the partitions' copies, nothing read: per partition no pairs, its keys and checkpoint; a partition
        whose copy does not open is held in memory whole (filled by Faust's recovery)."""
        offsets = local.open_all(topic, partitions)
        disk = self.disk()
        for partition in partitions:
            if local.has(topic, partition):
                disk.memory_only.discard(partition)
            else:
                disk.memory_only.add(partition)
        return {partition: ([], local.count(topic, partition), offset) for partition, offset in offsets.items()}

    def _put(self, table: Any, partition: int, raw_key_: bytes, raw_value: bytes | None) -> None:
        """A changelog tail read at assignment is in the copy already (LocalTables.read_tails wrote it); only a
        partition without an open copy keeps it in memory."""
        disk = self.disk()
        if not disk.local.has(disk.topic, partition):
            value = _DELETED if raw_value is None else table._to_value(orjson.loads(raw_value))
            disk.recent[table._to_key(json.loads(raw_key_))] = (value, 0)

    def apply_changelog_batch(
        self, batch: Iterable[EventT[Any]], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        """Faust's recovery (what the tails left): into the copies, in offset order, with their checkpoints."""
        disk = self.disk()
        entries: dict[int, list[tuple[int, bytes, bytes | None]]] = defaultdict(list)
        for event in batch:
            message = event.message
            key = to_key(event.key)
            disk.recent.pop(key, None)
            raw = message.value
            value = None if raw is None else raw if isinstance(raw, bytes) else orjson.dumps(event.value)
            if disk.local.has(disk.topic, message.partition):
                entries[message.partition].append((message.offset, raw_key(key), value))
            else:
                disk.recent[key] = (_DELETED, 0) if value is None else (to_value(event.value), 0)
        for partition, messages in entries.items():
            disk.local.apply(disk.topic, partition, messages)
        disk.clear_read()

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        disk = self.disk()
        active = {tp.partition for tp in active_tps if tp.topic == disk.topic}
        disk.forget({table_partition(key) for key in disk.recent} - active)

    async def keys_before(self, partitions: Iterable[int], time: int) -> list[str]:
        """:meth:`DiskMapping.keys_before`, in a thread."""
        return await asyncio.to_thread(self.disk().keys_before, list(partitions), time)

    async def index_range(
        self, partitions: Iterable[int], name: bytes, start: int, end: int
    ) -> list[tuple[str, bytes, int]]:
        """:meth:`DiskMapping.index_range`, in a thread."""
        return await asyncio.to_thread(self.disk().index_range, list(partitions), name, start, end)


async def keys_before(
    table: Mapping[str, Any], partitions: Iterable[int], time: int, time_of: Callable[[str], int]
) -> list[str]:
    """The keys of ``partitions`` with a time before ``time``: from the index of a table on disk; a scan of any
    other mapping (a table in memory, a test's dict)."""
    store = getattr(table, "data", None)
    if isinstance(store, DiskStore):
        return await store.keys_before(partitions, time)
    wanted = set(partitions)
    return [key for key in list(table.keys()) if table_partition(key) in wanted and time_of(key) < time]
