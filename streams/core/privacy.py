"""Customer ids as pseudonyms: with ``CXPULSE_CUSTOMER_ID_KEY`` set, the hot path replaces every customer id by a
keyed HMAC-SHA256 of it (hex) right after decoding, before anything is counted, stored or forwarded: the answers
that reach ClickHouse, the detractor follow-ups and everything derived carry the pseudonym.  The same id always
gives the same pseudonym under one key, so a customer's answers still meet (journeys, drill-down); without the
key nobody can go back from it, and a platform that knows the key can compute a customer's pseudonym to find
them.  The feedback topic itself and the dead-letter topic hold what the platforms sent (README: who may read
them)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, MutableMapping
from typing import Any

MIN_KEY_BYTES = 16  # a shorter key is refused at start (settings)


def pseudonym(key: bytes, customer_id: str) -> str:
    """The keyed HMAC-SHA256 of a customer id, as 64 hex digits."""
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


def pseudonymise(key: bytes, records: Iterable[MutableMapping[str, Any]]) -> None:
    """Replace each record's customer_id (when it has one) by its pseudonym, in place."""
    for record in records:
        customer = record.get("customer_id")
        if isinstance(customer, str) and customer:
            record["customer_id"] = pseudonym(key, customer)
