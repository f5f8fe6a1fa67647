"""Validation of decoded FeedbackEvents (docs/contract.md section 2), on batches.

``validate_batch`` turns decoded records into :class:`Feedback` tuples (labels normalised, scale defaults
filled in, occurred_at in epoch milliseconds) and :class:`DeadLetter` records with a machine-readable reason.
The first failing check wins, in the order of the contract's list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, NamedTuple, get_args

Metric = Literal["NPS", "CES", "CSAT", "NLS", "CAS"]
METRICS: Final[tuple[Metric, ...]] = get_args(Metric)

Reason = Literal[
    "undecodable",
    "missing_field",
    "bad_metric",
    "bad_scale",
    "score_out_of_range",
    "bad_label",
    "future_timestamp",
    "too_old",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

DEFAULT_SCALES: Final[Mapping[str, tuple[int, int]]] = {
    "NPS": (0, 10),
    "NLS": (0, 10),
    "CES": (1, 7),
    "CSAT": (1, 5),
    "CAS": (1, 5),
}
LABEL_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_WHITESPACE = re.compile(r"\s+")
_REQUIRED_STRINGS: Final = ("event_id", "source", "channel", "journey", "metric")
_LABEL_CACHE_LIMIT: Final = 100_000  # distinct raw labels remembered; bounded against label floods


class Feedback(NamedTuple):
    """A valid, normalised survey answer: what the aggregation core consumes."""

    event_id: str
    occurred_at: int  # epoch milliseconds, UTC
    source: str
    channel: str
    journey: str
    metric: str
    score: int
    scale_min: int
    scale_max: int
    touchpoint: str | None
    customer_id: str | None
    reason_codes: tuple[str, ...]
    interaction_id: str | None = None  # one contact of a customer journey (docs/contract.md section 8)
    themes: tuple[str, ...] = ()  # what its comment mentions, "(any)" first; () without one (section 9)


class DeadLetter(NamedTuple):
    """An invalid input: why (``reason``, one of REASONS; ``detail`` for people), what, and where from."""

    reason: Reason
    detail: str
    original: bytes | str
    position: str


class Clock(NamedTuple):
    """The stream-only checks: processing time and how far ahead / behind occurred_at may be."""

    now_ms: int
    future_tolerance_ms: int
    retention_ms: int


def normalise_label(raw: str) -> str:
    """Trim, lower-case, each run of white space becomes ``_`` ("Live Chat" -> "live_chat")."""
    return _WHITESPACE.sub("_", raw.strip().lower())


_labels: dict[str, str | None] = {}


def _label(raw: str) -> str | None:
    """The normalised label, or None when it does not match the label pattern (cached per raw value)."""
    try:
        return _labels[raw]
    except KeyError:
        norm = normalise_label(raw)
        result = norm if LABEL_PATTERN.fullmatch(norm) else None
        if len(_labels) >= _LABEL_CACHE_LIMIT:
            _labels.clear()
        _labels[raw] = result
        return result


_scale_problems: dict[tuple[str, int, int], str | None] = {}


def _cached_scale_problem(metric: str, lo: int, hi: int) -> str | None:
    key = (metric, lo, hi)
    try:
        return _scale_problems[key]
    except KeyError:
        problem = scale_problem(metric, lo, hi)
        if len(_scale_problems) < _LABEL_CACHE_LIMIT:
            _scale_problems[key] = problem
        return problem


def normalise_label_or_none(raw: str) -> str | None:
    """The normalised label, or None when it does not match the label pattern (for names like touchpoints)."""
    return _label(raw)


def scale_problem(metric: str, lo: int, hi: int) -> str | None:
    """Why (metric, lo, hi) is not an acceptable scale, or None when it is."""
    if metric in ("NPS", "NLS") and (lo, hi) != (0, 10):
        return f"{metric} must be on the 0-10 scale, not {lo}-{hi}"
    if lo >= hi or hi - lo < 2:
        return f"scale {lo}-{hi} needs at least three points"
    if lo < 0 or hi > 100:
        return f"scale {lo}-{hi} must lie within 0-100"
    return None


def _timestamp_ms(value: Any) -> int:
    if isinstance(value, datetime):  # records decoded with logical types (e.g. from an Avro file)
        return int(value.timestamp() * 1000)
    return int(value)


# occurred_at bounds without a clock (replay): the times whose panes and windows can be shown as dates.  Before
# 1970 is too old for any survey; after 9999-12-30 a pane or a 24-hour window would end past year 9999, which no
# ISO-8601 date (nor Python's datetime) can write.  Outside: too_old / future_timestamp, as in the stream.
EARLIEST_MS: Final = 0  # 1970-01-01T00:00:00Z
LATEST_MS: Final = 253_402_214_399_999  # 9999-12-30T23:59:59.999Z


def outside_the_clock(records: Iterable[Mapping[str, Any]], clock: Clock) -> tuple[int, int]:
    """How many records a worker with ``clock`` would refuse for their time: (``future_timestamp``, ``too_old``).
    For ``produce`` and ``replay``, which accept any time, to warn before the worker dead-letters them."""
    future = old = 0
    latest, earliest = clock.now_ms + clock.future_tolerance_ms, clock.now_ms - clock.retention_ms
    for record in records:
        occurred = record.get("occurred_at")
        if occurred is None or isinstance(occurred, bool):
            continue
        try:
            ms = _timestamp_ms(occurred)
        except (TypeError, ValueError, OverflowError):
            continue
        future += ms > latest
        old += ms < earliest
    return future, old


def validate_record(record: Mapping[str, Any], clock: Clock | None = None) -> Feedback | tuple[Reason, str]:
    """Check one decoded record; return the normalised Feedback or (reason, detail)."""
    if clock is None:
        return _check(record, EARLIEST_MS, LATEST_MS, LATEST_MS)
    return _check(record, clock.now_ms - clock.retention_ms, clock.now_ms + clock.future_tolerance_ms, clock.now_ms)


def _check(record: Mapping[str, Any], earliest: int, latest: int, now_ms: int) -> Feedback | tuple[Reason, str]:
    """:func:`validate_record` with the clock's bounds as plain ints (called once per event on the hot path)."""
    get: Callable[[str], Any] = record.get
    event_id = get("event_id")
    source = get("source")
    channel_raw = get("channel")
    journey_raw = get("journey")
    metric = get("metric")
    if not (event_id and source and channel_raw and journey_raw and metric) or (
        event_id.isspace() or source.isspace() or channel_raw.isspace() or journey_raw.isspace() or metric.isspace()
    ):
        for name in _REQUIRED_STRINGS:  # the first one in the contract's order names the problem
            value = get(name)
            if not value or value.isspace():
                return "missing_field", f"{name} is absent or empty"
    occurred = get("occurred_at")
    score = get("score")
    if occurred is None:
        return "missing_field", "occurred_at is absent"
    if score is None:
        return "missing_field", "score is absent"
    defaults = DEFAULT_SCALES.get(metric)
    if defaults is None:
        return "bad_metric", _bad_metric(metric)
    lo = get("scale_min")
    hi = get("scale_max")
    lo = defaults[0] if lo is None else lo
    hi = defaults[1] if hi is None else hi
    problem = _cached_scale_problem(metric, lo, hi)
    if problem is not None:
        return "bad_scale", problem
    if score < lo or score > hi:
        return "score_out_of_range", f"score {score} outside {lo}-{hi}"
    channel = _label(channel_raw)
    if channel is None:
        return "bad_label", f"channel {channel_raw!r} is not a valid label once normalised"
    journey = _label(journey_raw)
    if journey is None:
        return "bad_label", f"journey {journey_raw!r} is not a valid label once normalised"
    occurred_ms = occurred if type(occurred) is int else _timestamp_ms(occurred)
    if occurred_ms > latest or occurred_ms < earliest:
        return _out_of_time(occurred_ms, earliest, latest, now_ms)
    codes = get("reason_codes")
    return Feedback(
        event_id,
        occurred_ms,
        source,
        channel,
        journey,
        metric,
        score,
        lo,
        hi,
        get("touchpoint"),
        get("customer_id"),
        tuple(codes) if codes else (),
        get("interaction_id"),
    )


def _bad_metric(metric: Any) -> str:
    """Why ``metric`` is refused; a known name in another case says which one was meant (the names are exact)."""
    detail = f"metric {metric!r} is not one of {', '.join(METRICS)}"
    meant = str(metric).strip().upper()
    return detail + (f" (did you mean {meant!r}? metric names are upper case)" if meant in METRICS else "")


def _out_of_time(occurred_ms: int, earliest: int, latest: int, now_ms: int) -> tuple[Reason, str]:
    """Why an ``occurred_at`` outside [earliest, latest] is refused (the clock, or the dates replay can show)."""
    if occurred_ms > latest:
        if latest == LATEST_MS:
            return "future_timestamp", f"occurred_at {occurred_ms} is after 9999-12-30, the last day cxpulse can show"
        return "future_timestamp", f"occurred_at {occurred_ms} is ahead of the clock {now_ms}"
    if earliest == EARLIEST_MS:
        return "too_old", f"occurred_at {occurred_ms} is before 1970-01-01"
    return "too_old", f"occurred_at {occurred_ms} is older than the retention of pane state"


class Rejection(NamedTuple):
    """Why the record at ``index`` of a batch is invalid."""

    at: int  # index in the batch
    reason: Reason
    detail: str


def validate_batch(
    records: Sequence[Mapping[str, Any]], clock: Clock | None = None
) -> tuple[list[Feedback], list[Rejection]]:
    """Validate a batch of decoded records; return the valid ones (in order) and the rejections by index.

    The caller owns the original bytes and positions, and builds DeadLetters from the rejections.
    """
    valid: list[Feedback] = []
    rejected: list[Rejection] = []
    if clock is None:
        earliest, latest, now_ms = EARLIEST_MS, LATEST_MS, LATEST_MS
    else:
        now_ms = clock.now_ms
        earliest, latest = now_ms - clock.retention_ms, now_ms + clock.future_tolerance_ms
    for index, record in enumerate(records):
        try:
            checked = _check(record, earliest, latest, now_ms)
        except Exception as exc:  # noqa: BLE001 - a record of any unexpected shape must not stop the batch
            # (a JSON line may hold anything): it is no FeedbackEvent
            rejected.append(Rejection(index, "undecodable", f"not a FeedbackEvent: {type(exc).__name__}: {exc}"))
            continue
        if isinstance(checked, Feedback):
            valid.append(checked)
        else:
            rejected.append(Rejection(index, *checked))
    return valid, rejected
