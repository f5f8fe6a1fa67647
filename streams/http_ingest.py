"""HTTP ingest for platforms that can only call webhooks: ``POST /v1/feedback`` (aiohttp, which Faust brings).

Run by ``cxpulse worker`` as its ``http`` process when ``CXPULSE_HTTP_PORT`` is set (``python -m
streams.http_ingest METRICS_PORT``).  A request carries one FeedbackEvent (a JSON object, the JSON form of
docs/contract.md section 1) or a batch (a JSON array, at most ``MAX_BATCH``).  Each item is decoded and validated
with the same code as the stream (schemas/codec.py, streams/core/validate.py); the valid ones go to
``cx.feedback`` in the Confluent wire format, keyed by customer_id (else event_id), through an idempotent producer
that is flushed before the answer, so an accepted event is on Kafka once.  Answers:

- ``202 {"accepted": N, "rejected": [{"index", "event_id", "reason", "detail"}]}`` (reasons of section 2);
- ``400`` a body that is not JSON, or not an object or an array of objects; ``401`` a missing or wrong bearer
  token; ``413`` a body over ``CXPULSE_HTTP_MAX_BYTES`` or a batch over ``MAX_BATCH`` items; ``415`` a body that
  is not ``application/json``; ``503`` Kafka did not take the events (nothing was accepted: send again).

Errors are JSON ``{"error": "..."}``.  ``GET /v1/openapi.json`` describes it (OpenAPI 3.1); ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaError, Message
from prometheus_client import CollectorRegistry, Counter, start_http_server

from schemas.codec import SchemaCatalog, catalog_for, feedback_from_json
from streams.agents.metrics import WorkerMetrics
from streams.config import DEFAULT_FUTURE_TOLERANCE_SECONDS, Settings, load_settings
from streams.core.validate import REASONS, Clock, validate_batch
from streams.errors import (
    EXIT_PERMANENT,
    PERMANENT_KAFKA_ERRORS,
    BrokerError,
    ConfigurationError,
    CxPulseError,
    DecodeError,
)
from streams.kafka import produce_waiting, producer
from streams.outage import OutageLog
from streams.produce import check_topic, encode_record

LOG = logging.getLogger("cxpulse.http")
MAX_BATCH = 1000
FLUSH_SECONDS = 30.0
PROCESS = "http"


NDJSON = ("application/x-ndjson", "application/jsonl", "application/json-lines")  # a body of JSON lines
_REJECTED = {
    "type": "object",
    "properties": {
        "index": {"type": "integer"},
        "event_id": {"type": ["string", "null"]},
        "reason": {"type": "string", "enum": list(REASONS)},
        "detail": {"type": "string"},
    },
}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
_EVENT = {
    "type": "object",
    "description": "A FeedbackEvent in its JSON form (schemas/feedback_event.avsc; occurred_at epoch ms or ISO-8601 "
    "with an offset)",
    "required": ["event_id", "occurred_at", "source", "channel", "journey", "metric", "score"],
    "additionalProperties": True,
}
_ERRORS = (
    ("400", "Not JSON (or JSON lines), or not an object or an array of objects"),
    ("401", "Missing or wrong bearer token"),
    ("413", "Body or batch too large"),
    ("415", "Neither application/json nor application/x-ndjson"),
    ("503", "Kafka did not take the events; nothing was accepted"),
)


def openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the endpoint."""
    accepted = {
        "description": "The valid events are on Kafka; the others are listed with their reason",
        "content": {"application/json": {"schema": {"type": "object", "properties": {
            "accepted": {"type": "integer"}, "rejected": {"type": "array", "items": _REJECTED}}}}},
    }  # fmt: skip
    body = {
        "application/json": {"schema": {"oneOf": [_EVENT, {"type": "array", "items": _EVENT, "maxItems": MAX_BATCH}]}},
        **{
            kind: {"schema": {"type": "string", "description": "JSON lines: one FeedbackEvent a line"}}
            for kind in NDJSON
        },
    }
    post = {
        "summary": f"Send one FeedbackEvent or a batch of up to {MAX_BATCH} to {settings.feedback_topic}",
        "requestBody": {"required": True, "content": body},
        "responses": {
            "202": accepted,
            **{
                code: {"description": why, "content": {"application/json": {"schema": _ERROR}}} for code, why in _ERRORS
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "cxpulse feedback ingest", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}] if settings.http_token.get_secret_value() else [],
        "paths": {"/v1/feedback": {"post": post}},
    }


class FeedbackEndpoint:
    """The endpoint's state: settings, the producer, counters."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.catalog = catalog_for(settings)
        self.token = settings.http_token.get_secret_value().encode()
        self.failed: list[str] = []
        self.producer = producer(
            settings.kafka, **{"linger.ms": 5, "compression.type": "lz4", "on_delivery": self._delivered}
        )
        check_topic(settings.kafka, settings.feedback_topic)
        registry = metrics.registry
        self.requests = Counter("cxpulse_http_requests", "Ingest requests, by status", ["status"], registry=registry)
        self.events = Counter(
            "cxpulse_http_events", "Events posted, by outcome (accepted, or the rejection reason)", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.lock = asyncio.Lock()

    def _queue(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Queue the messages (in a thread: a full local queue waits for deliveries)."""
        for key, value in messages:
            produce_waiting(self.producer, self.settings.feedback_topic, value, key)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.append(error.str())

    def answer(self, status: int, body: dict[str, Any]) -> web.Response:
        self.requests.labels(str(status)).inc()
        return web.json_response(body, status=status)

    async def post(self, request: web.Request) -> web.Response:
        if self.token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, self.token):
                return self.answer(401, {"error": "missing or wrong bearer token"})
        if request.content_type != "application/json" and request.content_type not in NDJSON:
            return self.answer(
                415,
                {"error": f"send application/json or application/x-ndjson, not {request.content_type or 'nothing'}"},
            )
        limit = self.settings.http_max_bytes
        if request.content_length is not None and request.content_length > limit:
            return self.answer(413, {"error": f"the body is over {limit} bytes"})
        try:
            raw = await request.content.read(limit + 1)
        except (ValueError, ConnectionError) as exc:
            return self.answer(400, {"error": f"cannot read the body: {exc}"})
        if len(raw) > limit:
            return self.answer(413, {"error": f"the body is over {limit} bytes"})
        lines = request.content_type in NDJSON
        try:
            body = [json.loads(line) for line in raw.splitlines() if line.strip()] if lines else json.loads(raw)
        except (ValueError, RecursionError):
            hint = "one FeedbackEvent a line" if lines else "JSON lines go as application/x-ndjson"
            return self.answer(400, {"error": f"the body is not {'JSON lines' if lines else 'JSON'} ({hint})"})
        items = body if isinstance(body, list) else [body]
        if not items or not all(isinstance(item, dict) for item in items):
            return self.answer(400, {"error": "send a FeedbackEvent object or a non-empty array of them"})
        if len(items) > MAX_BATCH:
            return self.answer(413, {"error": f"a batch holds at most {MAX_BATCH} events, not {len(items)}"})
        return await self._ingest(items)

    async def _ingest(self, items: list[dict[str, Any]]) -> web.Response:
        now_ms = int(time.time() * 1000)
        clock = Clock(now_ms, DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000, self.settings.retention_seconds * 1000)
        good, rejected = triage(items, clock, self.catalog)
        async with self.lock:  # one flush at a time: a failure belongs to the request that saw it
            self.failed.clear()
            await asyncio.to_thread(self._queue, good)
            left = await asyncio.to_thread(self.producer.flush, FLUSH_SECONDS)
            if left or self.failed:
                return self.answer(503, {"error": f"Kafka did not take the events ({(self.failed or ['timeout'])[0]})"})
        self.events.labels("accepted").inc(len(good))
        for refusal in rejected:
            self.events.labels(refusal["reason"]).inc()
        return self.answer(202, {"accepted": len(good), "rejected": rejected})


def triage(
    items: list[dict[str, Any]], clock: Clock, catalog: SchemaCatalog
) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """The posted items as (key, Confluent Avro value) of the valid ones and the rejections of the others
    (``{"index", "event_id", "reason", "detail"}``, by index), with the stream's own decode and validation."""
    rejected: list[dict[str, Any]] = []
    records, at = [], []
    for index, item in enumerate(items):
        try:
            records.append(feedback_from_json(json.dumps(item)))
            at.append(index)
        except (DecodeError, RecursionError, ValueError) as exc:
            rejected.append({"index": index, "event_id": _id(item), "reason": "undecodable", "detail": str(exc)})
    _, rejections = validate_batch(records, clock)
    bad = {r.at for r in rejections}
    for r in rejections:
        item = items[at[r.at]]
        rejected.append({"index": at[r.at], "event_id": _id(item), "reason": r.reason, "detail": r.detail})
    good = []
    for i in range(len(records)):
        if i in bad:
            continue
        record = records[i]
        key = record.get("customer_id") or record.get("event_id")
        good.append((str(key).encode(), encode_record(record, catalog)))
    rejected.sort(key=lambda r: r["index"])
    return good, rejected


def _id(item: dict[str, Any]) -> str | None:
    value = item.get("event_id")
    return value if isinstance(value, str) else None


def create_app(settings: Settings, metrics: WorkerMetrics) -> web.Application:
    ingest = FeedbackEndpoint(settings, metrics)
    document = openapi(settings)
    app = web.Application(client_max_size=settings.http_max_bytes + 1024)
    app.router.add_post("/v1/feedback", ingest.post)

    async def describe(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/v1/openapi.json", describe)
    app.router.add_get("/healthz", healthz)
    metrics.process_ready.labels(PROCESS).set(1.0)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.http_ingest METRICS_PORT``."""
    args = list(sys.argv[1:] if argv is None else argv)
    port = int(args[0]) if args else 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        if not settings.http_token.get_secret_value() and settings.http_host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigurationError(
                f"CXPULSE_HTTP_TOKEN is empty while CXPULSE_HTTP_HOST is {settings.http_host}: set a token, "
                "or listen on 127.0.0.1 only"
            )
        OutageLog.install(settings.kafka_bootstrap)
        metrics = WorkerMetrics(CollectorRegistry())
        if port:
            start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
        app = create_app(settings, metrics)
    except BrokerError as exc:
        print(f"cxpulse http: {exc}", file=sys.stderr)
        return EXIT_PERMANENT if isinstance(exc, PERMANENT_KAFKA_ERRORS) else 1  # Kafka away: restarted
    except (ConfigurationError, CxPulseError) as exc:
        print(f"cxpulse http: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    LOG.info("POST http://%s:%d/v1/feedback", settings.http_host, settings.http_port)
    try:
        web.run_app(app, host=settings.http_host, port=settings.http_port, print=None, handle_signals=True)
    except OSError as exc:
        print(f"cxpulse http: CXPULSE_HTTP_PORT {settings.http_port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_PERMANENT
    return 0


if __name__ == "__main__":
    sys.exit(main())
