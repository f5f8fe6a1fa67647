"""The Faust tables' local copies (streams.agents.local_tables) against a real broker: written only from the
changelog messages Kafka acknowledged, loaded back with their checkpoint, the changelog's tail read past it, and
not used when they were made for another cluster or run past the changelog's end; a table on disk over them
(streams.agents.stores.DiskMapping)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import orjson
import pytest

from streams.agents import local_tables
from streams.agents.local_tables import LocalTables
from streams.agents.results import ResultsProducer
from streams.agents.stores import DiskMapping, raw_key
from streams.topics import TopicSpec, ensure_topics
from streams.worker.merge_agent import pane_index
from tests.support import RunningBroker


@pytest.fixture()
def changelog(kafka_broker: RunningBroker) -> str:
    topic = f"test-{uuid.uuid4().hex[:10]}-panes-changelog"
    ensure_topics(kafka_broker.bootstrap, [TopicSpec(topic, 2, {"cleanup.policy": "compact"})])
    return topic


def write(results: ResultsProducer, topic: str, partition: int, entries: dict[str, object | None]) -> None:
    for key, value in entries.items():
        raw = None if value is None else json.dumps(value).encode()
        results.produce(topic, raw, json.dumps(key).encode(), partition)
    results.flush_now()


def opened(bootstrap: str, directory: Path, topic: str, partition: int) -> tuple[LocalTables, ResultsProducer]:
    """Copies under ``directory`` with ``partition`` opened (what is acknowledged from now on is copied), and a
    producer whose acknowledgements reach them."""
    local = LocalTables(bootstrap, directory)
    assert contents(local, topic, partition) == ({}, None)
    return local, ResultsProducer(bootstrap, local)


def contents(local: LocalTables, topic: str, partition: int) -> tuple[dict[object, object], int | None]:
    items, offset = local.load(topic, partition)
    return {json.loads(k): json.loads(v) for k, v in items}, offset


def test_a_copy_holds_what_kafka_acknowledged_with_its_checkpoint(
    kafka_broker: RunningBroker, changelog: str, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    local, results = opened(bootstrap, tmp_path, changelog, 1)
    write(results, changelog, 1, {"1|a": [1], "1|b": [2]})
    write(results, changelog, 1, {"1|a": [3], "1|b": None})  # a later value and a tombstone
    assert local.checkpoint() == 4
    local.close()

    again = LocalTables(bootstrap, tmp_path)
    assert contents(again, changelog, 1) == ({"1|a": [3]}, 3)
    again.close()


def test_the_tail_past_the_checkpoint_is_read_and_copied(
    kafka_broker: RunningBroker, changelog: str, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    local, results = opened(bootstrap, tmp_path, changelog, 0)
    write(results, changelog, 0, {"0|a": [1], "0|b": [2]})
    local.checkpoint()
    write(ResultsProducer(bootstrap), changelog, 0, {"0|b": None, "0|c": [4], "0|a": [5]})  # not copied

    _, offset = contents(local, changelog, 0)
    assert offset == 1
    latest, last = local.read_tails(changelog, {0: offset + 1})[0]
    assert {json.loads(k): None if v is None else json.loads(v) for k, v in latest.items()} == {
        "0|b": None,
        "0|c": [4],
        "0|a": [5],
    }
    assert last == 4
    assert contents(local, changelog, 0) == ({"0|a": [5], "0|c": [4]}, 4)  # the copy caught up
    assert local.read_tails(changelog, {0: 5}) == {}  # nothing past the end
    local.close()


def test_acknowledgements_older_than_the_copy_do_not_move_it_back(
    kafka_broker: RunningBroker, changelog: str, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    local, results = opened(bootstrap, tmp_path, changelog, 0)
    write(results, changelog, 0, {"0|a": [1]})  # acknowledged, not checkpointed yet
    write(ResultsProducer(bootstrap), changelog, 0, {"0|a": [2]})
    local.read_tails(changelog, {0: 0})  # a reassignment read the whole tail first
    local.checkpoint()
    assert contents(local, changelog, 0) == ({"0|a": [2]}, 1)
    local.close()


def test_a_copy_from_another_cluster_or_past_the_end_is_not_used(
    kafka_broker: RunningBroker, changelog: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_broker.bootstrap
    local, results = opened(bootstrap, tmp_path, changelog, 0)
    write(results, changelog, 0, {"0|a": [1]})
    local.checkpoint()
    local.close()

    foreign = LocalTables(bootstrap, tmp_path)
    foreign._connect()  # noqa: SLF001 - learn the cluster id, then pretend it is another one
    foreign.cluster = "another-cluster"
    assert contents(foreign, changelog, 0) == ({}, None)
    assert "made for" in caplog.text
    foreign.close()

    ahead = LocalTables(bootstrap, tmp_path / "ahead")
    contents(ahead, changelog, 1)
    ahead.delivered(changelog, 1, 99, b'"1|x"', b"[1]")  # a checkpoint the changelog never reached
    ahead.checkpoint()
    ahead.close()
    again = LocalTables(bootstrap, tmp_path / "ahead")
    assert contents(again, changelog, 1) == ({}, None)
    assert "past the changelog's end" in caplog.text
    again.close()


@pytest.mark.parametrize("encoded", [False, True])
def test_a_table_on_disk_keeps_in_memory_only_what_its_copy_lacks(
    kafka_broker: RunningBroker, changelog: str, tmp_path: Path, encoded: bool
) -> None:
    """streams.agents.stores.DiskMapping over a copy: a value written is read back at once, stays in memory until
    Kafka acknowledged it and a checkpoint wrote it, is read from the copy after that (and after a restart,
    nothing loaded), and the expiry's keys come from the index by pane start.  Written ``encoded``
    (KeyPartitionedTable.set_many's way: DiskMapping.set_encoded), memory holds the changelog's bytes, never a
    container, and everything reads the same."""
    bootstrap = kafka_broker.bootstrap
    local, results = opened(bootstrap, tmp_path, changelog, 0)
    disk = DiskMapping(local, changelog, orjson.loads, lambda: results.queued, pane_index)
    local.index_by(changelog, pane_index)

    def put(key: str, value: object | None) -> None:  # what KeyPartitionedTable does: the store, then the changelog
        if value is None:
            del disk[key]
        elif encoded:
            disk.set_encoded(key, orjson.dumps(value))
        else:
            disk[key] = value
        results.produce(changelog, None if value is None else orjson.dumps(value), raw_key(key), 0)
        held = [entry[0] for entry in disk.recent.values() if isinstance(entry[0], bytes | dict)]
        assert all(isinstance(held_value, bytes if encoded else dict) for held_value in held)

    panes = {f"0|chat|billing|{start}": {"n": start // 1000} for start in (60_000, 120_000, 180_000, 240_000)}
    for key, value in panes.items():
        put(key, value)
    assert disk["0|chat|billing|60000"] == {"n": 60} and len(disk.recent) == 4
    local.checkpoint()  # nothing acknowledged yet: nothing in the copy, nothing dropped from memory
    assert disk.checkpointed(results.delivered_through) == 0 and local.get(changelog, 0, raw_key("0|a")) is None

    asyncio.run(results.flush())
    put("0|chat|billing|240000", {"n": 241})  # written after the flush: not covered by its mark
    mark = results.delivered_through
    local.checkpoint()
    assert disk.checkpointed(mark) == 3
    assert list(disk.recent) == ["0|chat|billing|240000"]
    assert disk["0|chat|billing|120000"] == {"n": 120}  # from the copy now
    assert disk.get("0|chat|billing|1") is None and "0|chat|billing|1" not in disk

    put("0|chat|billing|60000", None)  # a tombstone, in memory until it is in the copy
    assert "0|chat|billing|60000" not in disk
    with pytest.raises(KeyError):
        disk["0|chat|billing|60000"]
    assert disk.keys_before([0], 180_000) == ["0|chat|billing|120000"]
    asyncio.run(results.flush())
    local.checkpoint()
    assert disk.checkpointed(results.delivered_through) == 2 and not disk.recent
    indexed = local.index_range(changelog, 0, b"t:", 0, 10**13)  # the index, without the deleted 60000
    assert indexed == [(raw_key(k), b"", int(k.rsplit("|", 1)[1])) for k in list(panes)[1:]]
    local.close()

    again = LocalTables(bootstrap, tmp_path)
    again.index_by(changelog, pane_index)
    assert again.open_all(changelog, [0]) == {0: 5}
    restarted = DiskMapping(again, changelog, orjson.loads, lambda: 0, pane_index)
    assert dict(restarted.items()) == {
        "0|chat|billing|120000": {"n": 120},
        "0|chat|billing|180000": {"n": 180},
        "0|chat|billing|240000": {"n": 241},
    }
    assert not restarted.recent and len(restarted) == 3
    assert restarted.keys_before([0], 240_000) == ["0|chat|billing|120000", "0|chat|billing|180000"]
    again.close()


def test_the_copies_memory_is_bounded_for_the_process_not_per_copy(
    kafka_broker: RunningBroker, changelog: str, tmp_path: Path
) -> None:
    """RocksDB's defaults gave each copy a 64 MB memtable and a block cache of its own: a process's memory grew with
    its partitions until each filled.  Three times MEMTABLE_BYTES written to two copies stay within the process's
    budget (charged to its one write buffer manager, flushed to disk), and read back whole."""
    local = LocalTables(kafka_broker.bootstrap, tmp_path)
    for partition in (0, 1):
        assert contents(local, changelog, partition) == ({}, None)
    value = b"[" + b"7" * 1000 + b"]"
    keys_per_checkpoint = 1000  # ~1 MB a checkpoint, as a busy process's 2-second checkpoints write
    total = 3 * local_tables.MEMTABLE_BYTES // len(value)
    held = []
    for start in range(0, total, keys_per_checkpoint):
        for n in range(start, min(total, start + keys_per_checkpoint)):
            local.delivered(changelog, n % 2, n // 2, json.dumps(f"k{n}").encode(), value)
        local.checkpoint()
        held.append(local.rocksdb_memory()[0])
    assert min(held[1:]) > 0  # the copies are charged to the process's manager
    assert max(held) <= local_tables.MEMTABLE_BYTES + 2 * local_tables.WRITE_BUFFER_BYTES, max(held) / 2**20
    assert sum(local.count(changelog, p) for p in (0, 1)) == total
    assert sum(1 for p in (0, 1) for key in local.keys(changelog, p) if local.get(changelog, p, key) == value) == total
    local.close()
