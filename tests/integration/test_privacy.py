"""PII: the pipeline runs on answers whose customer ids and comments are canary values (valid ones, invalid ones,
detractors that become follow-ups); neither canary appears in any log line of the worker or on its /metrics; with
CXPULSE_CUSTOMER_ID_KEY set, ClickHouse and the follow-ups topic hold the keyed pseudonym, never the id."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

from schemas.codec import LocalCatalog
from streams.core.privacy import pseudonym
from streams.read import read
from tests.integration.test_store import endpoint, store_pipeline
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


def _count(pipeline: Pipeline, customer: str) -> int:
    """Answers of ``customer`` in ClickHouse (-1 while the worker's store endpoint is not up yet)."""
    if not (pipeline.settings.data_dir / "clickhouse-endpoint.json").exists():
        return -1
    rows = endpoint(pipeline).rows(
        "SELECT count() FROM cxpulse.answers FINAL WHERE customer_id = {customer:String}", {"customer": customer}
    )
    return int(rows[0][0])
