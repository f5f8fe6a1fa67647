"""Detractor follow-ups in a running worker: exactly the counted detractors (no duplicate), at most the rate, on
the follow-ups topic through the hot path's transactions, and posted to the webhook with its bearer token
through the receiver's failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

from schemas.codec import LocalCatalog
from streams.read import read
from tests.support import RunningBroker, Webhook, event, free_ports, stop_process
from tests.workers import (
    make_pipeline,
    produce,
    scrape,
    start_worker,
    stop_worker,
    wait_for,
)


def test_detractor_followups_exactly_once_rate_limited_and_posted(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    webhook = Webhook(statuses=[503, 503])  # the receiver fails twice first
    pipeline = make_pipeline(
        kafka_broker.bootstrap,
        tmp_path,
        followups_per_minute=5,
        followup_webhook_url=f"{webhook.url}/callbacks",
        followup_webhook_token="s3cret",  # a test receiver's token
    )
    settings = pipeline.settings
    now = int(time.time() * 1000)
    detractors = [
        event(event_id=f"d{i}", occurred_at=now, metric="NPS", score=i % 7, customer_id=f"c{i}", comment="call me")
        for i in range(12)
    ]
    others = [event(event_id=f"p{i}", occurred_at=now, metric="NPS", score=10, customer_id=f"c{i}") for i in range(5)]
    source = tmp_path / "events.jsonl"
    lines = [*detractors, *others, *detractors[:3]]  # the last three are copies: counted once
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    produce(settings, source)  # before the worker starts: one batch, one burst of the bucket
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    worker = start_worker(pipeline, log, metrics_port=port)
    try:
        wait_for(
            lambda: scrape(port, starting=True).get('cxpulse_followups_total{outcome="posted"}') == 5,
            "five follow-ups posted",
            log,
            timeout=60,
        )
        sample = scrape(port)
        assert sample['cxpulse_worker_records_total{topic="' + settings.feedback_topic + '"}'] == len(lines)
        assert sample["cxpulse_worker_duplicates_total"] == 3
        assert sample['cxpulse_followups_total{outcome="sent"}'] == 5
        assert sample['cxpulse_followups_total{outcome="rate_limited"}'] == 7  # 12 detractors, a burst of 5
        assert sample['cxpulse_sink_errors_total{sink="followups"}'] == 2  # the two 503s, retried
        on_topic = [r["value"] for r in read(settings.kafka_bootstrap, settings.followups_topic, LocalCatalog())]
        ids = sorted(f["event_id"] for f in on_topic)
        assert len(ids) == 5 and len(set(ids)) == 5 and set(ids) <= {d["event_id"] for d in detractors}
        posted = [webhook.next(timeout=5) for _ in range(5)]
        assert sorted(p["event_id"] for p in posted if p) == ids
        assert all(p and p["path"] == "/callbacks" and p["comment"] == "call me" for p in posted)
        assert {h["Authorization"] for h in webhook.headers} == {"Bearer s3cret"}
        stop_worker(worker, log)
    finally:
        stop_process(worker)
        webhook.close()
