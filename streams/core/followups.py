"""Detractor follow-ups, the closed loop CX teams run: every NPS/NLS detractor answer that left a comment or a
customer id, as a JSON record on ``cx.followups`` (and, when ``CXPULSE_FOLLOWUP_WEBHOOK_URL`` is set, posted to
that webhook by sinks/followup_webhook.py), so that someone can call the customer back.

The hot path selects them from the batch's counted answers (valid, first copy only) and produces them in the
batch's Kafka transaction: each answer gives one follow-up, also through crashes and restarts.  A token bucket per
hot-path process caps the rate (``CXPULSE_FOLLOWUPS_PER_MINUTE``, 0 turns follow-ups off); what it holds back is
counted, not queued (a team that can call 60 customers a minute does not want a backlog of 10,000).

Record (JSON, key = customer_id or else event_id)::

    {"event_id", "occurred_at" (epoch ms), "channel", "journey", "touchpoint", "metric", "score", "customer_id",
     "interaction_id", "agent_id", "team", "reason_codes", "comment"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from streams.core.aggregate import contribution
from streams.core.validate import Feedback

FIELDS = (
    "event_id",
    "occurred_at",
    "channel",
    "journey",
    "touchpoint",
    "metric",
    "score",
    "customer_id",
    "interaction_id",
    "agent_id",
    "team",
    "reason_codes",
    "comment",
)


def is_detractor(event: Feedback) -> bool:
    """An NPS or NLS answer counted as a detractor (docs/contract.md section 3)."""
    return (
        event.metric in ("NPS", "NLS")
        and contribution(event.metric, event.score, event.scale_min, event.scale_max).detractors == 1
    )


def context(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a decoded record that a follow-up needs and the normalised Feedback does not keep: what the
    hot path's route step sends on with a detractor answer (streams.worker.ingest)."""
    return {name: record.get(name) for name in ("event_id", "comment", "interaction_id", "agent_id", "team")}


def select(counted: Sequence[Feedback], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The follow-up records of a batch: counted detractor answers with a comment or a customer id.  ``records``
    are the batch's decoded records, or their :func:`context` (for the fields the normalised Feedback does not
    keep: comment, agent, ...); they are only looked at when the batch has a detractor."""
    wanted = {event.event_id: event for event in counted if is_detractor(event)}
    if not wanted:
        return []
    out = []
    for record in records:
        event = wanted.pop(str(record.get("event_id")), None)
        if event is None:
            continue
        comment = record.get("comment")
        if not comment and not event.customer_id:
            continue
        out.append(
            {
                "event_id": event.event_id,
                "occurred_at": event.occurred_at,
                "channel": event.channel,
                "journey": event.journey,
                "touchpoint": event.touchpoint,
                "metric": event.metric,
                "score": event.score,
                "customer_id": event.customer_id,
                "interaction_id": record.get("interaction_id"),
                "agent_id": record.get("agent_id"),
                "team": record.get("team"),
                "reason_codes": list(event.reason_codes),
                "comment": comment or None,
            }
        )
    return out


def encode(followup: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a follow-up record on the topic."""
    key = str(followup["customer_id"] or followup["event_id"]).encode()
    return key, json.dumps(followup, separators=(",", ":"), ensure_ascii=False).encode()


class TokenBucket:
    """At most ``per_minute`` follow-ups a minute, in bursts of up to ``per_minute`` (0: none at all)."""

    def __init__(self, per_minute: int, now_s: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.at = now_s

    def take(self, count: int, now_s: float) -> int:
        """How many of ``count`` may go now (the rest is dropped by the caller)."""
        self.tokens = min(self.capacity, self.tokens + (now_s - self.at) * self.rate)
        self.at = now_s
        granted = min(count, int(self.tokens))
        self.tokens -= granted
        return granted
