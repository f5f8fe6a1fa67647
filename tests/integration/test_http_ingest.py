"""HTTP ingest in a running worker: valid, invalid, oversized, unauthenticated and batch requests; the accepted
events arrive on Kafka exactly once, and the worker counts them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.test_read import read
from tests.support import RunningBroker, event, free_ports
from tests.workers import (
    make_pipeline,
    running_worker,
    scrape,
    stop_worker,
    wait_for,
)

TOKEN = "s3cret-ingest"  # a test's token


def post(url: str, body: bytes, token: str | None = TOKEN, kind: str = "application/json") -> tuple[int, Any]:
    headers = {"Content-Type": kind}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_ingest_accepts_refuses_and_delivers_once(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    http_port, metrics_port = free_ports(2)
    pipeline = make_pipeline(
        kafka_broker.bootstrap, tmp_path, http_port=http_port, http_token=TOKEN, http_max_bytes=4096
    )
    url = f"http://127.0.0.1:{http_port}/v1/feedback"
    log = tmp_path / "worker.log"
    now = int(time.time() * 1000)
    with running_worker(pipeline, log, metrics_port=metrics_port) as worker:
        wait_for(lambda: scrape(metrics_port, starting=True).get("cxpulse_worker_ready") == 1, "ready", log)
        one = event(event_id="h1", occurred_at=now, customer_id="c1")
        assert post(url, json.dumps(one).encode()) == (202, {"accepted": 1, "rejected": []})
        batch = [
            event(event_id="h2", occurred_at=now),
            event(event_id="h3", occurred_at=now, metric="XYZ"),
            {"event_id": "h4", "score": "seven"},
            event(event_id="h5", occurred_at=now, score=99),
            event(event_id="h6", occurred_at=now + 3_600_000),
        ]
        status, body = post(url, json.dumps(batch).encode())
        assert (status, body["accepted"]) == (202, 1)
        assert [(r["index"], r["event_id"], r["reason"]) for r in body["rejected"]] == [
            (1, "h3", "bad_metric"),
            (2, "h4", "undecodable"),
            (3, "h5", "score_out_of_range"),
            (4, "h6", "future_timestamp"),
        ]
        assert post(url, json.dumps(one).encode(), token=None)[0] == 401
        assert post(url, json.dumps(one).encode(), token="wrong")[0] == 401  # a wrong token on purpose
        assert post(url, b"x" * 5000)[0] == 413
        too_many = post(url, b"[" + b",".join([b"{}"] * 1001) + b"]")  # 3 KB: under the byte limit, over the batch
        assert too_many[0] == 413 and "at most 1000" in too_many[1]["error"]
        assert post(url, b"not json")[0] == 400
        assert post(url, b"[]")[0] == 400
        assert post(url, b"[1, 2]")[0] == 400
        assert post(url, json.dumps(one).encode(), kind="text/plain")[0] == 415
        # JSON lines: as application/x-ndjson, one event a line; as application/json, a 400 that says how
        lines = "".join(json.dumps(event(event_id=f"n{i}", occurred_at=now)) + "\n" for i in range(2)).encode()
        assert post(url, lines, kind="application/x-ndjson") == (202, {"accepted": 2, "rejected": []})
        wrong = post(url, lines)
        assert wrong[0] == 400 and "application/x-ndjson" in wrong[1]["error"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/openapi.json", timeout=10) as response:
            document = json.loads(response.read())
        assert document["openapi"].startswith("3.") and "post" in document["paths"]["/v1/feedback"]
        assert set(document["paths"]["/v1/feedback"]["post"]["responses"]) == {"202", "400", "401", "413", "415", "503"}
        wait_for(
            lambda: (
                scrape(metrics_port).get(f'cxpulse_worker_records_total{{topic="{pipeline.settings.feedback_topic}"}}')
                == 4
            ),
            "the worker to count the four accepted events",
            log,
        )
        sample = scrape(metrics_port)
        assert sample['cxpulse_http_events_total{outcome="accepted"}'] == 4
        assert sample['cxpulse_http_requests_total{status="401"}'] == 2
        stop_worker(worker, log)
    on_kafka = [r["value"]["event_id"] for r in read(pipeline.env, "feedback")]
    assert sorted(on_kafka) == ["h1", "h2", "n0", "n1"]  # each accepted event once, nothing refused
