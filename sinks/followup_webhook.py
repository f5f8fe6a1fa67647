"""The follow-up webhook: an agent that POSTs every detractor follow-up on ``cx.followups`` (streams/core/followups.py)
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
from collections.abc import Sequence

import aiohttp

from streams.agents.base import BatchAgent
from streams.agents.metrics import WorkerMetrics
from streams.agents.record import Record
from streams.config import Settings

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


class FollowupWebhook(BatchAgent):
    """The webhook's agent (see the module docstring)."""

    name = SINK
    batch_size = 100
    within_seconds = 0.5
    tick_seconds = 2.0
    transactional_input = True  # the follow-ups are written in the hot path's transactions

    def __init__(self, settings: Settings, topic: str, metrics: WorkerMetrics) -> None:
        self.topic = topic
        self.url = settings.followup_webhook_url
        self.metrics = metrics
        self.headers = {"Content-Type": "application/json"}
        token = settings.followup_webhook_token.get_secret_value()
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        for record in records:
            await self.deliver(self.session, record.value, partition, record.offset)

    async def deliver(self, session: aiohttp.ClientSession, body: bytes, partition: int, offset: int) -> None:
        """POST one follow-up until the receiver takes it (or refuses it for good: logged, counted, skipped)."""
        backoff = 0.5
        while True:
            try:
                json.loads(body)
                await post(session, self.url, self.headers, body)
                self.metrics.followups.labels("posted").inc()
                return
            except (RejectedError, ValueError) as exc:
                self.metrics.sink_errors.labels(SINK).inc()
                LOG.error("follow-up %s[%d]@%d skipped: %s", self.topic, partition, offset, exc)
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.metrics.sink_errors.labels(SINK).inc()
                LOG.warning("follow-up webhook %s failed (%s); retrying in %.1f s", self.url, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)
