"""The ``sink`` process of a worker (``cxpulse worker`` with a store, or ``cxpulse sink`` alone; group
``<app>-sink``): the ClickHouse sink (sinks/clickhouse_sink.py: a librdkafka loop, not Faust, like the hot path)
and the store's query endpoint, fed by its three inputs (:func:`sink_feeds`).  Faust-free (see
streams/processes/__init__.py)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from confluent_kafka import Consumer

from schemas.codec import (
    JOURNEY_INSTANCE,
    WINDOW_RESULT,
    SchemaCatalog,
    catalog_for,
    decode_confluent,
    decode_confluent_values,
)
from sinks import clickhouse as store
from sinks.clickhouse_sink import (
    ANSWERS_BATCH,
    ANSWERS_BATCH_BYTES,
    JOURNEYS_BATCH,
    PANES_BATCH,
    ClickHouseSink,
    Feed,
    SinkMetrics,
    Store,
    serve_queries_in_thread,
)
from streams.agents.health import CallGuard
from streams.agents.process import start_process
from streams.agents.record import Record
from streams.config import Settings
from streams.core.validate import Feedback
from streams.errors import EXIT_PERMANENT, PERMANENT_KAFKA_ERRORS, BrokerError, CxPulseError
from streams.kafka import FETCH_MIN_BYTES
from streams.kafka import consumer as new_consumer
from streams.processes import SINK
from streams.topics import TOPIC_PROPAGATION_SECONDS, KafkaWait, describe_topics, internal_topics
from streams.worker.records import answer_row_columns, decode_answer_themes, decode_answers, is_answer_rows

LOG = logging.getLogger("cxpulse.processes")
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}  # fmt: skip


_INTERACTION, _THEMES = Feedback._fields.index("interaction_id"), Feedback._fields.index("themes")
_STORE_FIELDS = len(Feedback._fields) + 1  # an answer row's StoreFields follow its validated form and its context


def answer_block(record: Record, catalog: SchemaCatalog) -> list[list[Any]]:
    """The ``cxpulse.answers`` columns of one answers message: its rows as the hot path validated them
    (records.encode_answer_rows: nothing decoded or validated again), taken column by column, or, from a worker
    before 2026-12-06, its answers' bytes and, from its header, their themes (the hot path matched them once; the
    sink does not match again)."""
    if is_answer_rows(record.headers):
        columns = answer_row_columns(record.value)
        agent, team, comment = columns[_STORE_FIELDS:]
        return store.answer_field_columns(columns, columns[_INTERACTION], agent, team, comment, columns[_THEMES])
    values = decode_answers(record.value)
    return store.answer_columns(values, catalog, decode_answer_themes(record.headers, len(values)))


def sink_feeds(settings: Settings) -> list[Feed]:
    """The ClickHouse sink's inputs: pane results, counted answers and (with journeys) journey instances."""
    catalog = catalog_for(settings)
    feeds = [
        Feed(
            settings.results_topic,
            "pane_results",
            None,
            PANES_BATCH,
            revisions=True,
            row_of=lambda record: store.pane_row(decode_confluent(record.value, catalog, WINDOW_RESULT)[1]),
        ),
        Feed(
            internal_topics(settings).answers,
            "answers",
            lambda record: answer_block(record, catalog),
            ANSWERS_BATCH,
            transactional=True,
            batch_bytes=ANSWERS_BATCH_BYTES,
        ),
    ]
    if settings.journeys:
        feeds.append(
            Feed(
                settings.journeys_topic,
                "journey_instances",
                None,
                JOURNEYS_BATCH,
                revisions=True,
                row_of=lambda record: store.journey_values_row(
                    decode_confluent_values(record.value, catalog, JOURNEY_INSTANCE)
                ),
            )
        )
    return feeds


def sink_consumer(settings: Settings) -> Consumer:
    """The sink's consumer: group ``<app>-sink``, read_committed (the answers come in the hot path's
    transactions), the broker holding a fetch as the hot path's does.

    Its partitions are assigned topic by topic (``range``): two sinks share each topic, the answers (most of the
    work) included.  The sticky assignors balance the count of partitions over every topic together, and gave one
    of two sinks every answers partition and the other the panes and journeys (test_security's lone sink, once the
    journeys topic's name sorted otherwise); a sink's revoked batch is read again by its next owner either way."""
    return new_consumer(
        settings.kafka,
        f"{settings.app_id}-sink",
        **{
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "max.poll.interval.ms": 300_000,
            "fetch.min.bytes": FETCH_MIN_BYTES,
            "fetch.wait.max.ms": settings.fetch_wait_ms,
            "client.id": f"{settings.app_id}-{SINK}",
        },
    )


def run_sink(argv: Sequence[str]) -> int:
    """The ``sink`` process: ``METRICS_PORT LOGLEVEL``; the ClickHouse sink's loop and the store's endpoint
    (sinks/clickhouse_sink.py).  SIGTERM writes the batch in flight and stops."""
    port, loglevel = int(argv[0]), argv[1] if len(argv) > 1 else "warn"
    logging.basicConfig(
        level=LOG_LEVELS.get(loglevel.lower(), logging.WARNING),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    for noisy in ("clickhouse_connect", "urllib3"):  # one line per failed insert is ours; they would add three more
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = start_process(SINK, port, _needs_a_store)
    if started is None:
        return EXIT_PERMANENT
    settings, metrics = started
    feeds = sink_feeds(settings)
    try:  # the worker made them; a broker that does not know one yet is asked again
        describe_topics(settings.kafka, [f.topic for f in feeds], KafkaWait(reached=True), TOPIC_PROPAGATION_SECONDS)
    except BrokerError as exc:
        print(f"cxpulse {SINK}: {exc}", file=sys.stderr)
        return EXIT_PERMANENT if isinstance(exc, PERMANENT_KAFKA_ERRORS) else 1
    db = Store(settings)
    try:
        serve_queries_in_thread(settings, db)
    except CxPulseError as exc:
        print(f"cxpulse {SINK}: {exc}", file=sys.stderr)
        return 1
    sink = ClickHouseSink(feeds, db, SinkMetrics(metrics), sink_consumer(settings), CallGuard(SINK))

    def stop(signum: int, frame: FrameType | None) -> None:
        LOG.info("%s: %s: writing the batch in flight", SINK, signal.Signals(signum).name)
        sink.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.run()
    return 0


def _needs_a_store(settings: Settings) -> str | None:
    return None if settings.clickhouse_url else "CXPULSE_CLICKHOUSE_URL is empty: no store to write to"
