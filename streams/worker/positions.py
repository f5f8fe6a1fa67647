"""What a hot-path slot's consumer positions say: how much waits per partition, and how far each feedback
partition is routed (a batch's ``routed-through`` header, streams.worker.records.Through)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, Message, TopicPartition

from streams.agents.metrics import WorkerMetrics


def routed_through(
    consumer: Consumer, feedback: str, messages: list[Message], now_ms: int, before: dict[int, int]
) -> dict[int, int]:
    """Per assigned feedback partition, the Kafka timestamp up to which every message is routed once this batch
    commits: the batch's time where nothing more waits, else its last message's timestamp (messages of a
    partition come in timestamp order), else what an earlier batch reached (``before``; 0: nothing yet, a backlog
    waits).  Sent on with the routed messages, counted, and sent on with the partials (records.Through): the effort
    detector evaluates panes in event time up to the lowest (sinks/effort_detector.py)."""
    last: dict[int, int] = {}
    for message in messages:
        if message.topic() == feedback:
            last[message.partition() or 0] = message.timestamp()[1]
    out = {}
    assigned = [tp for tp in consumer.assignment() if tp.topic == feedback]
    for tp in consumer.position(assigned) if assigned else []:
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and 0 <= tp.offset and high - tp.offset <= 0:
            out[tp.partition] = now_ms
        else:
            out[tp.partition] = last.get(tp.partition, before.get(tp.partition, 0))
    return out


def measure_lag(consumer: Consumer, metrics: WorkerMetrics, lag: dict[tuple[str, int], int]) -> None:
    """Per assigned partition: the end offset librdkafka saw in its last fetch (no broker round trip) minus the
    next offset to process, into ``lag`` and the gauge."""
    assigned = consumer.assignment()
    if not assigned:
        return
    for tp in consumer.position(assigned):
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and tp.offset >= 0:
            lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag[(tp.topic, tp.partition)])


def partition_names(partitions: Iterable[TopicPartition]) -> str:
    """``topic[0, 1], other[2]`` for a log line."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{topic}{sorted(found)}" for topic, found in sorted(by_topic.items())) or "nothing"
