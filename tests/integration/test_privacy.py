"""PII: the pipeline runs on answers whose customer ids and comments are canary values (valid ones, invalid ones,
detractors that become follow-ups); neither canary appears in any log line of the worker or on its /metrics; with
CXPULSE_CUSTOMER_ID_KEY set, ClickHouse and the follow-ups topic hold the keyed pseudonym, never the id."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from schemas.codec import LocalCatalog
from streams.config import Settings
from streams.core.privacy import pseudonym
from streams.kafka import admin_client, consumer, read_range
from streams.read import read
from tests.integration.test_store import cli, endpoint, store_pipeline
from tests.support import RunningBroker, event, free_ports
from tests.workers import (
    Pipeline,
    produce,
    running_worker,
    scrape,
    stop_worker,
    wait_for,
)

KEY = "a-key-of-sixteen-bytes-or-more"


def test_customer_ids_and_comments_reach_no_log_and_no_metric_and_ids_are_pseudonyms(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    canary_id, canary_comment = f"CANARY-ID-{uuid.uuid4().hex}", f"CANARY-COMMENT-{uuid.uuid4().hex}"
    pipeline = store_pipeline(kafka_broker.bootstrap, tmp_path)
    pipeline.env["CXPULSE_CUSTOMER_ID_KEY"] = KEY
    settings = pipeline.settings
    now = int(time.time() * 1000)
    answers = [
        event(event_id=f"d{i}", occurred_at=now - 1000 * i, metric="NPS", score=2, customer_id=canary_id,
              comment=canary_comment)
        for i in range(20)
    ]  # fmt: skip
    answers += [
        event(event_id="bad-metric", occurred_at=now, metric="XYZ", customer_id=canary_id, comment=canary_comment),
        event(event_id="bad-label", occurred_at=now, channel="!" + canary_id, customer_id=canary_id),
        event(event_id="future", occurred_at=now + 3_600_000, customer_id=canary_id, comment=canary_comment),
        {"event_id": "no-metric", "customer_id": canary_id, "comment": canary_comment},
    ]
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(answer) + "\n" for answer in answers) + canary_id + "\n")
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port, CXPULSE_CUSTOMER_ID_KEY=KEY) as worker:
        produce(settings, source)
        wait_for(lambda: _count(pipeline, pseudonym(KEY.encode(), canary_id)) == 20, "the answers in ClickHouse", log)
        assert _count(pipeline, canary_id) == 0
        followups = list(read(settings.kafka, settings.followups_topic, LocalCatalog(), limit=20))
        assert len(followups) == 20
        assert {f["value"]["customer_id"] for f in followups} == {pseudonym(KEY.encode(), canary_id)}
        letters = scrape(port)
        assert sum(v for k, v in letters.items() if k.startswith("cxpulse_worker_dead_letters_total")) == 5
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            exposition = response.read().decode()
        stop_worker(worker, log)
    for canary in (canary_id, canary_comment):
        assert canary not in exposition
        assert canary not in log.read_text()


def _count(pipeline: Pipeline, customer: str = "", tag: str = "") -> int:
    """Answers of ``customer`` (or whose event ids start with ``tag``) in ClickHouse (-1 while the worker's store
    endpoint is not up yet)."""
    if not (pipeline.settings.data_dir / "clickhouse-endpoint.json").exists():
        return -1
    rows = endpoint(pipeline).rows(
        "SELECT count() FROM cxpulse.answers FINAL WHERE (notEmpty({customer:String}) AND customer_id = "
        "{customer:String}) OR (notEmpty({tag:String}) AND startsWith(event_id, {tag:String}))",
        {"customer": customer, "tag": tag},
    )
    return int(rows[0][0])


def test_personal_data_in_comments_reaches_no_topic_store_log_or_cli_output(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    """docs/contract.md section 9: comments with e-mail addresses, IBANs and phone numbers, valid and invalid, as a
    user's platforms send them, to a worker with every default on (store, journeys, follow-ups); then every topic
    but the feedback topic and its dead letters, every table of the store, the worker's log and what the CLI
    prints hold none of them, and the store holds the redacted comments with their themes."""
    tag = uuid.uuid4().hex[:12]
    planted = [
        f"klant.{tag}@example.nl",
        "NL91ABNA0417164300",
        "NL91 ABNA 0417 1643 00",
        "+31 6 1234 5678",
        "0612345678",
    ]
    pipeline = store_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    now = int(time.time() * 1000)
    comment = (
        f"Lang in de wacht. Mail {planted[0]}, rekening {planted[1]} / {planted[2]}, bel {planted[3]} of {planted[4]}"
    )
    answers = [
        event(event_id=f"{tag}-{i}", occurred_at=now - 1000 * i, metric="NPS", score=i % 11, customer_id=f"c{i}",
              comment=comment)
        for i in range(30)
    ]  # fmt: skip
    answers.append(event(event_id="bad", occurred_at=now, metric="XYZ", comment=comment))  # a dead letter: kept as sent
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(answer) + "\n" for answer in answers))
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, source)
        wait_for(lambda: _count(pipeline, tag=tag) == 30, "the answers in ClickHouse", log)
        stored = endpoint(pipeline).rows(
            "SELECT comment, themes FROM cxpulse.answers FINAL WHERE startsWith(event_id, {tag:String}) LIMIT 1",
            {"tag": tag},
        )
        tables = {query: endpoint(pipeline).rows(query, {}) for query in STORE_TABLES}
        printed = [
            cli(pipeline, *args).stdout
            for args in (["read", "followups"], ["read", "journeys"], ["journey", "c1"], ["read", "alerts"])
        ]
        stop_worker(worker, log)
    assert stored[0][0] == "Lang in de wacht. Mail [email] rekening [iban] / [iban], bel [number] of [number]"
    assert list(stored[0][1]) == ["waiting"]
    leaks = {topic: found for topic, found in _topic_leaks(settings, planted).items() if found}
    assert leaks == {}, leaks
    assert any(planted[0] in found for found in _topic_leaks(settings, planted, only_input=True).values())
    for text in [log.read_text(), *map(str, tables.values()), *printed]:
        assert not [p for p in planted if p in text], text[:2000]


STORE_TABLES = (  # every table of the store, whole
    "SELECT * FROM cxpulse.answers",
    "SELECT * FROM cxpulse.pane_results",
    "SELECT * FROM cxpulse.journey_instances",
)


def _topic_leaks(settings: Settings, planted: list[str], only_input: bool = False) -> dict[str, list[str]]:
    """Per topic of this worker (its own, its app's internal ones and Faust's changelogs, the shared journeys
    topic), which planted strings any message holds, in its key, value or headers, aborted transactions
    included; the feedback topic and the dead letters are left out (or, ``only_input``, the only ones read)."""
    app_topics = admin_client(settings.kafka).list_topics(timeout=10).topics
    inputs = {settings.feedback_topic, settings.dlq_topic}
    prefix = settings.feedback_topic.rsplit("-", 1)[0]
    names = [
        name
        for name in app_topics
        if (name.startswith((prefix, settings.app_id)) or name == settings.journeys_topic)
        and (name in inputs) == only_input
    ]
    reader = consumer(settings.kafka, f"leaks-{uuid.uuid4().hex}", **{"isolation.level": "read_uncommitted"})
    found: dict[str, list[str]] = {}
    try:
        for name in names:
            ranges = {}
            for partition in app_topics[name].partitions:
                low, high = reader.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
                ranges[partition] = (low, high)
            hits: set[str] = set()
            for message in read_range(reader, name, ranges, 60):
                blob = (message.key() or b"") + (message.value() or b"") + repr(message.headers()).encode()
                hits.update(p for p in planted if p.encode() in blob)
            found[name] = sorted(hits)
    finally:
        reader.close()
    assert found, "no topic read"
    return found
