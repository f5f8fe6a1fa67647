"""Customer journeys through the real worker and broker (docs/contract.md section 8): the newest non-deleted
version of each instance on ``cx.journeys`` equals `cxpulse replay --journeys` of the same events, also when the
journeys process (which runs the journey agent) is killed with SIGKILL mid-stream, and instances close once the
clock passes their end + G."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import JOURNEY_INSTANCE, LocalCatalog, decode_confluent
from sinks.clickhouse import Endpoint
from sinks.store_access import EndpointReader
from streams.core.journey_kpis import JourneyCounts, counts_of
from streams.core.journeys import instance_json
from streams.core.synth import realistic_events
from streams.core.validate import validate_batch
from streams.core.windows import iso_utc
from streams.kafka import consumer
from streams.replay import replay_file
from tests.support import cxpulse_command, free_ports
from tests.workers import (
    CONVERGE_SECONDS,
    Pipeline,
    children,
    make_pipeline,
    produce,
    running_worker,
    scrape,
    split,
    stop_worker,
    wait_for,
)

H = 3_600_000
HISTORY: list[tuple[Any, ...]] = []  # every revision read: (key, version, deleted, answers, partition, offset)


def journey_events(path: Path, count: int) -> None:
    """Answers of the last two hours from 150 customers (so most have several answers in a journey), some with no
    customer or no interaction id, a few interaction ids shared, duplicates and invalid answers, some late."""
    start = int(time.time() * 1000) - 2 * H
    rng = random.Random(3)
    events = list(realistic_events(count, seed=21, start_ms=start, per_second=count / 6000))
    for e in events:  # a re-sent answer is the same answer: the same customer (so the same partition, as a feed does)
        pick = random.Random(e["event_id"])
        e["customer_id"] = pick.choice([f"c{pick.randrange(150)}"] * 9 + [None])
        e["interaction_id"] = pick.choice([e["interaction_id"], None, f"shared-{pick.randrange(300)}"])
    late = set(rng.sample(range(len(events)), count // 10))
    ordered = [e for i, e in enumerate(events) if i not in late] + [events[i] for i in sorted(late)]
    path.write_text("".join(json.dumps(e) + "\n" for e in ordered))


def expected_instances(path: Path, gap_ms: int, now_ms: int | None = None) -> dict[tuple[str, str, str], Any]:
    replay = replay_file(path, 60_000, lambda dead: None, journey_gap_ms=gap_ms)
    instances = replay.journey_instances(now_ms)
    out = {}
    for instance in instances:
        record = instance_json(instance)
        record.pop("version")
        out[(record["customer_id"], record["journey"], record["start"])] = record
    return out


def latest_instances(bootstrap: str, topic: str, until: Any, deadline: float) -> dict[tuple[str, str, str], Any]:
    """The newest version of each instance key on the journeys topic, without the deleted ones, once ``until``
    holds for them (or at the deadline); versions must grow per key."""
    HISTORY.clear()
    reader = consumer(bootstrap, f"check-{uuid.uuid4().hex}", **{"isolation.level": "read_committed"})
    reader.subscribe([topic])
    newest: dict[tuple[str, str, str], tuple[int, dict[str, Any]]] = {}
    catalog = LocalCatalog()

    def current() -> dict[tuple[str, str, str], Any]:
        return {k: v for k, (_, v) in newest.items() if not v["deleted"]}

    try:
        while time.monotonic() < deadline:
            for message in reader.consume(num_messages=1000, timeout=1.0):
                if message.error() is not None:
                    continue
                _, record = decode_confluent(message.value(), catalog, JOURNEY_INSTANCE)
                assert message.key() == f"{record['customer_id']}|{record['journey']}|{record['start']}".encode()
                record = dict(record, start=iso_utc(record["start"]), end=iso_utc(record["end"]))
                version = record.pop("version")
                key = (record["customer_id"], record["journey"], record["start"])
                seen = (key, version, record["deleted"], record["answers"], message.partition(), message.offset())
                HISTORY.append(seen)
                if key not in newest or newest[key][0] <= version:
                    newest[key] = (version, record)
            if until(current()):
                break
        return current()
    finally:
        reader.close()


def for_comparison(instances: dict[tuple[str, str, str], Any]) -> dict[tuple[str, str, str], Any]:
    return {k: {f: v for f, v in r.items() if f != "deleted"} for k, r in instances.items()}


def converge_journeys(pipeline: Pipeline, expected: dict[tuple[str, str, str], Any]) -> None:
    settings = pipeline.settings
    want = for_comparison(expected)
    got = for_comparison(
        latest_instances(
            settings.kafka_bootstrap,
            settings.journeys_topic,
            lambda current: for_comparison(current) == want,
            time.monotonic() + CONVERGE_SECONDS,
        )
    )
    wrong = [k for k in want if got.get(k) != want[k]]
    extra = got.keys() - want.keys()
    detail = (
        f"{len(wrong)} of {len(want)} wrong, {len(extra)} extra; first: "
        + str([(k, want[k], got.get(k), [g for g in got.items() if g[0][:2] == k[:2]]) for k in wrong[:2]])
        + "; extra: "
        + str([(k, got[k], [w for w in want.items() if w[0][:2] == k[:2]]) for k in sorted(extra)[:2]])
    )
    if extra:
        detail += f"; revisions of the first extra's group: {[h for h in HISTORY if h[0][:2] == min(extra)[:2]]}"
    assert (len(wrong), len(extra)) == (0, 0), detail


def test_stream_equals_replay_through_a_kill_9_of_the_journeys_process(kafka_broker: Any, tmp_path: Path) -> None:
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path)
    source = tmp_path / "events.jsonl"
    journey_events(source, 4000)
    expected = expected_instances(source, pipeline.settings.journey_gap_seconds * 1000)
    assert sum(1 for r in expected.values() if r["answers"] >= 3) > 50  # journeys with several stops
    assert not any(r["closed"] for r in expected.values())  # G = 72 h: nothing of the last 2 hours is closed
    first, second = split(source, 2)
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(pipeline.settings, first)
        revisions = 'cxpulse_worker_journey_revisions_total{kind="open"}'
        wait_for(lambda: scrape(port, starting=True).get(revisions, 0) > 0, "journey instances sent", log)
        produce(pipeline.settings, second)
        processes = children(worker.pid)
        assert os.getpriority(os.PRIO_PROCESS, processes["journeys"]) == pipeline.settings.journeys_nice == 10
        assert os.getpriority(os.PRIO_PROCESS, processes["merge"]) == 0  # the pane path keeps its priority
        os.kill(processes["journeys"], signal.SIGKILL)
        converge_journeys(pipeline, expected)
        page = scrape(port)
        assert page['cxpulse_worker_process_restarts_total{process="journeys"}'] == 1
        assert page.get('cxpulse_worker_journey_revisions_total{kind="deleted"}', 0) > 0  # late answers moved starts
        stop_worker(worker, log)


def test_instances_close_when_the_clock_passes_their_end_plus_the_gap(kafka_broker: Any, tmp_path: Path) -> None:
    """... and reach ClickHouse: the store's live instances are the replay's, `report --journeys` sums their
    counters, `cxpulse journey` shows a customer's answers."""
    gap_seconds = 3
    pipeline = make_pipeline(
        kafka_broker.bootstrap,
        tmp_path,
        journey_gap_seconds=gap_seconds,
        clickhouse_url=f"chdb://{tmp_path / 'store'}",
    )
    source = tmp_path / "events.jsonl"
    journey_events(source, 1500)
    now_ms = int(time.time() * 1000) + 10 * H
    expected = expected_instances(source, gap_seconds * 1000, now_ms=now_ms)
    assert all(r["closed"] for r in expected.values())
    log = tmp_path / "worker.log"
    port = free_ports(1)[0]
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(pipeline.settings, source)
        converge_journeys(pipeline, expected)  # every instance closed, each with its final numbers
        # the KPI gauges: the counters of the instances closed in the last 24 h (all of them), per journey
        instances = replay_file(source, 60_000, lambda dead: None, journey_gap_ms=gap_seconds * 1000).journeys
        assert instances is not None
        counts: dict[str, JourneyCounts] = {}
        for i in instances.all_instances(now_ms):
            counts[i.journey] = counts.get(i.journey, JourneyCounts()) + counts_of(i)

        def gauges() -> dict[str, JourneyCounts]:
            page = scrape(port)
            return {
                journey: JourneyCounts(
                    *(
                        int(page.get(f'cxpulse_journeys_closed{{counter="{f}",journey="{journey}"}}', -1))
                        for f in JourneyCounts._fields
                    )  # fmt: skip
                )
                for journey in counts
            }

        wait_for(lambda: gauges() == counts, "the journey gauges equal replay's counters", log)
        page = scrape(port)
        for journey, c in counts.items():
            rate = page[f'cxpulse_journey_kpi{{journey="{journey}",kpi="one_stop_rate"}}']
            assert rate == pytest.approx(100 * c.one_stop / c.journeys)
        want = {k: (r["answers"], r["contacts"], r["closed"]) for k, r in expected.items()}
        wait_for(lambda: stored_instances(pipeline) == want, "ClickHouse's live journey instances equal replay", log)
        report = cli(pipeline, "report", "--journeys", "--window", "24h", "--format", "jsonl")
        assert report.returncode == 0, report.stderr
        rows = [json.loads(line) for line in report.stdout.splitlines()]
        assert {r["journey"]: JourneyCounts(*(r[f] for f in JourneyCounts._fields)) for r in rows} == counts
        (customer, journey), _ = Counter(k[:2] for k in expected).most_common(1)[0]  # the most journeys
        start = max((k for k in expected if k[:2] == (customer, journey)), key=lambda k: expected[k]["answers"])[2]
        shown = cli(pipeline, "journey", customer, "--journey", journey, "--format", "jsonl")
        assert shown.returncode == 0, shown.stderr
        mine = [json.loads(line) for line in shown.stdout.splitlines()]
        found = next(o for o in mine if o["start"] == start)
        assert len(found["answers_in_order"]) == expected[(customer, journey, start)]["answers"]
        theirs = sorted(k[2] for k in expected if k[:2] == (customer, journey))
        assert [o["start"] for o in mine] == theirs and len(theirs) > 3  # G = 3 s: many short journeys
        stop_worker(worker, log)


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cxpulse_command(*args), env=pipeline.env, capture_output=True, text=True, check=False)


def stored_instances(pipeline: Pipeline) -> dict[tuple[str, str, str], tuple[int, int, bool]]:
    """The live journey instances in ClickHouse (newest revision, not deleted), read through the worker's
    endpoint: key -> (answers, contacts, closed)."""
    path = pipeline.settings.data_dir / "clickhouse-endpoint.json"
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    reader = EndpointReader(Endpoint(found["url"], found["token"]))
    rows = reader.rows(
        "SELECT customer_id, journey, toUnixTimestamp64Milli(start_at), answers, contacts, closed "
        "FROM cxpulse.journey_instances FINAL WHERE deleted = 0",
        {},
    )
    return {(str(r[0]), str(r[1]), iso_utc(int(r[2]))): (int(r[3]), int(r[4]), bool(r[5])) for r in rows}


def test_a_later_copy_keyed_otherwise_counts_nowhere(kafka_broker: Any, tmp_path: Path) -> None:
    """Answers sent with their customer id (keyed by customer, as `cxpulse produce` keys them) and, once counted,
    every one of them again in a shuffled order, without the customer id and with another score (so keyed by event
    id, mostly on another partition; what a platform's retry through the HTTP ingest can do): the first copies
    count, once, in the results, the store's panes and answers and the journeys, as in replay of both.  It counted
    both copies (n 25 against replay's 24 in one segment) and the store kept the later one."""
    pipeline = make_pipeline(
        kafka_broker.bootstrap,
        tmp_path,
        clickhouse_url=f"chdb://{tmp_path / 'store'}",
    )
    settings = pipeline.settings
    first, everything = tmp_path / "first.jsonl", tmp_path / "everything.jsonl"
    journey_events(first, 1500)
    originals = [json.loads(line) for line in first.read_text().splitlines()]
    copies = [e | {"customer_id": None, "score": e["scale_max"] or 5} for e in originals if e["event_id"]]
    random.Random(8).shuffle(copies)
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(e) + "\n" for e in copies))
    everything.write_text(first.read_text() + second.read_text())
    replay = replay_file(everything, settings.pane_seconds * 1000, lambda dead: None)
    expected_panes = {
        (r.window_start, r.channel, r.journey, r.metric): r.n for r in replay.results()
    }  # fmt: skip
    expected = expected_instances(everything, settings.journey_gap_seconds * 1000)
    counted = replay.stats.counted
    later = replay.stats.duplicates - replay_file(first, 60_000, lambda dead: None).stats.duplicates
    assert later > 1000  # the valid copies (invalid originals' copies are dead letters again)
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, first, spread=False)
        converge_journeys(pipeline, expected)  # the first copies are counted (the copies add nothing)
        duplicates_before = scrape(port)["cxpulse_worker_duplicates_total"]
        produce(settings, second, spread=False)
        wait_for(
            lambda: scrape(port)["cxpulse_worker_duplicates_total"] - duplicates_before >= later,
            "every later copy dropped as a duplicate",
            log,
        )
        converge_journeys(pipeline, expected)
        found = json.loads((settings.data_dir / "clickhouse-endpoint.json").read_text())
        reader = EndpointReader(Endpoint(found["url"], found["token"]))
        stored = "SELECT event_id, score FROM cxpulse.answers FINAL"
        wait_for(lambda: len(reader.rows(stored, {})) >= counted, "every counted answer in the store", log)
        scores = {str(r[0]): int(r[1]) for r in reader.rows(stored, {})}
        valid, _ = validate_batch(originals + copies)  # an invalid original does not hold its valid copy back
        first_scores = {e.event_id: e.score for e in reversed(valid)}  # the first valid copy of each id
        wrong = {k: (scores[k], first_scores[k]) for k in scores if scores[k] != first_scores[k]}
        assert len(scores) == counted and not wrong, list(wrong.items())[:5]
        panes_sql = (
            "SELECT toUnixTimestamp64Milli(window_start), channel, journey, metric, n FROM cxpulse.pane_results FINAL"
        )

        def stored_panes() -> dict[tuple[int, str, str, str], int]:
            return {(int(r[0]), str(r[1]), str(r[2]), str(r[3])): int(r[4]) for r in reader.rows(panes_sql, {})}

        wait_for(lambda: stored_panes() == expected_panes, "the store's panes equal to replay of both copies", log)
        assert scrape(port)["cxpulse_worker_duplicates_total"] - duplicates_before == later
        stop_worker(worker, log)
