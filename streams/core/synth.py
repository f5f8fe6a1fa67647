"""Realistic synthetic contact-center feedback, for benchmarks and tests; ``cxpulse simulate`` borrows its scales,
sources and invalid shapes (its own generator adds incidents and pacing).

Deterministic for a seed.  Channels, journeys and touchpoints follow a skewed mix; each metric uses its usual
scales; a small share of events is invalid or duplicated, as in a real feed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

CHANNELS = ("phone", "chat", "email", "web", "app", "store", "social")
CHANNEL_WEIGHTS = (30, 20, 10, 15, 15, 7, 3)
JOURNEYS = ("onboarding", "billing", "support", "claims", "cancellation", "delivery")
TOUCHPOINTS = ("ivr", "agent_call", "callback", "invoice_page", "faq", "checkout", "live_agent", "bot")
REASONS = ("hold_time", "transfer", "repeat_contact", "knowledge", "policy", "outage", "friendly", "fast")
SOURCES = ("genesys", "amazon-connect", "web-survey", "qualtrics")
METRIC_SCALES: dict[str, tuple[tuple[int, int], ...]] = {
    "NPS": ((0, 10),),
    "NLS": ((0, 10),),
    "CES": ((1, 7), (1, 5)),
    "CSAT": ((1, 5), (1, 7)),
    "CAS": ((1, 5),),
}
METRIC_WEIGHTS = (25, 5, 30, 35, 5)


def realistic_events(
    count: int,
    *,
    seed: int = 7,
    start_ms: int = 1_767_225_600_000,  # 2026-01-01T00:00:00Z
    per_second: float = 50.0,
    invalid_share: float = 0.02,
    duplicate_share: float = 0.01,
    channels: tuple[str, ...] = CHANNELS,
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` FeedbackEvent dicts (all schema fields present), occurred_at increasing on average.

    ``channels`` other than the default are drawn uniformly (a benchmark's fixed number of segments)."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by seed; not security
    metrics = tuple(METRIC_SCALES)
    step_ms = 1000.0 / per_second
    recent: list[dict[str, Any]] = []
    for i in range(count):
        if recent and rng.random() < duplicate_share:
            yield dict(rng.choice(recent))
            continue
        metric = rng.choices(metrics, METRIC_WEIGHTS)[0]
        lo, hi = rng.choice(METRIC_SCALES[metric])
        score = min(hi, max(lo, round(rng.triangular(lo, hi, lo + 0.75 * (hi - lo)))))
        event: dict[str, Any] = {
            "event_id": f"ev-{seed}-{i}",
            "occurred_at": start_ms + int(i * step_ms) - rng.randrange(0, 5000),
            "source": rng.choice(SOURCES),
            "channel": rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0] if channels is CHANNELS else rng.choice(channels),
            "journey": rng.choice(JOURNEYS),
            "touchpoint": rng.choice(TOUCHPOINTS),
            "metric": metric,
            "score": score,
            "scale_min": None if (lo, hi) == METRIC_SCALES[metric][0] else lo,
            "scale_max": None if (lo, hi) == METRIC_SCALES[metric][0] else hi,
            "customer_id": f"cust-{rng.randrange(200_000)}",
            "interaction_id": f"int-{i}",
            "agent_id": f"agent-{rng.randrange(500)}",
            "team": f"team-{rng.randrange(20)}",
            "reason_codes": rng.sample(REASONS, rng.randrange(0, 3)),
            "comment": None,
        }
        if rng.random() < invalid_share:
            spoil(event, rng)
        recent.append(event)
        if len(recent) > 1000:
            recent.pop(0)
        yield event


def spoil(event: dict[str, Any], rng: random.Random) -> None:
    """Make an event invalid in one of the ways a real feed does (Avro-encodable, so no type errors)."""
    kind = rng.randrange(4)
    if kind == 0:
        event["event_id"] = ""
    elif kind == 1:
        event["score"] = 99
    elif kind == 2:
        event["channel"] = "#" + event["channel"]
    else:
        event["scale_min"], event["scale_max"] = 5, 5


# --- comments, as customers write them (English and Dutch): what went wrong, or what went well -------------------

# (the bot's unhappy customers all name the chatbot, as they do: on a test's 5-second spike with ~40 comments, the
# word spread over "bot" and "chatbot" was too thin for the spike's words to name either)
COMMENTS_BAD: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # cause -> (English, Dutch)
    "bot": (
        (
            "The chatbot did not understand my question",
            "The chatbot kept sending me in circles",
            "Could not get past the chatbot to a real person",
        ),
        (
            "De chatbot begreep mijn vraag niet",
            "De chatbot stuurde me steeds in cirkels rond",
            "Ik kwam niet langs de chatbot naar een mens",
        ),
    ),
    "ivr": (
        ("Stuck in the phone menu for ages", "The automated menu had no option for my problem"),
        ("Eindeloos vast in het keuzemenu", "Het keuzemenu had geen optie voor mijn vraag"),
    ),
    "hold_time": (
        ("Waited 40 minutes on hold", "Far too long in the queue"),
        ("Veel te lang in de wacht gestaan", "Ik moest een half uur wachten"),
    ),
    "transfer": (
        ("I was transferred three times", "Passed around between departments"),
        ("Drie keer doorverbonden, van het kastje naar de muur", "Steeds doorverwezen naar een andere afdeling"),
    ),
    "repeat_contact": (
        ("This is the third time I had to call about this", "Had to contact you again for the same thing"),
        ("Voor de derde keer gebeld over hetzelfde", "Ik moest weer bellen voor hetzelfde probleem"),
    ),
    "knowledge": (
        ("The agent had no idea how to help", "Got wrong information from the agent"),
        ("De medewerker wist het niet", "Ik kreeg verkeerde informatie"),
    ),
    "policy": (
        ("Still not resolved after all this", "Nobody could fix it"),
        ("Het is nog steeds niet opgelost", "Niemand kon het oplossen, nog altijd niet geregeld"),
    ),
    "online": (
        ("The website kept giving errors", "Could not log in to the app"),
        ("De website gaf steeds een foutmelding", "Inloggen in de app lukt niet"),
    ),
    "other": (("Not happy with how this went",), ("Niet tevreden over deze afhandeling",)),
}
COMMENTS_GOOD: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "assisted": (
        ("Very friendly agent, resolved quickly", "Helpful and knowledgeable"),
        ("Zeer vriendelijke medewerker, snel opgelost", "Goed geholpen, deskundig"),
    ),
    "self": (("Quick and easy online",), ("Snel en makkelijk online geregeld",)),
}
# what the customers of an incident write (simulate's effort incident, at its channel's first touchpoint): words a
# normal day does not use ("loop", "crash", ...), so the alert's words (docs/contract.md section 9) have an incident
# to find that the taxonomy's themes only name as "the bot"; each touchpoint's texts share a word across languages
# where the languages do
COMMENTS_INCIDENT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # touchpoint -> (English, Dutch)
    "bot": (
        ("The chatbot is stuck in a loop", "Chatbot loop again, the same question over and over"),
        ("De chatbot blijft in een loop hangen", "Chatbot zit in een loop, steeds dezelfde vraag"),
    ),
    "ivr": (
        ("The phone menu drops the call after the first choice", "The line went dead in the phone menu"),
        ("Het keuzemenu verbreekt de verbinding na de eerste keuze", "In het keuzemenu viel de verbinding weg"),
    ),
    "agent_reply": (
        ("My ticket was closed without any reply", "Ticket closed, nobody replied"),
        ("Mijn ticket is gesloten zonder antwoord", "Ticket zomaar gesloten, geen antwoord gekregen"),
    ),
    "faq": (
        ("The help pages only show an error page", "Error page on every help article"),
        ("De hulppagina's geven alleen een error", "Error bij elk artikel in de hulp"),
    ),
    "app_login": (
        ("The app crashes at login", "App crash every time I log in"),
        ("De app crasht bij het inloggen", "Crash van de app bij elke login"),
    ),
    "counter": (
        ("The card terminal at the counter is broken", "Could not pay, terminal broken"),
        ("De pinautomaat aan de balie is kapot", "Kon niet pinnen, pinautomaat kapot"),
    ),
}
ONLINE = {"faq", "checkout", "invoice_page", "app_login", "auto_reply"}
ASSISTED_TOUCHPOINTS = {"agent_call", "callback", "live_agent", "agent_reply", "counter", "returns_desk"}


def comment_for(
    rng: random.Random, low: bool, touchpoint: str | None, reasons: list[str], dutch: bool, incident: bool = False
) -> str:
    """A comment that fits an answer: a bad experience says what went wrong (an ``incident`` at its touchpoint in
    the incident's words, the touchpoint when it is the bot or the phone menu, else its first reason code, else the
    online touchpoint), a good one what went well; in Dutch or English.  One draw of ``rng``, whatever the answer
    (a seeded run stays the same run)."""
    if low and incident and touchpoint in COMMENTS_INCIDENT:
        english, dutch_texts = COMMENTS_INCIDENT[touchpoint]
    elif low:
        cause = next((r for r in reasons if r in COMMENTS_BAD), None)
        if touchpoint in ("bot", "ivr"):
            cause = touchpoint
        elif cause is None:
            cause = "online" if touchpoint in ONLINE else "other"
        english, dutch_texts = COMMENTS_BAD[cause]
    else:
        english, dutch_texts = COMMENTS_GOOD["assisted" if touchpoint in ASSISTED_TOUCHPOINTS else "self"]
    return rng.choice(dutch_texts if dutch else english)
