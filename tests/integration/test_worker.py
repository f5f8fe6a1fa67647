"""The stream worker against the real broker: its latest pane results equal `cxpulse replay` of the same
events, to the last count, through crashes of the whole worker or of one of its processes, rebalances, wiped
state, skipped messages and failing batches; every invalid event is on the dead-letter topic exactly once; and
SIGTERM stops the worker by itself within 10 s."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from streams.broker import pid_alive
from streams.config import Settings
from streams.kafka import admin_client, consumer, producer
from streams.topics import internal_topics
from streams.worker.supervisor import prepare_topics
from tests.support import RunningBroker, cxpulse_command, event, free_ports, stop_process
from tests.workers import (
    CONVERGE_SECONDS,
    PARTITIONS,
    Pipeline,
    assert_dead_letters_once,
    assert_each_once,
    children,
    converge,
    dead_letters,
    expected_results,
    latest_results,
    make_pipeline,
    mixed_events,
    produce,
    running_worker,
    scrape,
    split,
    start_worker,
    stop_worker,
    wait_for,
)


def test_stream_equals_replay(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, source)
        converge(settings, expected, log)
        assert worker.poll() is None, log.read_text()[-3000:]
        letters = dead_letters(settings.kafka_bootstrap, settings.dlq_topic, invalid, time.monotonic() + 60)
        assert_each_once(letters, invalid)
        assert {h["reason"].decode() for h in letters} >= {"undecodable", "bad_metric", "missing_field"}
        assert all(h["source_topic"].decode() == settings.feedback_topic for h in letters)
        poison = [h for h in letters if h["source_offset"] and b"nested too deeply" in h["detail"]]
        assert len(poison) == 1 and poison[0]["reason"] == b"undecodable"
        # the worker's own counters agree: every answer is hours old, so each counted one is late
        sample = scrape(port)
        assert sample["cxpulse_worker_late_events_total"] == sum(r["n"] for r in expected.values())
        lettered = sum(v for k, v in sample.items() if k.startswith("cxpulse_worker_dead_letters_total"))
        assert lettered == invalid
        assert sample["cxpulse_worker_ready"] == 1
        assert sample["cxpulse_worker_chain_breaks_total"] == 0
        rolled = str(settings.changelog_segment_seconds * 1000)  # compaction keeps up with the changelogs
        assert _topic_configs(settings) == {
            **{
                f"{settings.app_id}-{table}-changelog": ("compact", PARTITIONS, rolled)
                for table in ("panes", "positions", "kpi-view", "effort-panes", "effort-state", "journeys-state")
            },
            internal_topics(settings).partials: ("delete", PARTITIONS, WEEK_MS),
            internal_topics(settings).journey_answers: ("delete", PARTITIONS, WEEK_MS),
            internal_topics(settings).seen_ids: ("delete", PARTITIONS, WEEK_MS),
            internal_topics(settings).answers: ("delete", PARTITIONS, WEEK_MS),
            internal_topics(settings).routed: ("delete", PARTITIONS, WEEK_MS),
        }
        processes = children(worker.pid)
        assert set(processes) == {"hotpath-0", "merge", "journeys"}
        stop_worker(worker, log)
        assert not any(pid_alive(pid) for pid in processes.values())


WEEK_MS = str(7 * 86_400_000)  # Kafka's default segment.ms


def _topic_configs(settings: Settings) -> dict[str, tuple[str, int, str]]:
    """cleanup.policy, partition count and segment.ms of the worker's internal topics."""
    admin = admin_client(settings.kafka_bootstrap)
    metadata = admin.list_topics(timeout=10).topics
    names = [t for t in metadata if t.startswith(f"{settings.app_id}-") and "__assignor" not in t]
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    out = {}
    for resource, future in admin.describe_configs(resources).items():
        config = future.result(timeout=30)
        out[resource.name] = (
            config["cleanup.policy"].value,
            len(metadata[resource.name].partitions),
            config["segment.ms"].value,
        )
    return out


def test_kill_9_three_times_still_equals_replay(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 8000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log) as worker:
        for round_, chunk in enumerate(split(source, 4)):
            produce(settings, chunk)
            if round_ == 3:
                break
            # wait until the worker has published something of this round, then kill it mid-stream
            deadline = time.monotonic() + CONVERGE_SECONDS
            seen_before = len(latest_results(settings.kafka_bootstrap, settings.results_topic, bool, deadline))
            latest_results(
                settings.kafka_bootstrap,
                settings.results_topic,
                lambda current, n=seen_before: len(current) > n,
                deadline,
            )
            processes = children(worker.pid)
            worker.kill()
            worker.wait()
            # the worker's processes die with it (PR_SET_PDEATHSIG: SIGKILL), nothing is left running
            wait_for(lambda p=processes: not any(pid_alive(pid) for pid in p.values()), "children gone", log, 10)
            worker = start_worker(pipeline, log)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)


@pytest.mark.parametrize("victim", ["hotpath-0", "merge"])
def test_kill_9_of_one_process_mid_stream(kafka_broker: RunningBroker, tmp_path: Path, victim: str) -> None:
    """One process of the worker killed with SIGKILL mid-stream: the worker reports it, restarts it (the merge
    process from its tables' local copies), and the numbers still equal replay, each invalid event once on the
    DLQ.  Journeys off: the journeys process keeps local copies too, and its copy counted in the worker's sum let
    the test kill merge before merge had one (a kill of the journeys process: tests/integration/test_journeys.py)."""
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path, journeys=False)
    source = tmp_path / "events.jsonl"
    mixed_events(source, 6000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    first, second = split(source, 2)
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, first)
        deadline = time.monotonic() + CONVERGE_SECONDS
        latest_results(settings.kafka_bootstrap, settings.results_topic, bool, deadline)  # results are flowing
        copies = "cxpulse_worker_local_copy_messages_total"
        wait_for(lambda: scrape(port).get(copies, 0) > 0, "the merge's table copies written", log)
        produce(settings, second)
        os.kill(children(worker.pid)[victim], signal.SIGKILL)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        page = scrape(port)
        assert page[f'cxpulse_worker_process_restarts_total{{process="{victim}"}}'] == 1
        assert f"{victim} was killed by SIGKILL; restarting it" in log.read_text()
        if victim == "merge":  # its restart filled the pane table from the local copy
            assert page['cxpulse_worker_restored_total{source="local",table="panes"}'] > 0
        stop_worker(worker, log)


def test_sigterm_mid_stream_finishes_the_batch_and_loses_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 20000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    produce(settings, source)
    with running_worker(pipeline, log, metrics_port=port) as worker:
        fed = f'cxpulse_worker_records_total{{topic="{settings.feedback_topic}"}}'
        wait_for(lambda: scrape(port, starting=True).get(fed, 0) > 0, "a first batch", log)
        stop_worker(worker, log)
        worker = start_worker(pipeline, log)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)


def test_partial_messages_the_faust_consumer_skipped_are_read_back(pipeline: Pipeline, tmp_path: Path) -> None:
    """faust-streaming can commit offsets its agent never received (faust-streaming#216, #312, #606; see
    streams/worker/repair.py).  Simulated deterministically: the hot path runs alone and processes every event;
    then the merge group's offsets on the partials are committed ahead, partition 0 to its end (no later message
    reveals that gap: the tail check must find it) and partition 1 halfway (its next message reveals it).
    Every event is still counted, every invalid one dead-lettered once."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    partials = internal_topics(settings).partials
    log = tmp_path / "worker.log"
    prepare_topics(settings)  # what `cxpulse worker` does first
    hot = start_worker(
        pipeline,
        log,
        command=[sys.executable, "-m", "streams.worker.hotpath", "0", "0"],
        CXPULSE_WORKER_ID="alone",
    )
    worker = None
    group = consumer(settings.kafka_bootstrap, settings.app_id)
    # the log's true end: a read_committed consumer's "watermark" is the last stable offset (librdkafka >= 1.7.1,
    # confluentinc/librdkafka#3428), which stays before a committed transaction until its marker is written
    whole = consumer(settings.kafka_bootstrap, f"{settings.app_id}-ends", **{"isolation.level": "read_uncommitted"})
    try:
        feedback = [TopicPartition(settings.feedback_topic, p) for p in range(PARTITIONS)]
        routed = [TopicPartition(internal_topics(settings).routed, p) for p in range(PARTITIONS)]

        def hot_path_done() -> bool:
            """Both steps through: the routing step read every event, and the count step (which writes the
            partials) every routed one; else a chunk's count can share a batch with the next chunk's.  The routed
            topic is written in transactions: its end may be a commit marker past the last message.  That end is
            the high watermark, not the last stable offset: the route step's offsets commit can be visible while
            its routed marker is not written yet, and the last stable offset is then one past the count step's
            committed offset, as if counted (3 partial messages where 4 chunks were sent: 3 of 5 clean-clone CI
            runs, 2026-12-05/06).  A routed partition the count step never committed is through only while it is
            empty: after the first chunk its end is 1 between the routed message and its marker (the route step's
            offsets commit can be visible by then), which looked counted, so the first two chunks shared a count
            batch (3 partial messages where 4 chunks were sent: a clean-clone CI run, 2026-12-07)."""
            totals = [whole.get_watermark_offsets(tp, timeout=10)[1] for tp in feedback]
            if [tp.offset for tp in group_offsets(f"{settings.app_id}-hotpath", feedback)] != totals:
                return False
            ends = [whole.get_watermark_offsets(tp, timeout=10)[1] for tp in routed]
            done = group_offsets(f"{settings.app_id}-hotpath", routed)
            return all(
                0 <= end - tp.offset <= 1 if tp.offset >= 0 else end == 0 for tp, end in zip(done, ends, strict=True)
            )

        def group_offsets(name: str, partitions: list[TopicPartition]) -> list[TopicPartition]:
            reader = consumer(settings.kafka_bootstrap, name)
            try:
                return list(reader.committed(partitions, timeout=10))
            finally:
                reader.close()

        for chunk in split(source, 4):  # four batches at least: several messages in every partials partition
            produce(settings, chunk)
            wait_for(hot_path_done, "the hot path through every event so far", log)
        stop_worker(hot, log)
        high = [group.get_watermark_offsets(TopicPartition(partials, p), timeout=10)[1] for p in (0, 1)]
        assert min(high) >= 8  # a message and a commit marker per batch
        ahead = [TopicPartition(partials, 0, high[0]), TopicPartition(partials, 1, high[1] // 2)]
        group.commit(offsets=ahead, asynchronous=False)
        group.close()
        worker = start_worker(pipeline, log)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        text = log.read_text()
        assert "that the consumer skipped" in text and f"{partials}[0]" in text and f"{partials}[1]" in text
        stop_worker(worker, log)
    finally:
        whole.close()
        stop_process(hot)
        if worker is not None:
            stop_process(worker)


def test_a_quiet_channel_gets_its_pane_without_a_later_event(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    now = int(time.time() * 1000)
    source.write_text(json.dumps(event(occurred_at=now, event_id="lonely", channel="quiet", metric="CSAT", score=5)))
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log) as worker:
        produce(pipeline.settings, source)
        expected, _ = expected_results(source, pipeline.settings.pane_seconds)
        assert len(expected) == 1
        converge(pipeline.settings, expected, log)
        stop_worker(worker, log)


def test_wiped_local_state_recovers_from_the_changelogs(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 4000)
    first, second = split(source, 2)
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log) as worker:
        produce(settings, first)
        converge(settings, expected_results(first, settings.pane_seconds)[0], log)
        stop_worker(worker, log)  # a clean stop: nothing half-done may be committed
        shutil.rmtree(settings.data_dir)
        worker = start_worker(pipeline, log)
        produce(settings, second)
        expected, invalid = expected_results(source, settings.pane_seconds)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)


def test_two_workers_one_joins_late_and_one_leaves(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 6000)
    chunks = split(source, 3)
    settings = pipeline.settings
    first = start_worker(pipeline, tmp_path / "a.log", tmp_path / "a")
    second = None
    try:
        produce(settings, chunks[0])
        converge(settings, expected_results(chunks[0], settings.pane_seconds)[0])
        second = start_worker(pipeline, tmp_path / "b.log", tmp_path / "b")  # joins late: partitions move
        produce(settings, chunks[1])
        stop_worker(first, tmp_path / "a.log")  # leaves: the other takes every partition over
        produce(settings, chunks[2])
        expected, invalid = expected_results(source, settings.pane_seconds)
        converge(settings, expected)
        assert_dead_letters_once(settings, invalid)
        stop_worker(second, tmp_path / "b.log")
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)


def test_state_stays_bounded_by_the_retention(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """A long run over many panes keeps only the retention's worth of state: 1 s panes, 3 s retention, events
    of four segments arriving for 30 s; the worker's own gauges are read from its /metrics endpoint."""
    port = free_ports(1)[0]
    pipeline = make_pipeline(
        kafka_broker.bootstrap, tmp_path, pane_seconds=1, windows_seconds=(2,), retention_seconds=3
    )
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    segments = [("chat", "billing"), ("chat", "support"), ("phone", "billing"), ("phone", "support")]
    sender = producer(settings.kafka_bootstrap)
    with running_worker(pipeline, log, metrics_port=port) as worker:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        peaks: dict[str, float] = {}
        panes_sent: set[tuple[int, str, str]] = set()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 30:
            for segment in segments:
                for _ in range(5):
                    n += 1
                    panes_sent.add((_send_now(sender, settings.feedback_topic, f"e-{n}", segment) // 1000, *segment))
            sample = scrape(port)
            peaks["panes"] = max(peaks.get("panes", 0.0), sample.get('cxpulse_worker_state_keys{table="panes"}', 0.0))
            peaks["ids"] = max(peaks.get("ids", 0.0), sample.get("cxpulse_worker_remembered_ids", 0.0))
            time.sleep(0.2)  # pacing the producer (a real-time load), not synchronisation
        final = scrape(port)
        sender.flush(10)
        stop_worker(worker, log)
    # panes live for the retention (3 s) + one sweep interval (1 s) + the processing delay: allow 8 s of them
    bound_panes = 8 * len(segments)
    assert len(panes_sent) > 3 * bound_panes  # the run really covered many more panes than are kept
    assert 0 < peaks["panes"] <= bound_panes, peaks
    assert 0 < peaks["ids"] <= 8 * 20 / 0.2, peaks  # ids of the last 8 s at 20 events per 0.2 s
    assert final['cxpulse_worker_expired_keys_total{table="seen-ids"}'] > 0
    assert final['cxpulse_worker_expired_keys_total{table="panes"}'] > 2 * bound_panes


def _send_now(sender: Any, topic: str, event_id: str, segment: tuple[str, str]) -> int:
    now = int(time.time() * 1000)
    channel, journey = segment
    record = event(occurred_at=now, event_id=event_id, channel=channel, journey=journey, metric="CSAT", score=4)
    sender.produce(topic, key=event_id.encode(), value=json.dumps(record).encode())
    sender.poll(0)
    return now


def test_worker_without_kafka_fails_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        cxpulse_command("worker", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "CXPULSE_METRICS_PORT": "0"},
    )
    assert done.returncode == 1
    assert "worker: cannot reach Kafka at 127.0.0.1:1" in done.stderr


def test_worker_metrics_port_in_use_fails_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            cxpulse_command("worker", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path)),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "CXPULSE_METRICS_PORT": str(port)},
        )
    assert done.returncode == 1
    assert f"worker: metrics port {port} (CXPULSE_METRICS_PORT): Address already in use" in done.stderr


@pytest.mark.batch_errors
def test_failing_batches_are_processed_again_and_do_not_wedge_the_worker(pipeline: Pipeline, tmp_path: Path) -> None:
    """Processing raises on the hot path's first three batches, then its next two transactions fail after their
    messages were written (aborted: none of it may show), and merge raises on its first two (faults injected by a
    test wrapper, tests/integration/flaky_worker.py): the failures are logged and counted, nothing is skipped
    (the hot path reads its batch again from the committed offsets, merge reads back what it did not follow),
    numbers equal replay, each invalid event is dead-lettered once, and SIGTERM still stops the worker."""
    source = tmp_path / "events.jsonl"
    mixed_events(source, 2000)
    expected, invalid = expected_results(source, pipeline.settings.pane_seconds)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(
        pipeline,
        log,
        metrics_port=port,
        command=[sys.executable, "-m", "tests.integration.flaky_worker"],
        CXPULSE_TEST_HOTPATH_FAILURES="3",
        CXPULSE_TEST_HOTPATH_SEND_FAILURES="2",
        CXPULSE_TEST_MERGE_FAILURES="2",
    ) as worker:
        produce(settings, source)
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        sample = scrape(port)
        text = log.read_text()
        again = re.search(r"batches commit again, after (\d+) failed tries .*", text)
        assert again is not None, text[-3000:]
        # the five injected, and any a real broker adds (the line names each kind: a CI run once had six), in this
        # run of failures or in a later one
        tries = sum(int(n) for n in re.findall(r"batches commit again, after (\d+) failed tries", text))
        assert sample[f'cxpulse_worker_batch_errors_total{{topic="{settings.feedback_topic}"}}'] == tries >= 5
        assert "RuntimeError x3 (last: injected failure 3 of 3)" in again.group(0), again.group(0)
        assert re.search(r"TransactionAbortedError x[2-9]", again.group(0)), again.group(0)
        assert sample['cxpulse_worker_transactions_total{outcome="aborted"}'] >= 2  # written, then aborted
        partials = internal_topics(settings).partials
        assert sample[f'cxpulse_worker_batch_errors_total{{topic="{partials}"}}'] == 2
        assert sample["cxpulse_worker_chain_breaks_total"] == 0
        assert text.count("injected failure") >= 3  # the hot path says its first, merge each of its two
        assert "is read again from the committed offsets" in text and "batches commit again, after" in text
        stop_worker(worker, log)
