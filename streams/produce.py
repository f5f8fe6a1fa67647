"""``cxpulse produce``: send a file of FeedbackEvents to the feedback topic, as a contact-center platform would.

JSON lines are sent as they are (the JSON form); records of an Avro container file are sent in the Confluent
wire format with the current FeedbackEvent schema.  Messages are keyed by customer_id (else event_id), the
way platforms usually key them.  Without ``validate`` every input is sent, invalid ones included, so that the
worker's dead-letter path sees them; with it, invalid inputs are refused and reported instead.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from schemas.codec import FEEDBACK_RAW, SchemaCatalog, encode_feedback
from streams.core.validate import Clock, DeadLetter, outside_the_clock, validate_batch
from streams.errors import BrokerError, SchemaError, TopicMissingError
from streams.kafka import Kafka, produce_waiting, producer
from streams.replay import Batch, read_batches
from streams.topics import ACLS_HINT, KafkaWait, describe_topics

FLUSH_TIMEOUT_SECONDS = 60.0
INTERRUPTED_FLUSH_SECONDS = 5.0  # after Ctrl-C, what was sent is given this long to be delivered
FLUSH_SLICE_SECONDS = 0.5  # the last deliveries are waited for this long at a time (then stopping() is looked at)
METADATA_TIMEOUT_SECONDS = 10.0  # how long produce waits for Kafka to answer before it gives up
TOPIC_READY_SECONDS = 15.0  # a topic just created, without a leader yet, is waited for this long
_DEFAULTS: dict[str, Any] = {f["name"]: f.get("default") for f in FEEDBACK_RAW["fields"]}


@dataclass
class ProduceStats:
    """What a produce run sent, refused and failed to deliver."""

    sent: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)  # "position: why" of inputs that could not be sent or read
    future: int = 0  # sent, but a worker with the given clock refuses them: future_timestamp
    too_old: int = 0  # sent, but older than the retention: too_old
    will_refuse: Counter[str] = field(default_factory=Counter)  # sent, but a worker dead-letters them, by reason
    delivered: int = 0  # acknowledged by Kafka
    interrupted: bool = False  # stopped by Ctrl-C (or SIGTERM): what was sent before is delivered if it can be


def encode_record(record: Mapping[str, Any], catalog: SchemaCatalog) -> bytes:
    """A decoded FeedbackEvent in the Confluent wire format of the current schema."""
    return encode_feedback(record, catalog)


def _messages(
    batch: Batch, keep: set[int], catalog: SchemaCatalog, with_undecodable: bool, not_sent: list[str]
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every input of the batch to send, in input order; what cannot be sent (a record the
    current schema cannot carry, the unreadable rest of a corrupt container) goes to ``not_sent``."""
    out: list[tuple[int, bytes | None, bytes]] = []
    for index in sorted(keep):
        record = batch.records[index]
        original = batch.originals(index)
        if isinstance(original, str):  # a JSON line (one that is not UTF-8 never decodes: it is undecodable)
            value = original.encode()
        else:
            try:
                value = encode_record(record, catalog)
            except SchemaError:
                raise  # the registry, not this record: stop with its message
            except Exception as exc:  # noqa: BLE001 - e.g. an enum symbol the current schema lacks
                not_sent.append(f"{batch.positions[index]}: cannot be encoded as a FeedbackEvent: {exc}")
                continue
        key = record.get("customer_id") or record.get("event_id")
        out.append((2 * index + 1, key.encode() if key else None, value))
    for before, dead in batch.undecodable:
        if not dead.original:  # the unreadable rest of an Avro container: nothing to send
            not_sent.append(f"{dead.position}: {dead.detail}")
        elif with_undecodable:
            raw = dead.original.encode() if isinstance(dead.original, str) else dead.original
            out.append((2 * before, None, raw))
    return [(key, value) for _, key, value in sorted(out, key=lambda item: item[0])]


def messages_of(path: Path, catalog: SchemaCatalog) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) of every input of ``path`` as ``produce`` sends it without validation (undecodable lines as
    they are), in input order; what cannot be sent at all is left out."""
    for batch, _ in read_batches(path):
        yield from _messages(batch, set(range(len(batch.records))), catalog, True, [])


def check_topic(kafka: Kafka, topic: str) -> None:
    """Fail fast, naming the problem, when Kafka cannot be used, the topic does not exist or the principal may not
    use it; a topic created a moment ago (no leader yet) is waited for up to TOPIC_READY_SECONDS."""
    try:
        describe_topics(kafka, [topic], KafkaWait(TOPIC_READY_SECONDS))
    except TopicMissingError as exc:
        raise TopicMissingError(f"{exc} (create it with `cxpulse topics`)") from None


def delivery_failure(error: KafkaError, topic: str) -> str:
    """One line for a message Kafka did not take; an authorization failure says which grant is missing."""
    if error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        return f"{topic}: not authorized to write to it (the principal needs Write on it; {ACLS_HINT})"
    return f"{topic}: {error.str()}"


def produce_file(
    path: Path,
    kafka: Kafka,
    topic: str,
    catalog: SchemaCatalog,
    *,
    validate: bool = False,
    on_refused: Callable[[DeadLetter], None] = lambda dead: None,
    progress: Callable[[int], None] | None = None,
    clock: Clock | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> ProduceStats:
    """Send every event of ``path`` to ``topic``; return what happened.  Waits until all are delivered.  With
    ``clock``, the stats count the events a worker with that clock will refuse for their time.  ``stopping()``
    true (looked at after each batch and while the last messages are delivered), or a KeyboardInterrupt: the
    stats say what was sent and delivered, ``interrupted``."""
    stats = ProduceStats()
    batches = read_batches(path)
    first = next(batches)  # a file that is not events at all is refused here, before Kafka is asked anything
    out = producer(kafka, **{"linger.ms": 20, "compression.type": "lz4"})
    check_topic(kafka, topic)

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            stats.failed.append(delivery_failure(error, message.topic() or topic))
        else:
            stats.delivered += 1

    try:
        for batch, done in itertools.chain([first], batches):
            _send_batch(out, topic, batch, catalog, stats, validate, on_refused, clock, delivered)
            out.poll(0)
            if progress is not None:
                progress(done)
            if stopping():
                return _interrupted(out, stats)
        deadline = time.monotonic() + FLUSH_TIMEOUT_SECONDS
        while out.flush(FLUSH_SLICE_SECONDS) > 0:
            if stopping():
                return _interrupted(out, stats)
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"messages still undelivered after {FLUSH_TIMEOUT_SECONDS:.0f} s: is Kafka at {kafka} up?"
                )
    except KeyboardInterrupt:  # Ctrl-C where the caller did not make it stopping(): say what was sent
        return _interrupted(out, stats)
    return stats


def _interrupted(out: Any, stats: ProduceStats) -> ProduceStats:
    """Stopped (Ctrl-C): what was sent and delivered, rather than nothing."""
    stats.interrupted = True
    out.flush(INTERRUPTED_FLUSH_SECONDS)
    # Ctrl-C can land between a produce() librdkafka took and the count after it (seen in CI: 44,584 sent,
    # 44,585 delivered); every message it took is delivered, failed or still queued, so that is what was sent
    stats.sent = stats.delivered + len(stats.failed) + len(out)
    return stats


def _send_batch(
    out: Any,
    topic: str,
    batch: Batch,
    catalog: SchemaCatalog,
    stats: ProduceStats,
    validate: bool,
    on_refused: Callable[[DeadLetter], None],
    clock: Clock | None,
    delivered: Callable[[KafkaError | None, Message], None],
) -> None:
    """Send one batch of the file: with ``validate`` only its valid events (the others to ``on_refused``); without,
    all of them, counting the ones a worker will dead-letter."""
    if clock is not None:
        future, old = outside_the_clock(batch.records, clock)
        stats.future += future
        stats.too_old += old
    keep = set(range(len(batch.records)))
    _, rejected = validate_batch(batch.records)
    if validate:
        keep -= {r.at for r in rejected}
        for dead in batch.dead_letters(rejected):
            stats.refused[dead.reason] += 1
            on_refused(dead)
    else:
        stats.will_refuse.update(r.reason for r in rejected)
        undecodable = sum(1 for _, dead in batch.undecodable if dead.original)
        if undecodable:
            stats.will_refuse["undecodable"] += undecodable
    for key, value in _messages(batch, keep, catalog, not validate, stats.not_sent):
        produce_waiting(out, topic, value, key, on_delivery=delivered)
        stats.sent += 1
