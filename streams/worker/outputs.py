"""What one hot-path batch writes in its transaction, topic by topic (streams.worker.ingest.BatchOut in, messages
out through the slot's streams.worker.transactor.Transactor):

- the routed answers, one message per routed partition (at least one, answers or not: its header says how far
  each feedback partition is routed), stamped with the batch's newest event timestamp;
- the dead letters, to the DLQ partition of their source partition;
- one partial message per partials partition, stamped likewise, with how far the slot's routed partitions are
  counted (records.Through: merge's watermark);
- the seen ids of every routed partition that counted answers (their offsets noted for the local checkpoint);
- the counted answers for the store and, with a customer id, for the journey agent, in messages under the topics'
  size limit;
- detractor follow-ups, as many as the slot's rate allows (streams.core.followups).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, Message

from streams.agents.metrics import WorkerMetrics
from streams.config import Settings
from streams.core.followups import TokenBucket
from streams.core.followups import encode as encode_followup
from streams.topics import PARTIALS_MAX_MESSAGE_BYTES, internal_topics
from streams.worker.ingest import BatchOut, reasons
from streams.worker.records import (
    ANSWER_ROWS,
    ANSWERS_FORMAT_HEADER,
    THEMES_HEADER,
    THROUGH_HEADER,
    Through,
    encode_answer_rows,
    encode_answer_themes,
    encode_answers,
    encode_partials,
    encode_routed_rows,
    encode_routed_through,
    encode_seen,
    encode_through,
    routed_row,
)
from streams.worker.transactor import Transactor

PARTITION_BY_KEY = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks by key
ANSWERS_MESSAGE_BYTES = PARTIALS_MAX_MESSAGE_BYTES // 2  # room for framing and compression overhead
Headers = list[tuple[str, str | bytes | None]]
T = TypeVar("T")


class BatchOutputs:
    """Writes a batch's output (see the module docstring); keeps what outlives a batch: how far each routed
    partition is counted, the follow-up rate, where the last batch's seen-ids entries went."""

    def __init__(self, settings: Settings, partitions: dict[str, int], transactor: Transactor) -> None:
        self.settings = settings
        self.topics = internal_topics(settings)
        self.dlq_partitions = partitions[settings.dlq_topic]
        self.routed_partitions = partitions[self.topics.routed]
        self.transactor = transactor
        self.followup_bucket = TokenBucket(settings.followups_per_minute, time.monotonic())
        self.seen_offsets: dict[int, int] = {}  # routed partition -> changelog offset of this batch's seen-ids entry
        self.counted: dict[int, dict[int, int]] = {}  # routed partition -> {feedback p: ms counted through}

    def write(self, out: BatchOut, newest_ms: int, routed_through: dict[int, int]) -> int:
        """Queue every message of the batch in the open transaction; return how many follow-ups went out."""
        produce = self.transactor.produce
        self._routed(out, newest_ms, routed_through)
        for letter in out.dead_letters:
            dlq = self.settings.dlq_topic
            produce(dlq, letter.value, letter.key, letter.source_partition % self.dlq_partitions, letter.headers)
        headers: Headers = [(THROUGH_HEADER, encode_through(self.counted_through(out)))]
        for partition, batch in out.partials.items():
            produce(self.topics.partials, encode_partials(batch), None, partition, headers, timestamp=newest_ms)
        self.seen_offsets.clear()
        for partition, buckets in out.seen.items():
            produce(self.topics.seen_ids, encode_seen(buckets), None, partition, on_delivery=self._seen_delivered)
        self._answers(out)
        for partition, rows in out.journeys.items():
            for chunk in answer_chunks(rows, ANSWERS_MESSAGE_BYTES, len):
                produce(self.topics.journey_answers, b"[" + b",".join(chunk) + b"]", None, partition)
        sent = self.followup_bucket.take(len(out.followups), time.monotonic()) if out.followups else 0
        for followup in out.followups[:sent]:
            key, value = encode_followup(followup)
            produce(self.settings.followups_topic, value, key, PARTITION_BY_KEY)
        return sent

    def _answers(self, out: BatchOut) -> None:
        """The counted answers for the store: their rows (records.encode_answer_rows); those an older worker routed
        as their bytes, with their themes in a header (contract section 9)."""
        rows_format: Headers = [(ANSWERS_FORMAT_HEADER, ANSWER_ROWS)]
        for partition, rows in out.answer_rows.items():
            for chunk in answer_chunks(rows, ANSWERS_MESSAGE_BYTES, len):
                self.transactor.produce(self.topics.answers, encode_answer_rows(chunk), None, partition, rows_format)
        for partition, values in out.answers.items():
            themes = out.answer_themes.get(partition) or [()] * len(values)
            for run in answer_chunks(list(zip(values, themes, strict=True)), ANSWERS_MESSAGE_BYTES, _raw_size):
                found = encode_answer_themes([t for _, t in run])
                extra: Headers | None = [(THEMES_HEADER, found)] if found is not None else None
                self.transactor.produce(
                    self.topics.answers, encode_answers([v for v, _ in run]), None, partition, extra
                )

    def _routed(self, out: BatchOut, newest_ms: int, through: dict[int, int]) -> None:
        headers: Headers = [(THROUGH_HEADER, encode_routed_through(through))]
        for partition, answers in out.routed.items():
            rows = [routed_row(answer) for answer in answers]
            for run in answer_chunks(rows, ANSWERS_MESSAGE_BYTES, len) or [[]]:
                self.transactor.produce(
                    self.topics.routed, encode_routed_rows(run), None, partition, headers, timestamp=newest_ms
                )

    def counted_through(self, out: BatchOut) -> Through:
        """How far this slot's routed partitions are counted once this batch commits (records.Through)."""
        at: dict[tuple[int, int], int] = {}
        for partition in set(self.counted) | set(out.through):
            held, now = self.counted.get(partition, {}), out.through.get(partition, {})
            for source in set(held) | set(now):
                at[(partition, source)] = max(held.get(source, 0), now.get(source, 0))
        return Through(self.routed_partitions, at)

    def committed(self, out: BatchOut) -> None:
        """The batch's transaction committed: what it counted is counted through."""
        for partition, counted in out.through.items():
            held = self.counted.setdefault(partition, {})
            for source, ms in counted.items():
                held[source] = max(held.get(source, ms), ms)

    def forget(self, routed: list[int]) -> None:
        """Revoked routed partitions: their new owner reports them."""
        for partition in routed:
            self.counted.pop(partition, None)

    def _seen_delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.seen_offsets[message.partition() or 0] = message.offset() or 0


def count_batch(metrics: WorkerMetrics, out: BatchOut, followups_sent: int, feedback: str) -> None:
    """A committed batch's counters."""
    if out.followups:
        metrics.followups.labels("sent").inc(followups_sent)
        metrics.followups.labels("rate_limited").inc(len(out.followups) - followups_sent)
    metrics.records.labels(feedback).inc(out.records)
    for reason, count in reasons(out.dead_letters).items():
        metrics.dead_letters.labels(reason).inc(count)
    metrics.duplicates.inc(out.duplicates)
    metrics.late_events.inc(out.late)


def _raw_size(answer: tuple[bytes, tuple[str, ...]]) -> int:
    return len(answer[0])


def answer_chunks(values: list[T], limit: int, size_of: Callable[[T], int]) -> list[list[T]]:
    """The answers of one partition in runs of at most ``limit`` framed bytes (``size_of`` one, without its 4-byte
    frame; a batch of large answers, long comments say, must not make one message over the topic's
    max.message.bytes: the transaction would abort and repeat forever)."""
    chunks: list[list[T]] = [[]]
    size = 0
    for value in values:
        framed = size_of(value) + 4
        if chunks[-1] and size + framed > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(value)
        size += framed
    return chunks if chunks[-1] else []
