"""How the store is reached from outside the process that writes it (the commands `report`, `drivers`, `backfill`,
and the effort detector's words): a clickhouse-connect client (a server, or the embedded store when no process holds
it), or the read-only endpoint of the worker that holds the embedded store; any failure is one StoreError naming the
store and the cause (sinks.clickhouse.why).  ``cxpulse backfill`` writes the same two ways
(:class:`ClientWriter`, :class:`EndpointWriter`: the holding worker's ``/v1/backfill``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from sinks import clickhouse as store
from streams.config import Settings


class Reader(Protocol):
    def rows(self, sql: str, parameters: Mapping[str, Any]) -> list[Sequence[Any]]: ...


class ClientReader:
    """Queries through a clickhouse-connect client; a failure is a StoreError naming the store and the cause."""

    def __init__(self, client: Any, url: str = "") -> None:
        self.client = client
        self.url = url

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> list[Sequence[Any]]:
        try:
            return list(self.client.query(sql, parameters=dict(parameters)).result_rows)
        except Exception as exc:  # clickhouse-connect's errors, and urllib3's beneath them
            raise store.StoreError(f"reading ClickHouse at {store.redact(self.url)}: {store.why(exc)}") from exc


class EndpointReader:
    """Queries through the read-only SQL endpoint of the process that holds the embedded store
    (sinks/clickhouse_sink.py)."""

    def __init__(self, endpoint: store.Endpoint, timeout: float = 60.0) -> None:
        self.url = endpoint.url
        self.token = endpoint.token
        self.timeout = timeout

    def rows(self, sql: str, parameters: Mapping[str, Any]) -> list[Sequence[Any]]:
        return list(self._post(self.url, {"sql": sql, "parameters": dict(parameters)})["rows"])

    def _post(self, url: str, payload: Mapping[str, Any]) -> Any:
        body = json.dumps(payload, default=str).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(url, body, headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - loopback, our own
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise store.StoreError(f"the worker's store endpoint refused: {exc.read().decode()[:300]}") from exc
        except OSError as exc:
            raise store.StoreError(f"the worker's store endpoint {url} did not answer: {exc}") from exc


class ClientWriter(ClientReader):
    """Reads and writes (``cxpulse backfill``) through a clickhouse-connect client."""

    def insert(self, table: str, data: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str) -> None:
        """One column-oriented insert (a sequence per name of ``columns``) with the deduplication token ``dedup``."""
        try:
            store.insert_columns(self.client, table, data, columns, dedup)
        except Exception as exc:  # as in rows()
            raise store.StoreError(f"writing ClickHouse at {store.redact(self.url)}: {store.why(exc)}") from exc


class EndpointWriter(EndpointReader):
    """Reads and writes (``cxpulse backfill``) through the worker that holds the embedded store: its ``/v1/backfill``
    beside ``/v1/query`` (sinks/clickhouse_sink.py; version-0 rows only, one insert per request)."""

    def insert(self, table: str, data: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str) -> None:
        """As :meth:`ClientWriter.insert`; the request carries rows (the endpoint's JSON)."""
        if data and data[0]:
            rows = [list(row) for row in zip(*data, strict=True)]
            self._post(self.url.rsplit("/", 1)[0] + "/backfill", {"table": table, "rows": rows, "token": dedup})


def describe_store(settings: Settings) -> str:
    """Which store a command reads, for its first line on stderr (a report from the wrong folder said "no results
    yet" of a store it had just created)."""
    path = store.chdb_path(settings.clickhouse_url)
    if path is None:
        return f"store: {settings.clickhouse_url.split('@')[-1]} (ClickHouse server)"
    running = store.endpoint_of(settings.data_dir)
    through = f", through the worker's endpoint {running.url}" if running is not None else ""
    return f"store: {Path(path).resolve()} (embedded{through})"


def open_reader(settings: Settings) -> Reader:
    """A reader of the configured store; while a worker holds the embedded store, through its endpoint.  An
    embedded store that does not exist is refused, not created."""
    path = store.chdb_path(settings.clickhouse_url)
    if path is not None:
        running = store.endpoint_of(settings.data_dir)
        if running is not None:  # a live sink holds the embedded store: ask it (opening would fail, noisily)
            return EndpointReader(running)
        if not (Path(path) / "metadata" / store.DATABASE).exists():
            raise store.StoreError(
                f"no cxpulse store at {Path(path).resolve()}: run this where the worker's data folder is, or set "
                "CXPULSE_DATA_DIR (or CXPULSE_CLICKHOUSE_URL) to it"
            )
    try:
        client = store.connect(settings, settings.clickhouse_timeout_seconds)
    except store.StoreBusyError as exc:
        url = store.endpoint_of(settings.data_dir)
        if url is None:
            raise store.StoreError(
                f"{exc}, and that process serves no query endpoint: stop it, or run this where its "
                f"{settings.data_dir}/clickhouse-endpoint.json is"
            ) from exc
        return EndpointReader(url)
    _migrate(client, settings)  # a fresh store has the tables (empty) rather than "unknown table"
    return ClientReader(client, settings.clickhouse_url)


def open_writer(settings: Settings) -> tuple[ClientWriter | EndpointWriter, str]:
    """A writer of the configured store (``cxpulse backfill``) and where it writes, for the command's first line:
    while a worker holds the embedded store, through its endpoint; else a client (an embedded store is created)."""
    if not settings.clickhouse_url:
        raise store.StoreError("CXPULSE_CLICKHOUSE_URL is empty: no store to write the history to")
    holder = store.endpoint_of(settings.data_dir) if store.chdb_path(settings.clickhouse_url) is not None else None
    if holder is not None:  # one process can open the embedded store: the worker's sink writes for us
        return EndpointWriter(holder, settings.clickhouse_timeout_seconds), f"the running worker's store ({holder.url})"
    try:
        client = store.connect(settings)
    except store.StoreBusyError as exc:
        raise store.StoreError(f"{exc}, and that process serves no store endpoint: stop it for the backfill") from exc
    _migrate(client, settings)
    return ClientWriter(client, settings.clickhouse_url), store.redact(settings.clickhouse_url)


def _migrate(client: Any, settings: Settings) -> None:
    """The store's tables made or brought up to date; a failure is a StoreError naming the store and the cause."""
    try:
        store.migrate(client)
    except Exception as exc:  # clickhouse-connect's errors, and urllib3's beneath them
        raise store.StoreError(
            f"cannot open ClickHouse at {store.redact(settings.clickhouse_url)}: {store.why(exc)}"
        ) from exc
