"""Local copies of a Faust process's tables (issue 19): a restart loads them, and Faust reads each table's
changelog only past the copy's checkpoint instead of from its start.

Faust's own ``rocksdb://`` store writes a table's local copy when the table changes, before the changelog
message is delivered, and records the offset when it is: a process killed in between keeps a local value the
changelog never got.  After a restart the merge agent would find that partial applied already, skip it, and its
result would never be emitted.  Here the local copy is written only from the changelog messages Kafka has
acknowledged (the ResultsProducer's delivery reports; its producer is idempotent, so they come in offset order),
in offset order, so each partition's copy is a prefix of its changelog, and its checkpoint is the offset of the
last message in it.  A table in memory (Faust's memory store) is filled from its copy at assignment, which
replaces the reading of a changelog from its start (what made a restart take minutes); a table on disk
(streams.agents.stores.DiskStore) reads its copy in place and keeps in memory only what the copy does not have yet.

A topic given an index (:meth:`LocalTables.index_by`) also has index entries in its copy, named and ordered by
a time (the panes' start; a journey group's due time and its closed instances' ends), derived from each key and
value and written in the same atomic write as the key (the old value's entries deleted):
:meth:`LocalTables.index_range` reads the entries of a time range without a scan of the rest (the retention's
expiry, the journeys' due groups and 24-hour totals).

Each changelog partition has a RocksDB database (rocksdict) under ``<data dir>/<process>/tables/<topic>/p<N>``
holding the changelog's raw keys and values, the checkpoint, the copy's origin (Kafka cluster and topic, the
format), its key count and the index entries.  A copy of another cluster or format, a checkpoint past the
changelog's end (a recreated topic) or a database that does not open is not used (logged): it is rebuilt from
the changelog.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

from streams.agents.metrics import WorkerMetrics
from streams.errors import CxPulseError
from streams.kafka import Kafka, read_range
from streams.kafka import consumer as new_consumer

LOG = logging.getLogger("cxpulse.tables")
FORMAT = 2  # 2: index entries and key count (a copy of format 1 is rebuilt from its changelog)
CHECKPOINT_SECONDS = 2.0  # how often delivered changelog messages are written to the local copies
META = b"\x00cxpulse:"  # table keys are JSON (they never start with a NUL byte)
OFFSET_KEY, ORIGIN_KEY, COUNT_KEY = META + b"offset", META + b"origin", META + b"count"
BUCKET = struct.Struct(">Q")  # an index entry: META + name (b"t:") + its time, 8 bytes big-endian + the raw key
IndexEntries = Callable[[bytes, bytes], list[tuple[bytes, bytes]]]  # (raw key, raw value) -> (entry, value)s


def index_entry(name: bytes, time_ms: int, raw_key: bytes) -> bytes:
    """An index entry's key (without META): ``name`` + the time + the raw key."""
    return name + BUCKET.pack(max(0, time_ms)) + raw_key


# RocksDB's memory, for all the copies of a process together.  With RocksDB's defaults each copy (a partition of a
# table) keeps up to 64 MB of writes in memory (its memtable, flushed to disk only when full) and has a block cache
# of its own: a process's memory grew with its partitions until each memtable filled (240 MB written to six
# copies: 256 MB of anonymous memory, nothing flushed; bounded as here: 47 MB; issue 35's worker under 500 MB).
# One write buffer manager flushes when the process's memtables reach MEMTABLE_BYTES; one block cache serves the
# reads of every copy.
MEMTABLE_BYTES = 32 * 1024 * 1024
WRITE_BUFFER_BYTES = 8 * 1024 * 1024  # a copy's own memtable at most (RocksDB's default: 64 MB)
BLOCK_CACHE_BYTES = 32 * 1024 * 1024
WATERMARK_SECONDS = 10.0
TAIL_SECONDS = 300.0  # reading one changelog partition's tail at assignment; past it Faust reads the rest


class TablesClosedError(CxPulseError):
    """A table on disk was read after the process closed its local copies (it is stopping)."""


class LocalTables:
    """The local copies of one process's table changelogs (see the module docstring)."""

    def __init__(self, kafka: Kafka, directory: Path, metrics: WorkerMetrics | None = None) -> None:
        self.kafka = kafka
        self.metrics = metrics
        self.directory = directory
        self._pending: dict[tuple[str, int], dict[bytes, tuple[int, bytes | None]]] = {}  # key -> (offset, value)
        self._acknowledged = 0
        self._lock = threading.Lock()  # delivery reports arrive on the flushing thread
        self._write_lock = threading.Lock()  # one checkpoint at a time; databases open and close under it
        self._dbs: dict[tuple[str, int], Rdict] = {}
        self._copied: dict[tuple[str, int], int] = {}  # open copy -> its checkpoint (older messages are skipped)
        self._counts: dict[tuple[str, int], int] = {}  # open copy -> its keys
        self._client: Consumer | None = None
        self._tail_reader: Consumer | None = None
        self.stopping = threading.Event()  # a stop: a tail being read is left to Faust
        self.should_stop: Callable[[], bool] = lambda: False  # the process is stopping (its Faust app's view)
        self.cluster = ""
        self._indexes: dict[str, IndexEntries] = {}  # topic -> the index entries of a key and value
        self.closed = False
        self._memtables = WriteBufferManager(MEMTABLE_BYTES, False)  # shared by every copy (see MEMTABLE_BYTES)
        self._block_cache = Cache(BLOCK_CACHE_BYTES)

    def _options(self) -> Options:
        """A copy's RocksDB options: raw keys and values; the process's memtable budget and block cache."""
        options = Options(raw_mode=True)
        options.set_write_buffer_manager(self._memtables)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        table = BlockBasedOptions()
        table.set_block_cache(self._block_cache)
        options.set_block_based_table_factory(table)
        return options

    def rocksdb_memory(self) -> tuple[int, int]:
        """Bytes the copies' memtables and their block cache hold now."""
        return self._memtables.get_usage(), self._block_cache.get_usage()

    def index_by(self, topic: str, entries: IndexEntries) -> None:
        """Index the copies of ``topic`` by ``entries(raw key, raw value)``: (:func:`index_entry`, value) pairs,
        for :meth:`index_range`."""
        self._indexes[topic] = entries

    def delivered(self, topic: str, partition: int, offset: int, key: bytes, value: bytes | None) -> None:
        """A changelog message was acknowledged (called from the producer's delivery report): the key's newest
        value until the next checkpoint (the producer is idempotent: a partition's reports come in offset order)."""
        with self._lock:
            entries = self._pending.get((topic, partition))
            if entries is None:
                entries = self._pending[(topic, partition)] = {}
            entries[key] = (offset, value)
            self._acknowledged += 1

    def checkpoint(self) -> int:
        """Write the acknowledged changelog messages to their copies (the newest value of each key), each
        partition's with its new checkpoint in one atomic write; return how many messages that covered."""
        with self._lock:
            pending, self._pending = self._pending, {}
            acknowledged, self._acknowledged = self._acknowledged, 0
        with self._write_lock:
            for (topic, partition), entries in pending.items():
                db = self._dbs.get((topic, partition))
                copied = self._copied.get((topic, partition), -1)
                newer = [(key, value) for key, (offset, value) in entries.items() if offset > copied]
                if db is None or not newer:  # not open: a partition this process no longer holds
                    continue
                last = max(offset for offset, _ in entries.values())
                self._write(topic, partition, db, newer, last)
                self._copied[(topic, partition)] = last
        if self.metrics is not None:
            self.metrics.copied.inc(acknowledged)
        return acknowledged

    def load(self, topic: str, partition: int) -> tuple[Iterator[tuple[bytes, bytes]], int | None]:
        """Open the partition's copy; its (key, value) pairs and checkpoint, or nothing and None when there is no
        copy it can use (then the changelog is read from its start)."""
        try:
            self._connect()
        except KafkaException as exc:
            LOG.warning("local copy of %s[%d] not used (Kafka: %s)", topic, partition, exc)
            return iter(()), None
        with self._write_lock:
            old = self._dbs.pop((topic, partition), None)
            if old is not None:
                old.close()
            path = self.directory / topic / f"p{partition}"
            try:
                db = Rdict(str(path), self._options())
            except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception: a copy that does not open
                LOG.warning("local copy of %s[%d] not used (%s)", topic, partition, exc)
                return iter(()), None
            why, offset = self._check(db, topic, partition)
            if why is not None:
                LOG.warning("local copy of %s[%d] not used (%s): read from the changelog", topic, partition, why)
                db.close()
                Rdict.destroy(str(path))
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True, exist_ok=True)
                db = Rdict(str(path), self._options())
                offset = None
            if offset is None:
                origin = {"format": FORMAT, "cluster": self.cluster, "topic": topic, "partition": partition}
                db[ORIGIN_KEY] = json.dumps(origin).encode()
            self._dbs[(topic, partition)] = db
            self._copied[(topic, partition)] = -1 if offset is None else offset
            raw_count = db.get(COUNT_KEY) if offset is not None else None
            self._counts[(topic, partition)] = int(raw_count) if raw_count is not None else 0
            return _items(db), offset

    def load_all(
        self, topic: str, partitions: Iterable[int]
    ) -> dict[int, tuple[list[tuple[bytes, bytes]], int | None]]:
        """:meth:`load` of each partition, its pairs read into a list (blocking, for a thread)."""
        copies = {}
        for partition in partitions:
            items, offset = self.load(topic, partition)
            copies[partition] = (list(items), offset)
        return copies

    def open_all(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """:meth:`load` of each partition without reading its pairs: the checkpoints (blocking, for a thread)."""
        return {partition: self.load(topic, partition)[1] for partition in partitions}

    def has(self, topic: str, partition: int) -> bool:
        """True when the partition's copy is open (a table on disk reads it)."""
        return (topic, partition) in self._dbs

    def get(self, topic: str, partition: int, key: bytes) -> bytes | None:
        """The key's value in the partition's copy (None: not there); CxPulseError when the copy is not open
        (closed at a stop, or never opened): "not there" must never stand for "not readable"."""
        db = self._dbs.get((topic, partition))
        if db is None:
            if self.closed:
                raise TablesClosedError(f"{topic}[{partition}]: the local copies are closed (the process is stopping)")
            raise CxPulseError(f"{topic}[{partition}]: no local copy open (a partition not held)")
        return db.get(key)

    def partitions(self, topic: str) -> list[int]:
        """The partitions of ``topic`` whose copies are open."""
        return sorted(partition for name, partition in list(self._dbs) if name == topic)

    def keys(self, topic: str, partition: int) -> Iterator[bytes]:
        """Every raw key of the partition's copy (a scan: for tests and tools)."""
        db = self._dbs.get((topic, partition))
        return iter(()) if db is None else (key for key, _ in _items(db))

    def count(self, topic: str, partition: int) -> int:
        """The keys in the partition's copy (as of its checkpoint; 0: no copy open)."""
        return self._counts.get((topic, partition), 0)

    def _write(
        self, topic: str, partition: int, db: Rdict, entries: Sequence[tuple[bytes, bytes | None]], offset: int
    ) -> None:
        """Write changelog entries (distinct keys) to a copy with its checkpoint and key count, in one atomic
        write (under the write lock)."""
        count = self._counts.get((topic, partition), 0)
        index = self._indexes.get(topic)
        batch = WriteBatch(raw_mode=True)
        # a copy never written (new, or rebuilt: a wiped restore's one big write) has no old values to read: that
        # read was 8% of the journeys process's samples in a wiped restore (py-spy, 2026-12-03)
        empty = self._copied.get((topic, partition), -1) < 0
        for key, value in entries:
            old = None if empty else db.get(key)
            count += (value is not None) - (old is not None)
            if index is not None and old is not None:
                for entry, _ in index_entries(index, key, old):
                    batch.delete(META + entry)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
                for entry, indexed in index_entries(index, key, value) if index is not None else ():
                    batch.put(META + entry, indexed)
        batch.put(OFFSET_KEY, str(offset).encode())
        batch.put(COUNT_KEY, str(count).encode())
        db.write(batch)
        self._counts[(topic, partition)] = count

    def apply(self, topic: str, partition: int, entries: Sequence[tuple[int, bytes, bytes | None]]) -> int:
        """Changelog messages read by Faust's recovery, (offset, key, value) in offset order, into the partition's
        copy with its new checkpoint (those the copy has are skipped); how many were new (0: no copy open)."""
        with self._write_lock:
            db = self._dbs.get((topic, partition))
            copied = self._copied.get((topic, partition), -1)
            newer = [(key, value) for offset, key, value in entries if offset > copied]
            if db is None or not newer:
                return 0
            last = entries[-1][0]
            self._write(topic, partition, db, list(dict(newer).items()), last)
            self._copied[(topic, partition)] = last
            return len(newer)

    def index_range(
        self, topic: str, partition: int, name: bytes, start: int, end: int
    ) -> list[tuple[bytes, bytes, int]]:
        """The index entries ``name`` of the partition's copy with a time in [start, end): (raw key, value, time)
        each, in time order; only those are read, not the whole copy."""
        db = self._dbs.get((topic, partition))
        if db is None:
            if self.closed:
                raise TablesClosedError(f"{topic}[{partition}]: the local copies are closed (the process is stopping)")
            return []
        first, stop = META + index_entry(name, start, b""), META + index_entry(name, end, b"")
        skip = len(first)
        found = []
        for key, value in db.items(from_key=first):
            if not isinstance(key, bytes) or key >= stop:
                break
            found.append((key[skip:], value, BUCKET.unpack_from(key, skip - BUCKET.size)[0]))
        return found

    def read_tails(self, topic: str, starts: dict[int, int]) -> dict[int, tuple[dict[bytes, bytes | None], int]]:
        """Read changelog partitions from their ``starts`` to their ends with librdkafka (Faust's recovery reads
        ~15,000 messages a second; this, several times that): per partition read, the last value of each key
        (None: deleted) and the offset of the last message, written to the partition's copy as its checkpoint.
        Blocking, for a thread; CxPulseError when the ends are not reached within TAIL_SECONDS, or on stop."""
        reader = self._reader()
        out: dict[int, tuple[dict[bytes, bytes | None], int]] = {}
        todo = {}
        for partition, start in starts.items():
            _, end = reader.get_watermark_offsets(TopicPartition(topic, partition), WATERMARK_SECONDS, False)
            if start < end:
                todo[partition] = (start, end)
        if not todo:
            return out
        started = time.monotonic()
        stop = lambda: self.stopping.is_set() or self.should_stop()  # noqa: E731
        latest, last, records = read_latest(reader, topic, todo, TAIL_SECONDS, stop)
        with self._write_lock:
            for partition, offset in last.items():
                out[partition] = (latest[partition], offset)
                db = self._dbs.get((topic, partition))
                if db is not None:
                    self._write(topic, partition, db, list(latest[partition].items()), offset)
                    self._copied[(topic, partition)] = max(self._copied.get((topic, partition), -1), offset)
        read = sum(offset + 1 - todo[partition][0] for partition, offset in last.items())
        keys = sum(len(latest[partition]) for partition in last)
        LOG.info("%s: %d changelog offsets read past the copies (%d records, %d keys) in %.1f s", topic, read,
                 records, keys, time.monotonic() - started)  # fmt: skip
        return out

    def _reader(self) -> Consumer:
        """The consumer that reads changelog tails (assigned partitions only, no group), made once."""
        if self._tail_reader is None:
            # a short fetch wait: the last fetch of a tail finds nothing and would wait librdkafka's default 500 ms
            # at the broker before the end-of-partition comes back, for every table of a start-up, one by one
            self._tail_reader = new_consumer(
                self.kafka, "cxpulse-local-copy-tail", **{"enable.partition.eof": True, "fetch.wait.max.ms": 10}
            )
        return self._tail_reader

    def loaded(self, table: str, topic: str, partition: int, keys: int, offset: int) -> None:
        """A table partition was filled from its copy (logged and counted)."""
        LOG.info("%s[%d]: %d keys from the local copy (through offset %d)", topic, partition, keys, offset)
        if self.metrics is not None:
            self.metrics.restored.labels(table, "local").inc(keys)

    def read(self, table: str, keys: int) -> None:
        """A table partition's changelog tail was read at assignment (counted: the keys it changed)."""
        if self.metrics is not None:
            self.metrics.restored.labels(table, "changelog").inc(keys)

    def _check(self, db: Rdict, topic: str, partition: int) -> tuple[str | None, int | None]:
        """Why the copy cannot be used (None: it can), and its checkpoint."""
        raw_origin, raw_offset = db.get(ORIGIN_KEY), db.get(OFFSET_KEY)
        if raw_origin is None or raw_offset is None:
            return None, None  # new, or never checkpointed: nothing to use, nothing wrong
        origin = json.loads(raw_origin)
        wanted = {"format": FORMAT, "cluster": self.cluster, "topic": topic, "partition": partition}
        if origin != wanted:
            return f"made for {origin}, not {wanted}", None
        offset = int(raw_offset)
        try:
            end = self._end(topic, partition)
        except KafkaException as exc:
            return f"the changelog's end is unknown: {exc}", None
        if offset >= end:
            return f"its checkpoint {offset} is past the changelog's end {end} (a recreated topic?)", None
        return None, offset

    def _end(self, topic: str, partition: int) -> int:
        client = self._connect()
        _, high = client.get_watermark_offsets(TopicPartition(topic, partition), WATERMARK_SECONDS, False)
        return int(high)

    def _connect(self) -> Consumer:
        """The client that reads changelog ends, and the Kafka cluster's id (a copy is used only in the cluster
        it was made in)."""
        if self._client is None:
            client = new_consumer(self.kafka, "cxpulse-local-copy")
            self.cluster = client.list_topics(timeout=WATERMARK_SECONDS).cluster_id or ""
            self._client = client
        return self._client

    def close(self) -> None:
        self.stopping.set()
        self.closed = True
        with self._write_lock:
            for db in self._dbs.values():
                db.close()
            self._dbs.clear()
            for client in (self._client, self._tail_reader):
                if client is not None:
                    client.close()
            self._client = self._tail_reader = None


def read_latest(
    reader: Consumer, topic: str, ranges: dict[int, tuple[int, int]], seconds: float, stopping: Callable[[], bool]
) -> tuple[dict[int, dict[bytes, bytes | None]], dict[int, int], int]:
    """Read the partitions of ``topic`` over their ``ranges`` (streams.kafka.read_range): per partition the newest
    value of each key (None: deleted) and the offset of its last message, and how many records were read (fewer
    than the offsets where Kafka compacted); CxPulseError past ``seconds`` or on a stop."""
    latest: dict[int, dict[bytes, bytes | None]] = {partition: {} for partition in ranges}
    last: dict[int, int] = {}
    records = 0
    for message in read_range(reader, topic, ranges, seconds, stopping=stopping, batch=10_000):
        partition = message.partition() or 0
        latest[partition][message.key() or b""] = message.value()
        last[partition] = message.offset() or 0
        records += 1
    return latest, last, records


def index_entries(index: IndexEntries, key: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """``index(key, value)``; none (logged) for a value it cannot read: an index never stops a checkpoint."""
    try:
        return index(key, value)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        LOG.error("%r: no index entries (%s: %s)", key, type(exc).__name__, exc)
        return []


def _items(db: Rdict) -> Iterator[tuple[bytes, bytes]]:
    for key, value in db.items():
        if isinstance(key, bytes) and not key.startswith(META):
            yield key, value
