"""The ClickHouse sink: a Faust app of two agents, run by ``cxpulse worker`` as its ``sink`` process, or alone by
``cxpulse sink`` (production scale-out: its own consumer group ``<app>-sink``).

- ``clickhouse_panes`` on ``cx.metrics.panes``: every pane result revision into ``cxpulse.pane_results``
  (ReplacingMergeTree on ``version``: a re-delivered or revised result replaces);
- ``clickhouse_answers`` on ``<app>-answers``: the counted answers of every hot-path batch (raw bytes, produced
  in the batch's transaction, so each counted answer is there exactly once) into ``cxpulse.answers``.

Batches are bounded by size and time (``noack_take``).  An insert carries a deterministic
``insert_deduplication_token`` (topic, partition, offsets), so a retry or a re-delivery writes nothing twice.  When
ClickHouse fails, the insert is retried with backoff (0.5 s doubling to 30 s) and the batch is not acked: the agent
stops taking records, Faust's bounded buffers fill, and consumption pauses (backpressure) until ClickHouse is back;
nothing is dropped, nothing is buffered without bound.  Errors and lag are metrics
(``cxpulse_sink_errors_total{sink="clickhouse"}``, ``cxpulse_sink_lag_messages{sink="clickhouse",...}``).

The embedded store can be opened by one process only, so this process also answers read-only SQL for
``cxpulse report`` / ``cxpulse drivers`` on a loopback port, written to ``<data dir>/clickhouse-endpoint.json``.

Run as ``python -m sinks.app METRICS_PORT LOGLEVEL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

import faust
from aiohttp import web
from clickhouse_connect.driver.client import Client
from faust.types import EventT, StreamT
from prometheus_client import Counter, Gauge

from schemas.codec import WINDOW_RESULT, SchemaCatalog, decode_confluent
from sinks import clickhouse as store
from sinks.prometheus import measure_sink_lag
from streams.config import Settings
from streams.topics import internal_topics, partition_count
from streams.worker import faust_compat
from streams.worker.app import faust_app, run_faust_process
from streams.worker.hotpath import catalog_for
from streams.worker.metrics import WorkerMetrics
from streams.worker.records import decode_answers

LOG = logging.getLogger("cxpulse.sink")
PROCESS = "sink"
SINK = "clickhouse"
PANES_BATCH = 5000  # results per insert at most
ANSWERS_BATCH = 20  # answer messages (a hot-path batch each) per insert at most
BATCH_WITHIN_SECONDS = 1.0  # an insert waits at most this long to fill
BACKOFF_MAX_SECONDS = 30.0
MAX_QUERY_ROWS = 1_000_000


class Store:
    """The process's one client (the embedded engine allows one per process anyway), used from threads in turn."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Client | None = None
        self.lock = asyncio.Lock()

    def _open(self) -> Client:
        if self.client is None:
            client = store.connect(self.settings)
            applied = store.migrate(client)
            if applied:
                LOG.warning("ClickHouse schema: applied %s", ", ".join(applied))
            self.client = client
        return self.client

    async def run(self, work: Callable[[Client], Any]) -> Any:
        async with self.lock:
            return await asyncio.to_thread(lambda: work(self._open()))

    def reset(self) -> None:
        """Forget a client that failed (an HTTP server may come back; a new client is made then)."""
        if self.client is not None and store.chdb_path(self.settings.clickhouse_url) is None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None


class SinkMetrics:
    def __init__(self, base: WorkerMetrics) -> None:
        registry = base.registry
        self.base = base
        self.rows = Counter("cxpulse_sink_rows", "Rows written to ClickHouse, by table", ["table"], registry=registry)
        self.up = Gauge(
            "cxpulse_clickhouse_up", "1 while the last ClickHouse insert or check succeeded", registry=registry
        )
        self.store_up = True

    def set_up(self, up: bool) -> None:
        self.store_up = up
        self.up.set(1 if up else 0)


def create_app(settings: Settings, metrics: WorkerMetrics, catalog: SchemaCatalog | None = None) -> faust.App:
    """The sink's Faust app (not started)."""
    catalog = catalog or catalog_for(settings)
    app = faust_app(settings, f"{settings.app_id}-sink", "sink")
    answers_name = internal_topics(settings).answers
    results = app.topic(
        settings.results_topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partition_count(settings.kafka, settings.results_topic),
    )
    answers = app.topic(
        answers_name,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partition_count(settings.kafka, answers_name),
    )
    sink = SinkMetrics(metrics)
    metrics.sink_errors.labels(SINK)
    db = Store(settings)
    applied: dict[str, dict[int, int]] = {settings.results_topic: {}, answers_name: {}}

    async def write(table: str, topic: str, partition: int, offsets: Sequence[int], rows: list[list[Any]]) -> None:
        """Insert until ClickHouse takes it (the batch is not acked before: backpressure)."""
        columns = store.PANE_COLUMNS if table == "pane_results" else store.ANSWER_COLUMNS
        dedup = store.token(topic, partition, min(offsets), max(offsets), len(offsets))
        backoff = 0.5
        while True:
            try:
                await db.run(lambda client: store.insert(client, table, rows, columns, dedup))
                sink.rows.labels(table).inc(len(rows))
                sink.set_up(True)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: retried, counted, logged
                metrics.sink_errors.labels(SINK).inc()
                sink.set_up(False)
                db.reset()
                LOG.warning(
                    "ClickHouse insert into %s failed (%s); retrying in %.1f s, %s[%d] paused",
                    table,
                    exc,
                    backoff,
                    topic,
                    partition,
                )
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)

    async def sink_batches(
        stream: StreamT[Any], topic: str, table: str, size: int, rows_of: Callable[[bytes], list[list[Any]]]
    ) -> None:
        """Batches of a topic into a table: rows per partition, written (until ClickHouse takes them), then acked."""
        batches = cast("faust.Stream[Any]", stream)
        done = applied[topic]
        async for events in batches.noack_take(size, within=BATCH_WITHIN_SECONDS):
            by_partition: dict[int, tuple[list[int], list[list[Any]]]] = defaultdict(lambda: ([], []))
            for event in cast("list[EventT[Any]]", events):
                message = event.message
                offsets, rows = by_partition[message.partition]
                offsets.append(message.offset)
                try:
                    rows.extend(rows_of(message.value or b""))
                except Exception as exc:  # noqa: BLE001 - a record that is not what the topic carries: counted
                    metrics.sink_errors.labels(SINK).inc()
                    LOG.error("%s[%d]@%d cannot be read (%s); skipped", topic, message.partition, message.offset, exc)
            for partition, (offsets, _) in by_partition.items():  # where the lag counts from while a write waits
                done.setdefault(partition, min(offsets))
            for partition, (offsets, rows) in by_partition.items():
                await write(table, topic, partition, offsets, rows)
                done[partition] = max(offsets) + 1
            for event in cast("list[EventT[Any]]", events):
                await batches.ack(event)

    @app.agent(results)
    async def clickhouse_panes(stream: StreamT[Any]) -> None:
        await sink_batches(
            stream,
            settings.results_topic,
            "pane_results",
            PANES_BATCH,
            lambda value: [store.pane_row(decode_confluent(value, catalog, WINDOW_RESULT)[1])],
        )

    @app.agent(answers)
    async def clickhouse_answers(stream: StreamT[Any]) -> None:
        await sink_batches(
            stream,
            answers_name,
            "answers",
            ANSWERS_BATCH,
            lambda value: store.answer_rows(decode_answers(value), catalog),
        )

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def sink_health() -> None:
        for topic, done in applied.items():
            measure_sink_lag(app, metrics, SINK, topic, done, transactional=topic == answers_name)
        # ready means consuming; ClickHouse being away is cxpulse_clickhouse_up 0 and sink errors (CxSinkFailing),
        # not a pipeline that is down, nor a stall: no progress while the store pushes back is the design
        if not sink.store_up:
            metrics.health.progress.done()
        ready = faust_compat.recovered(app) and not faust_compat.rebalancing(app)
        metrics.process_ready.labels(PROCESS).set(1.0 if metrics.health.ready(ready) else 0.0)
        if db.client is None:
            try:
                await db.run(lambda client: client.command("SELECT 1"))
                sink.set_up(True)
            except Exception as exc:  # noqa: BLE001 - reported, retried at the next tick
                sink.set_up(False)
                LOG.debug("ClickHouse not available yet: %s", exc)  # the writes log their failures

    @app.task  # type: ignore[untyped-decorator]
    async def query_endpoint() -> None:
        """Read-only SQL over HTTP on loopback, for `cxpulse report` while this process holds the store; a
        random bearer token in the endpoint file (mode 0600) is required."""
        token = secrets.token_urlsafe(32)
        server = web.Application()
        server.router.add_post("/v1/query", lambda request: answer_query(request, db, token))
        runner = web.AppRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = cast(Any, site._server).sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp has no public getter
        store.write_endpoint(settings.data_dir, f"http://127.0.0.1:{port}/v1/query", token)
        LOG.info("read-only SQL on http://127.0.0.1:%d/v1/query", port)

    return app


def read_only(sql: str) -> bool:
    """A single SELECT (or WITH ... SELECT) statement."""
    text = sql.strip().rstrip(";").strip()
    head = text.split(None, 1)[0].upper() if text else ""
    return head in ("SELECT", "WITH") and ";" not in text


def _run_read_only(client: Client, sql: str, parameters: dict[str, Any]) -> Any:
    """The query under ClickHouse's readonly=1, once its own parser showed it reads cxpulse tables only."""
    ast = client.query(f"EXPLAIN AST {sql}", parameters=parameters, settings=store.READ_ONLY_SETTINGS)
    refused = store.refused_tables([str(row[0]) for row in ast.result_rows])
    if refused:
        raise PermissionError(f"only the {store.DATABASE} tables are answered here, not {', '.join(refused)}")
    return client.query(sql, parameters=parameters, settings=store.READ_ONLY_SETTINGS)


async def answer_query(request: web.Request, db: Store, token: str) -> web.Response:
    """POST {"sql": "SELECT ...", "parameters": {...}} with ``Authorization: Bearer <token>`` ->
    {"columns": [...], "rows": [[...], ...]}."""
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"error": "a bearer token is required (see clickhouse-endpoint.json)"}, status=401)
    try:
        body = await request.json()
        sql, parameters = str(body["sql"]), dict(body.get("parameters") or {})
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected JSON {"sql": "SELECT ...", "parameters": {}}'}, status=400)
    if not read_only(sql):
        return web.json_response({"error": "only a single SELECT statement is answered here"}, status=400)
    try:
        result = await db.run(lambda client: _run_read_only(client, sql, parameters))
    except PermissionError as exc:
        return web.json_response({"error": str(exc)}, status=403)
    except Exception as exc:  # noqa: BLE001 - the caller gets the reason
        status = 403 if "READONLY" in str(exc) else 422
        return web.json_response({"error": str(exc).splitlines()[0][:500]}, status=status)
    rows = [list(row) for row in result.result_rows[:MAX_QUERY_ROWS]]
    return web.json_response(
        {"columns": list(result.column_names), "rows": rows}, dumps=lambda o: json.dumps(o, default=str)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sinks.app METRICS_PORT LOGLEVEL``."""
    # one line per failed insert is ours; clickhouse-connect and urllib3 would add three more each time
    for noisy in ("clickhouse_connect", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    def check(settings: Settings) -> str | None:
        return None if settings.clickhouse_url else "CXPULSE_CLICKHOUSE_URL is empty: no store to write to"

    return run_faust_process("sink", PROCESS, argv, create_app, check)


if __name__ == "__main__":
    sys.exit(main())
