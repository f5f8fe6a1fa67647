"""The ClickHouse sink: two agents of one class, run by ``cxpulse worker`` as its ``sink`` process, or alone by
``cxpulse sink`` (production scale-out: its own consumer group ``<app>-sink``).

- ``clickhouse_panes`` on ``cx.metrics.panes``: every pane result revision into ``cxpulse.pane_results``
  (ReplacingMergeTree on ``version``: a re-delivered or revised result replaces);
- ``clickhouse_answers`` on ``<app>-answers``: the counted answers of every hot-path batch (raw bytes, produced
  in the batch's transaction, so each counted answer is there exactly once) into ``cxpulse.answers``;
- ``clickhouse_journey_instances`` on ``cx.journeys`` (with ``CXPULSE_JOURNEYS``): every journey instance revision
  into ``cxpulse.journey_instances`` (ReplacingMergeTree on ``version`` with ``deleted``: the newest revision of an
  instance wins, a replaced one drops out).

Batches are bounded by size and time (``noack_take``); each is one column-oriented insert (its partitions together).
An insert carries a deterministic ``insert_deduplication_token`` (topic, partitions, offsets), so a retry writes
nothing twice (a batch re-delivered in another cut: the tables' ReplacingMergeTree keys absorb it).  When
ClickHouse fails, the insert is retried with backoff (0.5 s doubling to 30 s) and the batch is not acked: the agent
stops taking records, Faust's bounded buffers fill, and consumption pauses (backpressure) until ClickHouse is back;
nothing is dropped, nothing is buffered without bound.  Errors and lag are metrics
(``cxpulse_sink_errors_total{sink="clickhouse"}``, ``cxpulse_sink_lag_messages{sink="clickhouse",...}``).

The embedded store can be opened by one process only, so this process also answers read-only SQL for
``cxpulse report`` / ``cxpulse drivers`` on a loopback port, written to ``<data dir>/clickhouse-endpoint.json``,
and takes ``cxpulse backfill``'s rows beside it (``/v1/backfill``: history's rows of the three tables, each pane
result and journey instance with version 0, so a backfill can never replace a row the stream wrote).

Built into a process by streams/processes.py (``cxpulse worker``'s ``sink`` process, or ``cxpulse sink``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.client import Client
from prometheus_client import Counter, Gauge

from sinks import clickhouse as store
from streams.agents.base import BatchAgent, Record
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings

LOG = logging.getLogger("cxpulse.sink")
SINK = "clickhouse"
PANES_BATCH = 5000  # results per insert at most
ANSWERS_BATCH = 60  # answer messages (a hot-path batch of one source partition each) per insert at most
# An insert waits at most this long to fill (a full batch goes at once).  Every insert is a part ClickHouse merges
# in the background: at a small contact center's rate one insert a second per table kept the embedded store's
# merges busy (issue 35's quiet run: the sink 27% of a core, 12% with 5 s and the hot path's fetch window); an answer is
# in the store this much later at worst, at low rates.
BATCH_WITHIN_SECONDS = 5.0
HEALTH_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 30.0
MAX_QUERY_ROWS = 1_000_000
MAX_BACKFILL_BYTES = 64 * 1024 * 1024  # one request of `cxpulse backfill` (streams.backfill.CHUNK_ROWS rows)
JOURNEYS_BATCH = 5000  # journey instance revisions per insert at most
COLUMNS = {
    "pane_results": store.PANE_COLUMNS,
    "answers": store.ANSWER_COLUMNS,
    "journey_instances": store.JOURNEY_COLUMNS,
}


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


class ClickHouseSink(BatchAgent):
    """One input of the ClickHouse sink into one table: every batch's rows (``columns_of`` reads a record, its value
    and headers, as columns) in one column-oriented insert, retried until ClickHouse takes it (the batch is not
    acked before: back-pressure), with a deterministic deduplication token (topic, and per partition its offsets),
    so a retry writes nothing twice; a batch re-delivered in another cut writes its rows again, which the tables'
    ReplacingMergeTree keys (and FINAL in every read) absorb."""

    within_seconds = BATCH_WITHIN_SECONDS
    tick_seconds = HEALTH_SECONDS
    writes_in_finish = True

    def __init__(
        self,
        topic: str,
        table: str,
        columns_of: Callable[[Record], list[list[Any]]],
        db: Store,
        sink: SinkMetrics,
        *,
        batch_size: int,
        transactional: bool = False,
    ) -> None:
        self.name = f"clickhouse-{table}"
        self.topic = topic
        self.table = table
        self.columns_of = columns_of
        self.db = db
        self.counters = sink
        self.metrics = sink.base
        self.batch_size = batch_size
        self.transactional_input = transactional
        self.columns = COLUMNS[table]
        self._data: list[list[Any]] = [[] for _ in self.columns]  # the batch's rows, column by column
        self._ranges: list[tuple[int, int, int, int]] = []  # the batch's (partition, first, last, records)

    @property
    def sink(self) -> str:
        return SINK

    async def handle(self, partition: int, records: Sequence[Record]) -> None:
        """Read one partition's records into the batch's columns (written by :meth:`finish`)."""
        data = self._data
        for record in records:
            try:
                block = self.columns_of(record)
            except Exception as exc:  # noqa: BLE001 - a record that is not what the topic carries: counted
                self.metrics.sink_errors.labels(SINK).inc()
                LOG.error("%s[%d]@%d cannot be read (%s); skipped", self.topic, partition, record.offset, exc)
                continue
            for column, values in zip(data, block, strict=True):
                column.extend(values)
        self._ranges.append((partition, records[0].offset, records[-1].offset, len(records)))

    async def finish(self) -> None:
        """One insert for the whole batch (each insert costs ~20 ms before its first row on the embedded store:
        one per partition capped it at ~23,000 rows/s in 500-row inserts)."""
        data, ranges = self._data, self._ranges
        self._data, self._ranges = [[] for _ in self.columns], []
        if ranges:
            await self.write(ranges, data)

    async def write(self, ranges: Sequence[tuple[int, int, int, int]], data: list[list[Any]]) -> None:
        """Insert (column-oriented) until ClickHouse takes it (the batch is not acked before: backpressure);
        ``ranges``: per partition of the batch its first and last offset and its number of records."""
        dedup = store.token(self.topic, *sorted(ranges))
        where = ", ".join(f"{self.topic}[{partition}]" for partition, *_ in sorted(ranges))
        backoff = 0.5
        while True:
            try:
                await self.db.run(lambda client: store.insert_columns(client, self.table, data, self.columns, dedup))
                self.counters.rows.labels(self.table).inc(len(data[0]))
                self.counters.set_up(True)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: retried, counted, logged
                self.metrics.sink_errors.labels(SINK).inc()
                self.counters.set_up(False)
                self.db.reset()
                LOG.warning(
                    "ClickHouse insert into %s failed (%s); retrying in %.1f s, %s paused",
                    self.table, exc, backoff, where,
                )  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)

    async def tick(self, now_ms: int) -> None:
        """ClickHouse being away is cxpulse_clickhouse_up 0 and sink errors, not a stall: progress is marked."""
        if not self.counters.store_up:
            self.metrics.health.progress.done()
        if self.db.client is None:
            try:
                await self.db.run(lambda client: client.command("SELECT 1"))
                self.counters.set_up(True)
            except Exception as exc:  # noqa: BLE001 - reported, retried at the next tick
                self.counters.set_up(False)
                LOG.debug("ClickHouse not available yet: %s", exc)  # the writes log their failures


async def serve_queries(settings: Settings, db: Store) -> None:
    """Read-only SQL over HTTP on loopback, for `cxpulse report` while this process holds the store, and
    `cxpulse backfill`'s rows (version 0 only); a random bearer token in the endpoint file (mode 0600) is
    required."""
    token = secrets.token_urlsafe(32)
    server = web.Application(client_max_size=MAX_BACKFILL_BYTES)
    server.router.add_post("/v1/query", lambda request: answer_query(request, db, token))
    server.router.add_post("/v1/backfill", lambda request: take_backfill(request, db, token))
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]  # the port the kernel chose
    store.write_endpoint(settings.data_dir, f"http://127.0.0.1:{port}/v1/query", token)
    LOG.info("read-only SQL on http://127.0.0.1:%d/v1/query", port)


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


def _authorised(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


UNAUTHORISED = {"error": "a bearer token is required (see clickhouse-endpoint.json)"}


def backfill_rows(table: Any, rows: Any) -> list[list[Any]]:
    """The rows of a backfill request for ``table``, checked (ValueError naming what is wrong): a table of
    COLUMNS, each row with its columns, every pane result and journey instance with version 0 (the stream's are
    at least 1: streams/backfill.py); the drivers' tuples as ClickHouse takes them."""
    if table not in COLUMNS:
        raise ValueError(f"table must be one of {', '.join(COLUMNS)}, not {table!r}")
    columns = COLUMNS[table]
    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == len(columns) for row in rows):
        raise ValueError(f"rows must be a list of rows of {len(columns)} values ({', '.join(columns)})")
    if "version" in columns:
        at = columns.index("version")
        if any(row[at] != 0 for row in rows):
            raise ValueError("a backfill writes version 0 only (a higher version is the stream's)")
    if table == "pane_results":
        drivers = columns.index("drivers")
        for row in rows:
            row[drivers] = [tuple(driver) for driver in row[drivers]]
    return rows


async def take_backfill(request: web.Request, db: Store, token: str) -> web.Response:
    """POST {"table": ..., "rows": [[...], ...], "token": DEDUP} with ``Authorization: Bearer <token>``: one insert
    of history's rows with that deduplication token (the same request again writes nothing) -> {"rows": N}."""
    if not _authorised(request, token):
        return web.json_response(UNAUTHORISED, status=401)
    try:
        body = await request.json()
        table, dedup = str(body["table"]), str(body["token"])
        rows = backfill_rows(table, body["rows"])
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError) else ""
        return web.json_response(
            {"error": reason or 'expected JSON {"table": ..., "rows": [[...]], "token": ...}'}, status=400
        )
    columns = COLUMNS[table]
    try:
        await db.run(lambda client: store.insert(client, table, rows, columns, dedup))
    except Exception as exc:  # noqa: BLE001 - the caller gets the reason
        return web.json_response({"error": str(exc).splitlines()[0][:500]}, status=422)
    LOG.info("backfill: %d rows into %s", len(rows), table)
    return web.json_response({"rows": len(rows)})


async def answer_query(request: web.Request, db: Store, token: str) -> web.Response:
    """POST {"sql": "SELECT ...", "parameters": {...}} with ``Authorization: Bearer <token>`` ->
    {"columns": [...], "rows": [[...], ...]}."""
    if not _authorised(request, token):
        return web.json_response(UNAUTHORISED, status=401)
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
