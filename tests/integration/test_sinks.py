"""The sinks in a running worker, on the real broker: the KPI gauges on its /metrics equal replay's rolling windows
of the same events, and an effort spike in one segment fires an alert on the alerts topic, with its root cause,
and nowhere else."""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import EFFORT_ALERT, LocalCatalog, decode_confluent
from sinks.prometheus import window_label
from streams.kafka import consumer, producer
from streams.replay import replay_file
from streams.topics import ensure_topics, internal_topics, topic_specs
from tests.support import RunningBroker, cxpulse_command, free_ports, stop_process
from tests.workers import (
    Pipeline,
    converge,
    expected_results,
    make_pipeline,
    mixed_events,
    produce,
    running_worker,
    scrape,
    start_worker,
    stop_worker,
    wait_for,
)

COMPONENTS = ("n", "promoters", "passives", "detractors", "positive", "high_effort", "sum_x", "sum_x2")


def gauge_mismatches(sample: dict[str, float], result: Any, window: str) -> list[str]:
    """The gauges of one replay window result that differ from it (empty: all equal)."""
    labels = f'channel="{result.channel}",journey="{result.journey}",metric="{result.metric}",window="{window}"'
    wrong = []
    if sample.get(f"cxpulse_kpi_value{{{labels}}}") != pytest.approx(result.value, abs=1e-9):
        wrong.append(f"value {labels}")
    if sample.get(f"cxpulse_kpi_moe95{{{labels}}}") != (None if result.moe95 is None else pytest.approx(result.moe95)):
        wrong.append(f"moe95 {labels}")
    if sample.get(f"cxpulse_kpi_responses{{{labels}}}") != result.n:
        wrong.append(f"n {labels}")
    for name in COMPONENTS:
        component = (
            f'channel="{result.channel}",component="{name}",journey="{result.journey}",metric="{result.metric}",'
            f'window="{window}"'
        )
        if sample.get(f"cxpulse_kpi_component{{{component}}}") != pytest.approx(getattr(result, name), abs=1e-9):
            wrong.append(f"{name} {labels}")
    return wrong


def replay_mismatches(port: int, settings: Any, replay: Any) -> list[str]:
    """Every cxpulse_kpi_* series a worker serves on ``port`` against replay's own rolling windows at the gauges'
    end: value, moe95, n and all eight components (empty: all equal)."""
    sample = scrape(port)
    end = sample.get("cxpulse_kpi_window_end_seconds")
    if end is None:
        return ["no gauges yet"]
    wrong, seen = [], 0
    for window_s in settings.windows_seconds:
        for result in replay.results(window_s * 1000, int(end * 1000)):
            seen += 1
            wrong.extend(gauge_mismatches(sample, result, window_label(window_s)))
    exported = sum(1 for key in sample if key.startswith("cxpulse_kpi_responses{"))
    return wrong or ([f"{exported} series exported, {seen} expected"] if exported != seen else [])


def test_kpi_gauges_equal_replays_rolling_windows(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, source)
        converge(settings, expected_results(source, settings.pane_seconds)[0], log)
        replay = replay_file(source, settings.pane_seconds * 1000, lambda dead: None)

        def mismatches() -> list[str]:
            return replay_mismatches(port, settings, replay)

        wait_for(lambda: not mismatches(), "gauges equal to replay", log, timeout=60)

        def health() -> dict[str, float]:
            return {k: v for k, v in scrape(port).items() if k.startswith(("cxpulse_consumer_lag", "cxpulse_sink_lag"))}

        # every input partition measured and drained; both sinks measured on the partitions they applied, drained
        wait_for(lambda: health() and not any(health().values()), "lags at 0", log, timeout=30)
        lags = health()
        for topic in (settings.feedback_topic, internal_topics(settings).routed):  # the hot path reads both
            measured = [k for k in lags if k.startswith("cxpulse_consumer_lag_messages{") and f'topic="{topic}"' in k]
            assert len(measured) == settings.partitions, lags
        # merge hands the KPI view and the detector its results (the results topic has the partials' partitions,
        # as `cxpulse topics` makes it): they read no topic, so they have no lag of their own; merge's is theirs
        assert not any('sink="prometheus"' in k or 'sink="effort"' in k for k in lags), lags
        sample = scrape(port)
        latencies = sample["cxpulse_event_to_gauge_seconds_count"]
        assert latencies >= sample["cxpulse_worker_results_total"] / 2, "every result's latency is observed"
        assert 0 < sample["cxpulse_event_to_gauge_seconds_sum"] / latencies < 60
        stop_worker(worker, log)


def test_a_results_topic_made_with_another_partition_count_is_read_back_by_the_gauges(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    """A user made the results topic by hand with another partition count than the worker's partials: merge cannot
    hand the KPI view and the effort detector its results (the worker that merges a segment need not hold its
    results partition), so they read the topic with a stream of their own, and the gauges still equal replay."""
    pipeline = make_pipeline(kafka_broker.bootstrap, tmp_path, create_topics=False)
    settings = pipeline.settings
    results = next(spec for spec in topic_specs(settings) if spec.name == settings.results_topic)
    ensure_topics(settings.kafka_bootstrap, [results._replace(partitions=settings.partitions + 2)])
    source = tmp_path / "events.jsonl"
    mixed_events(source, 2000)
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        produce(settings, source)
        converge(settings, expected_results(source, settings.pane_seconds)[0], log)
        replay = replay_file(source, settings.pane_seconds * 1000, lambda dead: None)
        wait_for(lambda: not replay_mismatches(port, settings, replay), "gauges equal to replay", log, timeout=60)
        lags = [k for k in scrape(port) if k.startswith("cxpulse_sink_lag_messages{")]
        # their own stream on the results topic, so a lag of their own (fed by merge, they have none)
        assert any('sink="prometheus"' in k for k in lags) and any('sink="effort"' in k for k in lags), lags
        stop_worker(worker, log)


def fast_effort_pipeline(bootstrap: str, tmp_path: Path, **overrides: Any) -> Pipeline:
    """The effort detector on a test's time scale: 1 s panes, a 20 s baseline ending 2 s before the pane, at least
    100 CES answers in it, a 5 s short window (p_s, z, root cause; the default 300 s would hold the whole test:
    a spike 2 s old in it failed the root cause's significance test about one run in three)."""
    return make_pipeline(
        bootstrap,
        tmp_path,
        pane_seconds=1,
        windows_seconds=(60,),
        retention_seconds=600,
        effort_baseline_seconds=20,
        effort_guard_seconds=2,
        effort_min_baseline=100,
        effort_short_seconds=5,
        **overrides,
    )


def _ces(event_id: str, channel: str, touchpoint: str, high: bool, others_say: str | None = None) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "occurred_at": int(time.time() * 1000),
            "source": "sim",
            "channel": channel,
            "journey": "billing",
            "metric": "CES",
            "score": 2 if high else 6,
            "touchpoint": touchpoint,
            # the bot's unhappy customers say so (contract section 9): the root cause names the theme
            "comment": f"De chatbot begreep mijn vraag niet ({event_id})"
            if high and touchpoint == "bot"
            else (f"{others_say} ({event_id})" if high and others_say else None),
        }
    ).encode()


def test_an_effort_spike_fires_with_its_root_cause_and_only_there(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """1 s panes, a 20 s baseline ending 2 s before each pane: ~20 s of steady CES answers in two segments (20% high
    effort), then the bot touchpoint of chat turns bad (80%): the alert fires for chat/billing within seconds."""
    pipeline = fast_effort_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log, metrics_port=port)
    sender = producer(settings.kafka_bootstrap)
    alerts = consumer(settings.kafka_bootstrap, f"alerts-{uuid.uuid4().hex}")
    alerts.subscribe([settings.alerts_topic])
    rng = random.Random(1)
    fired: list[dict] = []
    try:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        started = time.monotonic()
        spike_ms = int(time.time() * 1000) + 25_000
        n = 0
        while time.monotonic() - started < 45 and not fired:
            spike = time.monotonic() - started > 25
            for channel in ("chat", "phone"):
                for touchpoint in ("ivr", "agent_call", "bot"):
                    bad = spike and channel == "chat" and touchpoint == "bot"
                    for _ in range(3):
                        n += 1
                        high = rng.random() < (0.9 if bad else 0.2)
                        sender.produce(
                            settings.feedback_topic, _ces(f"e{n}", channel, touchpoint, high), f"c{n}".encode()
                        )
            sender.poll(0)
            for message in alerts.consume(100, 0.1):  # also paces the load: ~180 answers a second
                if message.error() is None:
                    fired.append(decode_confluent(message.value(), LocalCatalog(), EFFORT_ALERT)[1])
        assert fired, log.read_text()[-3000:]
        first = fired[0]
        seen = f"{first}; the spike from {spike_ms}"
        assert (first["state"], first["channel"], first["journey"]) == ("FIRING", "chat", "billing"), seen
        assert first["root_cause"], seen
        assert first["root_cause"][0]["kind"] == "TOUCHPOINT" and first["root_cause"][0]["name"] == "bot"
        assert {"kind": "THEME", "name": "bot_self_service"}.items() <= first["root_cause"][-1].items(), seen
        assert first["p_short"] > first["p0"] and first["cusum"] >= 10
        sample = scrape(port)
        assert sample['cxpulse_effort_spike{channel="chat",journey="billing"}'] == 1
        assert sample['cxpulse_effort_spike{channel="phone",journey="billing"}'] == 0
        cause = 'cxpulse_effort_cause{channel="chat",journey="billing",kind="THEME",name="bot_self_service"}'
        assert sample[cause] == first["root_cause"][-1]["high_effort"] > 0  # for Alertmanager's message
        # it quotes the latest comments of the spike's high-effort answers (the latest sent, the first quoted)
        assert len(first["comments"]) == 3 and all(c.startswith("De chatbot begreep") for c in first["comments"])
        numbers = [int(c.rsplit("(e", 1)[1].rstrip(")")) for c in first["comments"]]
        assert numbers == sorted(numbers, reverse=True), first["comments"]
        quoted = {k: v for k, v in sample.items() if k.startswith("cxpulse_effort_quote{")}
        assert len(quoted) == 3 and all(f'comment="{c}"' in " ".join(quoted) for c in first["comments"])
        stop_worker(worker, log)
    finally:
        alerts.close()
        sender.flush(10)
        stop_process(worker)


def _send_paced(sender: Any, topic: str, seconds: float, bad: Any, rng: random.Random, out: list[str]) -> None:
    """CES answers of two segments for ``seconds``, about 180 a second, sent as they happen; ``bad(elapsed)``
    turns chat's bot touchpoint to 90% high effort.  Every line sent is kept in ``out`` (for replay)."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        for channel in ("chat", "phone"):
            for touchpoint in ("ivr", "agent_call", "bot"):
                worse = bad(elapsed) and channel == "chat" and touchpoint == "bot"
                for _ in range(3):
                    high = rng.random() < (0.9 if worse else 0.2)
                    value = _ces(f"e{len(out)}", channel, touchpoint, high, "Lang gewacht op een medewerker")
                    out.append(value.decode())
                    sender.produce(topic, value, f"c{len(out)}".encode())
        sender.poll(0.1)  # paces the load


def test_an_incident_while_the_worker_was_down_fires_when_it_comes_back(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    """25 s of steady answers with the worker up, then 25 s with it down, an effort incident in the middle of those
    (the platforms keep sending: a backlog waits), then the worker back: the detector evaluates the panes it missed
    in event time, once their answers are merged, and its alerts equal `cxpulse replay --alerts` of the same
    answers (before, it evaluated them empty as it went by them, and the incident never fired), and so do the words
    of its spike, read from the store (on, as by default)."""
    pipeline = fast_effort_pipeline(kafka_broker.bootstrap, tmp_path, clickhouse_url=f"chdb://{tmp_path / 'store'}")
    settings = pipeline.settings
    log = tmp_path / "worker.log"
    port = free_ports(1)[0]
    sender = producer(settings.kafka_bootstrap)
    rng = random.Random(3)
    lines: list[str] = []
    worker = start_worker(pipeline, log, metrics_port=port)
    try:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        _send_paced(sender, settings.feedback_topic, 25, lambda elapsed: False, rng, lines)
        stop_worker(worker, log)
        _send_paced(sender, settings.feedback_topic, 25, lambda elapsed: 5 <= elapsed < 17, rng, lines)
        assert sender.flush(30) == 0
        source = tmp_path / "events.jsonl"
        source.write_text("\n".join(lines) + "\n")
        replayed = tmp_path / "alerts.jsonl"
        done = subprocess.run(
            cxpulse_command("replay", str(source), "--alerts", str(replayed), "-q", "-o", str(tmp_path / "r.jsonl")),
            env=pipeline.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        expected = [_alert_key(json.loads(line)) for line in replayed.read_text().splitlines()]
        assert ("FIRING", "chat", "billing") in [e[:3] for e in expected]  # the incident is there to be found
        assert all(e[5] for e in expected if e[0] == "FIRING"), expected  # with the comments it quotes
        worker = start_worker(pipeline, log, metrics_port=port)
        got = _alerts_until(settings, lambda seen: seen == expected, time.monotonic() + 90)
        assert got == expected, log.read_text()[-3000:]
        # the words of the spike, read from the store once it holds the spike's answers: replay's
        words = [
            [(t["term"], t["spike"], t["baseline"]) for t in alert["terms"]]
            for alert in map(json.loads, replayed.read_text().splitlines())
            if alert["state"] == "FIRING" and alert["channel"] == "chat"
        ]
        assert words[0] and words[0][0][0] in ("chatbot", "begreep", "vraag"), words  # the bot, not the waiting
        wait_for(lambda: len(_logged_words(log, "chat")) >= len(words), "the spike's words in the log", log, 60)
        assert _logged_words(log, "chat") == words
        stop_worker(worker, log)
    finally:
        sender.flush(10)
        stop_process(worker)


def _logged_words(log: Path, channel: str) -> list[list[tuple[str, int, int]]]:
    """The words of every spike of ``channel`` (journey billing) the worker logged, in order."""
    found = []
    for line in log.read_text().splitlines():
        if f"effort spike words {channel} / billing: " in line:
            said = line.split(f"effort spike words {channel} / billing: ", 1)[1].split(" (from ", 1)[0]
            terms = re.findall(r"(\w+) \((\d+) vs (\d+), G2 [\d.]+\)", said)
            found.append([(term, int(spike), int(baseline)) for term, spike, baseline in terms])
    return found


def _alert_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """An alert as compared: when and where, its root cause and the comments it quotes."""
    at = record["at"]
    at_ms = int(at.timestamp() * 1000) if isinstance(at, datetime) else at
    cause = tuple((d["kind"], d["name"], d["high_effort"], d["n"]) for d in record["root_cause"])
    return (record["state"], record["channel"], record["journey"], at_ms, cause, tuple(record["comments"]))


def _alerts_until(settings: Any, done: Any, deadline: float) -> list[tuple[Any, ...]]:
    """The alerts topic from the start, until ``done(alerts)`` holds or the deadline passes."""
    reader = consumer(settings.kafka_bootstrap, f"alerts-{uuid.uuid4().hex}")
    reader.subscribe([settings.alerts_topic])
    seen: list[tuple[Any, ...]] = []
    try:
        while time.monotonic() < deadline and not done(seen):
            for message in reader.consume(100, 0.5):
                if message.error() is None:
                    seen.append(_alert_key(decode_confluent(message.value(), LocalCatalog(), EFFORT_ALERT)[1]))
    finally:
        reader.close()
    return seen
