"""The follow-up webhook: a Faust agent that POSTs every detractor follow-up on ``cx.followups`` (streams/followups.py)
to ``CXPULSE_FOLLOWUP_WEBHOOK_URL``, one JSON object a request, with ``Authorization: Bearer`` when
``CXPULSE_FOLLOWUP_WEBHOOK_TOKEN`` is set.  Attached by the worker only when the URL is set.

Delivery is at least once: a batch is acked after every follow-up in it was accepted (2xx).  A 5xx, 408, 429 or a
connection error is retried with backoff (doubling to ``BACKOFF_MAX_SECONDS``) and holds the agent, so nothing is
dropped and the topic holds what waits (sink lag); any other 4xx means the receiver will never take this record:
logged, counted in ``cxpulse_sink_errors_total{sink="followups"}``, and skipped.  Receivers should de-duplicate on
``event_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

import aiohttp
import faust
from faust.types import EventT, StreamT

from sinks.prometheus import measure_sink_lag
from streams.config import Settings
from streams.worker.metrics import WorkerMetrics

LOG = logging.getLogger("cxpulse.followups")
SINK = "followups"
BACKOFF_MAX_SECONDS = 30.0
TIMEOUT_SECONDS = 10.0
RETRIED = {408, 429}


class RejectedError(Exception):
    """The receiver answered with a 4xx that a retry will not change."""


async def post(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes) -> None:
    """One POST; RejectedError for a permanent refusal, another exception for what a retry may fix."""
    async with session.post(url, data=body, headers=headers) as response:
        if 200 <= response.status < 300:
            return
        text = (await response.text())[:200]
        if 400 <= response.status < 500 and response.status not in RETRIED:
            raise RejectedError(f"HTTP {response.status}: {text}")
        raise aiohttp.ClientResponseError(
            response.request_info, (), status=response.status, message=text or response.reason or ""
        )


def attach_followup_webhook(app: faust.App, settings: Settings, topic: faust.TopicT, metrics: WorkerMetrics) -> None:
    """Add the webhook agent (and its lag timer) to the worker's Faust app."""
    url = settings.followup_webhook_url
    headers = {"Content-Type": "application/json"}
    token = settings.followup_webhook_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    applied: dict[int, int] = {}
    metrics.sink_errors.labels(SINK)
    topic_name = topic.get_topic_name()

    @app.agent(topic)
    async def followup_webhook(stream: StreamT[Any]) -> None:
        batches = cast("faust.Stream[Any]", stream)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async for events in batches.noack_take(100, within=0.5):
                for event in cast("list[EventT[Any]]", events):
                    message = event.message
                    await deliver(session, message.value or b"", message.partition, message.offset)
                    applied[message.partition] = message.offset + 1
                for event in cast("list[EventT[Any]]", events):
                    await batches.ack(event)

    async def deliver(session: aiohttp.ClientSession, body: bytes, partition: int, offset: int) -> None:
        backoff = 0.5
        while True:
            try:
                json.loads(body)
                await post(session, url, headers, body)
                metrics.followups.labels("posted").inc()
                return
            except (RejectedError, ValueError) as exc:
                metrics.sink_errors.labels(SINK).inc()
                LOG.error("follow-up %s[%d]@%d skipped: %s", topic_name, partition, offset, exc)
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                metrics.sink_errors.labels(SINK).inc()
                LOG.warning("follow-up webhook %s failed (%s); retrying in %.1f s", url, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def followup_lag() -> None:
        measure_sink_lag(app, metrics, SINK, topic_name, applied, transactional=True)
