"""The hot path's remembered ids on disk (streams.worker.seen): the same answers as the in-memory Deduplicator
through runs, restarts, aborted batches and expiry; local state that cannot be trusted is rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.dedup import Deduplicator
from streams.core.validate import Feedback
from streams.worker import seen as seen_module
from streams.worker.seen import Origin, Run, SeenIds, fingerprint
from tests.support import fb

pytestmark = pytest.mark.unit

BUCKET_MS = 1000
ORIGIN = Origin("cluster-a", "app-seen-ids", 3, BUCKET_MS)


def events(ids: list[str], t: int = 0) -> list[Feedback]:
    return [fb("CES", 1, 1, 7, event_id=event_id, t=t) for event_id in ids]


class Changelog:
    """A stand-in for one partition of the seen-ids changelog: the committed entries, by offset."""

    def __init__(self) -> None:
        self.entries: list[dict[int, list[str]]] = []

    def commit(self, store: SeenIds, unique: list[Feedback]) -> None:
        """The batch's transaction commits: its entry (if it counted ids) gets the next offset."""
        if unique:
            self.entries.append(store.buckets(unique))
            store.committed(len(self.entries) - 1)
        else:
            store.committed(None)

    def restore(self, store: SeenIds) -> None:
        """What the hot path does on assignment or after an aborted batch: read from the store's tail."""
        store.forget_tail()
        for offset in range(store.tail, len(self.entries)):
            for bucket, ids in self.entries[offset].items():
                store.remember(bucket, ids, offset)


def test_duplicates_are_found_in_recent_ids_and_in_runs_on_disk(tmp_path: Path) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    log = Changelog()
    unique, duplicates = store.first_seen(events(["a", "b", "a"]))
    assert [e.event_id for e in unique] == ["a", "b"] and duplicates == 1
    log.commit(store, unique)
    store.flush()
    assert store.runs and not store.recent and store.checkpoint == 1
    unique, duplicates = store.first_seen(events(["b", "c", "a", "c"]))
    assert [e.event_id for e in unique] == ["c"] and duplicates == 3
    assert len(store) == 3


def test_a_restart_trusts_the_runs_and_reads_the_changelog_only_past_the_checkpoint(tmp_path: Path) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    log = Changelog()
    for batch in (["a", "b"], ["c"]):
        unique, _ = store.first_seen(events(batch))
        log.commit(store, unique)
    store.flush()
    unique, _ = store.first_seen(events(["d"]))  # committed after the last run: only in the changelog
    log.commit(store, unique)

    again = SeenIds.open(tmp_path, ORIGIN, changelog_end=len(log.entries))
    assert again.checkpoint == 2 and len(again) == 3
    log.restore(again)
    assert again.tail == 3
    unique, duplicates = again.first_seen(events(["a", "d", "e"]))
    assert [e.event_id for e in unique] == ["e"] and duplicates == 2


def test_an_aborted_batch_is_taken_back(tmp_path: Path) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    log = Changelog()
    unique, _ = store.first_seen(events(["a"]))
    log.commit(store, unique)
    store.first_seen(events(["b"]))  # the transaction aborts: "b" never reached the changelog
    log.restore(store)
    unique, duplicates = store.first_seen(events(["a", "b"]))
    assert [e.event_id for e in unique] == ["b"] and duplicates == 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.update(cluster="cluster-b"), "made for cluster"),
        (lambda m: m.update(topic="other-seen-ids"), "made for topic"),
        (lambda m: m.update(bucket_ms=3_600_000), "made for bucket_ms"),
        (lambda m: m.update(checkpoint=99), "past the changelog's end"),
        (lambda m: m.update(format=0), "format 0"),
    ],
)
def test_local_state_made_for_something_else_is_rebuilt_from_the_changelog(
    tmp_path: Path, change: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    log = Changelog()
    unique, _ = store.first_seen(events(["a", "b"]))
    log.commit(store, unique)
    store.flush()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    change(manifest)  # type: ignore[operator]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    again = SeenIds.open(tmp_path, ORIGIN, changelog_end=len(log.entries))
    assert why in caplog.text
    assert len(again) == 0 and again.checkpoint == 0 and not list(tmp_path.glob("*.npy"))
    log.restore(again)
    unique, duplicates = again.first_seen(events(["a", "c"]))
    assert [e.event_id for e in unique] == ["c"] and duplicates == 1


def test_a_damaged_run_file_is_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    unique, _ = store.first_seen(events(["a"]))
    Changelog().commit(store, unique)
    store.flush()
    run = next(tmp_path.glob("*.lo.npy"))
    data = bytearray(run.read_bytes())
    data[-1] ^= 0xFF
    run.write_bytes(bytes(data))
    again = SeenIds.open(tmp_path, ORIGIN, changelog_end=1)
    assert "missing or damaged" in caplog.text and len(again) == 0


def test_a_crash_while_a_run_is_written_leaves_the_last_manifest_in_force(tmp_path: Path) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    log = Changelog()
    unique, _ = store.first_seen(events(["a"]))
    log.commit(store, unique)
    store.flush()
    named = {p.name for p in tmp_path.glob("*.npy")}
    (tmp_path / "deadbeef.hi.npy").write_bytes(b"half a run")  # written, the manifest not replaced yet
    (tmp_path / "manifest.json.tmp").write_text("{")
    again = SeenIds.open(tmp_path, ORIGIN, changelog_end=1)
    assert len(again) == 1 and {p.name for p in tmp_path.glob("*.npy")} == named


def test_expiry_forgets_old_buckets_and_drops_runs_that_hold_nothing_alive(tmp_path: Path) -> None:
    store = SeenIds(tmp_path, ORIGIN)
    log = Changelog()
    unique, _ = store.first_seen(events([f"old-{i}" for i in range(50)], t=100))
    log.commit(store, unique)
    store.flush()
    unique, _ = store.first_seen(events(["new"], t=5 * BUCKET_MS))
    log.commit(store, unique)
    assert store.expire(older_than_ms=BUCKET_MS - 1) == 0  # the first bucket is not over yet
    assert store.expire(older_than_ms=2 * BUCKET_MS) == 50
    assert len(store) == 1 and not store.runs
    unique, _ = store.first_seen(events(["old-1", "new"], t=5 * BUCKET_MS))
    assert [e.event_id for e in unique] == ["old-1"]  # forgotten, as the Deduplicator forgets it


def test_long_restores_write_runs_as_they_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seen_module, "FLUSH_IDS", 10)
    store = SeenIds(tmp_path, ORIGIN)
    for offset in range(7):
        store.remember(0, [f"id-{offset}-{i}" for i in range(4)], offset)
    assert len(store.recent) < 10 and store.runs and store.checkpoint > 0
    assert len(store) == 28
    unique, duplicates = store.first_seen(events(["id-0-0", "id-6-3", "x"]))
    assert [e.event_id for e in unique] == ["x"] and duplicates == 2


def test_fingerprints_are_the_same_in_every_process() -> None:
    # MurmurHash3 x64 128 of "cxpulse", seed 0: a stored run stays valid across restarts and Python versions
    assert fingerprint("cxpulse").hex() == fingerprint("cxpulse").hex()
    assert len(fingerprint("")) == 16 and fingerprint("a") != fingerprint("b")
    assert fingerprint("cxpulse").hex() == FINGERPRINT_OF_CXPULSE


FINGERPRINT_OF_CXPULSE = "ffcda79a4232531bb188a2a0798f4119"  # mmh3 5.3.1; must never change


Batch = tuple[list[str], bool]  # ids (from a small set: many duplicates), and whether the transaction commits


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.tuples(st.lists(st.sampled_from([f"id{i}" for i in range(30)]), max_size=8), st.booleans()), max_size=25
    ),
    flush_after=st.sets(st.integers(0, 24)),
    restart_after=st.sets(st.integers(0, 24)),
    flush_ids=st.integers(1, 6),
)
def test_any_mix_of_runs_restarts_and_aborts_answers_as_the_deduplicator_does(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[Batch],
    flush_after: set[int],
    restart_after: set[int],
    flush_ids: int,
) -> None:
    directory = tmp_path_factory.mktemp("seen")
    original = seen_module.FLUSH_IDS
    seen_module.FLUSH_IDS = flush_ids
    try:
        model = Deduplicator(BUCKET_MS)
        store = SeenIds(directory, ORIGIN)
        log = Changelog()
        for index, (ids, commits) in enumerate(batches):
            batch = events(ids, t=index)
            unique, duplicates = store.first_seen(batch)
            if commits:
                expected, expected_duplicates = model.first_seen(batch)
                assert [e.event_id for e in unique] == [e.event_id for e in expected]
                assert duplicates == expected_duplicates
                log.commit(store, unique)
            else:
                log.restore(store)  # aborted: read again from the checkpoint
            if index in flush_after:
                store.flush()
            if index in restart_after:
                store = SeenIds.open(directory, ORIGIN, changelog_end=len(log.entries))
                log.restore(store)
            assert len(store) == len(model)
    finally:
        seen_module.FLUSH_IDS = original


def test_fingerprints_that_share_their_high_half_are_told_apart_by_the_low_half() -> None:
    hi = np.array([7, 7, 7, 9], dtype=np.uint64)
    lo = np.array([1, 2, 3, 4], dtype=np.uint64)
    run = Run.build(hi, lo, np.array([5, 5, 1, 5], dtype=np.uint32))
    queries_hi = np.array([7, 7, 7, 7, 9, 8], dtype=np.uint64)
    queries_lo = np.array([2, 3, 4, 1, 4, 1], dtype=np.uint64)
    found = run.contains(queries_hi, queries_lo, alive_from=2)
    # (7, 3) is there but its bucket 1 is expired; (7, 4) and (8, 1) are not there at all
    assert found.tolist() == [True, False, False, True, True, False]
