"""A counted answer as the store keeps it (``cxpulse.answers``; ``cxpulse replay --answers``): its normalised fields,
what section 9 keeps of its comment, its themes (without "(any)"), whether it had a comment (a word: the answer
counts under "(any)") and what it counts as (section 3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.core.aggregate import contribution
from streams.core.comments import ANY
from streams.core.validate import Feedback
from streams.core.windows import iso_utc


def stored_answer(event: Feedback, record: Mapping[str, Any]) -> dict[str, Any]:
    """The answer ``event`` (validated from ``record``, its comment already as kept) as a JSON object."""
    counts = contribution(event.metric, event.score, event.scale_min, event.scale_max)
    return {
        "event_id": event.event_id,
        "occurred_at": iso_utc(event.occurred_at),
        "source": event.source,
        "channel": event.channel,
        "journey": event.journey,
        "touchpoint": event.touchpoint,
        "metric": event.metric,
        "score": event.score,
        "scale_min": event.scale_min,
        "scale_max": event.scale_max,
        "customer_id": event.customer_id,
        "interaction_id": record.get("interaction_id"),
        "agent_id": record.get("agent_id"),
        "team": record.get("team"),
        "reason_codes": list(event.reason_codes),
        "comment": record.get("comment"),
        "themes": [theme for theme in event.themes if theme != ANY],
        "commented": ANY in event.themes,
        "promoter": counts.promoters,
        "passive": counts.passives,
        "detractor": counts.detractors,
        "positive": counts.positive,
        "high_effort": counts.high_effort,
    }
