"""ClickHouse through clickhouse-connect: the embedded store (``chdb://PATH``, the default) and a server
(``http(s)://[user@]host:8123``) behind one client, the schema's migrations, and the rows the sink writes.

- :func:`connect` opens the configured store; the embedded one can be opened by one process at a time (chdb's
  limit), so a second process gets :class:`StoreBusyError` and goes through the worker's query endpoint.
- :func:`migrate` applies ``sinks/migrations/NNN_*.sql`` once each, in order, recorded in
  ``cxpulse.schema_version``: idempotent, so every start runs it.
- :func:`pane_row`, :func:`answer_field_columns` and :func:`journey_values_row` turn a WindowResult record, a
  batch of counted answers (columns) and a JourneyInstance's values into rows of ``cxpulse.pane_results``,
  ``cxpulse.answers`` and ``cxpulse.journey_instances`` (:func:`answer_columns`, :func:`counted_answer_columns` and
  :func:`journey_row` from other forms); :func:`insert` (rows) and :func:`insert_columns` write them with a
  deterministic ``insert_deduplication_token``, so a retried insert of the same input is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from schemas.codec import JOURNEY_INSTANCE_FIELDS, SchemaCatalog, decode_batch
from streams.config import Settings
from streams.core.aggregate import State, contribution
from streams.core.comments import ANY
from streams.core.validate import Feedback, validate_batch
from streams.core.windows import state_of
from streams.errors import CxPulseError

if TYPE_CHECKING:  # clickhouse-connect is imported at the first connect: the merge process, whose effort detector
    # reads the store only for a spike's words, does not carry it (issue 35, item 5)
    from clickhouse_connect.driver.client import Client

DATABASE = "cxpulse"
CONNECT_TIMEOUT_SECONDS = 10.0  # a server that does not accept the connection within this long is reported
KEEP_DAYS = 400  # every table's TTL (sinks/migrations/*.sql): older rows are dropped by ClickHouse's merges
ENDPOINT_FILE = "clickhouse-endpoint.json"  # written by the sink process that holds the embedded store
MIGRATIONS = Path(__file__).with_name("migrations")  # package data: an installed cxpulse (the image) has them
PANE_COLUMNS = (
    "window_start",
    "window_end",
    "channel",
    "journey",
    "metric",
    "n",
    "promoters",
    "passives",
    "detractors",
    "positive",
    "high_effort",
    "sx",
    "sx2",
    "sum_x",
    "sum_x2",
    "value",
    "moe95",
    "mean_normalized",
    "version",
    "drivers",
)
ANSWER_COLUMNS = (
    "event_id",
    "occurred_at",
    "source",
    "channel",
    "journey",
    "touchpoint",
    "metric",
    "score",
    "scale_min",
    "scale_max",
    "customer_id",
    "interaction_id",
    "agent_id",
    "team",
    "reason_codes",
    "comment",
    "themes",
    "commented",
    "promoter",
    "passive",
    "detractor",
    "positive",
    "high_effort",
    "sx",
    "sx2",
)
JOURNEY_COLUMNS = (
    "customer_id",
    "journey",
    "start_at",
    "end_at",
    "first_channel",
    "answers",
    "contacts",
    "channels",
    "channel_switches",
    "touchpoints",
    "ces_n",
    "ces_high_effort",
    "first_x",
    "last_x",
    "last_nps",
    "one_stop",
    "recoverable",
    "recovered",
    "closed",
    "version",
    "deleted",
)


class StoreError(CxPulseError):
    """ClickHouse could not be reached or refused a statement."""


class StoreBusyError(StoreError):
    """The embedded store is open in another process (a running worker or sink)."""


def chdb_path(url: str) -> Path | None:
    """The folder of a ``chdb://PATH`` URL (relative paths from the current folder), None for other URLs."""
    if not url.startswith("chdb://"):
        return None
    return Path(url.removeprefix("chdb://")).expanduser().resolve()


def without_pandas() -> None:
    """Tell clickhouse-connect that pandas is not there, as where it is not installed: its first insert imports
    pandas only to ask whether the data is a DataFrame (cxpulse inserts lists of columns and reads rows, never
    frames), and that import cost the sink 48-67 MB of its RSS and 0.15-0.3 s of CPU (issue 35's memory at 200
    answers/s; pandas is installed beside chdb).  pandas is optional to clickhouse-connect: these are the values
    its lazy resolution sets when the import fails (clickhouse_connect.driver.options)."""
    from clickhouse_connect.driver import options as _client_options

    if "pd" not in vars(_client_options):
        _client_options.pd = None
        _client_options.pd_time_test = None


def connect(settings: Settings, timeout: float | None = None) -> Client:
    """A client of the configured store (the embedded one is created on first use).  ``timeout``: a server that
    does not answer a statement within this many seconds is an error (connecting: at most 10 s); default
    clickhouse-connect's (5 minutes, for the sink's large inserts)."""
    url = settings.clickhouse_url
    path = chdb_path(url)
    # clickhouse-connect logs "Unexpected Http Driver Exception" (with urllib3's traceback) before it raises; the
    # error raised says it, once, as StoreError below
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)
    import clickhouse_connect

    without_pandas()
    try:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(dsn=f"chdb://{path}")
        options: dict[str, Any] = {}
        if timeout is not None:
            options = {"connect_timeout": min(CONNECT_TIMEOUT_SECONDS, timeout), "send_receive_timeout": timeout}
        password = settings.clickhouse_password.get_secret_value()
        if password:
            options["password"] = password
        return clickhouse_connect.get_client(dsn=url, **options)
    except ImportError as exc:
        raise StoreError(
            f"the embedded ClickHouse ({url}) needs chdb: pip install 'cxpulse[embedded]', or set "
            "CXPULSE_CLICKHOUSE_URL to a server (http://...), or to nothing for no store"
        ) from exc
    except Exception as exc:
        if path is not None and "EmbeddedServer" in str(exc):
            raise StoreBusyError(
                f"the embedded ClickHouse at {path} is open in another process (a running `cxpulse worker` or "
                "`cxpulse sink`)"
            ) from exc
        raise StoreError(f"cannot open ClickHouse at {redact(url)}: {why(exc)}") from exc


def why(exc: BaseException) -> str:
    """The cause of a failed ClickHouse call in a few words: refused, timed out, unknown host, authentication, an
    HTTP status, or ClickHouse's own message (its first line), never a driver's traceback text."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(c) for c in chain)
    if any(isinstance(c, ConnectionRefusedError) for c in chain) or "Connection refused" in text:
        return "connection refused (nothing listens there)"
    if any(isinstance(c, socket.gaierror) for c in chain) or "Name or service not known" in text:
        return "unknown host name"
    if any(isinstance(c, TimeoutError) for c in chain) or "timed out" in text.lower():
        return "no answer in time (CXPULSE_CLICKHOUSE_TIMEOUT_SECONDS)"
    status = re.search(r"HTTP status (\d{3})", text)
    if status is not None and status.group(1) in ("401", "403", "516") or "Authentication failed" in text:
        return "authentication failed (the user in CXPULSE_CLICKHOUSE_URL, CXPULSE_CLICKHOUSE_PASSWORD)"
    if status is not None:
        return f"HTTP status {status.group(1)} (is a ClickHouse server listening there?)"
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return first[:300]


def redact(url: str) -> str:
    """A URL without the password it may carry."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"


def migrations(folder: Path = MIGRATIONS) -> list[tuple[int, str, list[str]]]:
    """(version, file name, statements) of the schema files, in order."""
    out = []
    for path in sorted(folder.glob("[0-9][0-9][0-9]_*.sql")):
        statements = [s.strip() for s in path.read_text().split("\n;\n") if _sql(s)]
        out.append((int(path.name[:3]), path.name, statements))
    return out


def _sql(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def migrate(client: Client, folder: Path = MIGRATIONS) -> list[str]:
    """Apply the schema files not applied yet; return their names."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_version (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {DATABASE}.schema_version").result_rows}
    applied = []
    for version, name, statements in migrations(folder):
        if version in done:
            continue
        for statement in statements:
            client.command(statement)
        client.insert(f"{DATABASE}.schema_version", [[version, name]], column_names=["version", "name"])
        applied.append(name)
    return applied


def pane_row(record: Mapping[str, Any]) -> list[Any]:
    """A row of ``cxpulse.pane_results`` from a WindowResult record (Avro form).  Times go as epoch ms, the ticks of
    ``DateTime64(3)``, as the answers' ``occurred_at`` does: a ``datetime`` made of each and turned back into ticks
    by the insert was ~5% of the sink's samples (py-spy, `make bench`, 2026-12-06)."""
    return [
        record["window_start"],
        record["window_end"],
        record["channel"],
        record["journey"],
        record["metric"],
        *state_of(record),  # n ... high_effort, sx, sx2: the exact counters
        record["sum_x"],
        record["sum_x2"],
        record["value"],
        record["moe95"],
        record["mean_normalized"],
        record["version"],
        [(d["name"], d["n"], d["high_effort"]) for d in record.get("drivers") or ()],
    ]


def journey_row(record: Mapping[str, Any]) -> list[Any]:
    """A row of ``cxpulse.journey_instances`` from a JourneyInstance record (Avro form: start and end in epoch ms,
    as schemas/codec.py reads timestamp-millis)."""
    return journey_values_row([record[name] for name in JOURNEY_INSTANCE_FIELDS])


def journey_values_row(values: list[Any]) -> list[Any]:
    """A row of ``cxpulse.journey_instances`` from a JourneyInstance's values in the schema's order
    (``JOURNEY_INSTANCE_FIELDS``, which JOURNEY_COLUMNS follows; schemas.codec.decode_confluent_values): ``values``
    made the row in place, an absent ``last_nps`` as "" (the flags stay booleans: a UInt8 column takes them as 0
    and 1).  The sink's, one revision a row: a dict per revision, read again into a row and then cut into
    one-value columns, was ~16% of its py-spy samples in the live shape (2026-12-07)."""
    if values[14] is None:  # last_nps
        values[14] = ""
    return values


def instance_columns(instances: Sequence[Any], version: int = 0) -> list[list[Any]]:
    """The columns of ``cxpulse.journey_instances`` (JOURNEY_COLUMNS order) of live instances
    (streams.core.journeys.Instance) with one ``version``: what :func:`journey_row` makes of each one's
    JourneyInstance record, start and end as epoch ms (the ticks of ``DateTime64(3)``).  ``cxpulse backfill``'s:
    one transposition instead of a record and a row per instance (half of its journey write, cProfile)."""
    if not instances:
        return [[] for _ in JOURNEY_COLUMNS]
    fields = map(list, zip(*instances, strict=True))
    (customer, journey, start, end, first_channel, answers, contacts, channels, switches, touchpoints, ces_n,
     ces_high, first_x, last_x, first_low, last_nps, one_stop, recovered, closed) = fields  # fmt: skip
    return [
        customer,
        journey,
        start,
        end,
        first_channel,
        answers,
        contacts,
        channels,
        switches,
        touchpoints,
        ces_n,
        ces_high,
        first_x,
        last_x,
        [nps or "" for nps in last_nps],
        [int(bool(v)) for v in one_stop],
        [int(n >= 2 and bool(low)) for n, low in zip(answers, first_low, strict=True)],  # Instance.recoverable
        [int(bool(v)) for v in recovered],
        [int(bool(v)) for v in closed],
        [version] * len(customer),
        [0] * len(customer),
    ]


def answer_columns(
    values: Sequence[bytes], catalog: SchemaCatalog, themes: Sequence[Sequence[str]] | None = None
) -> list[list[Any]]:
    """The columns of ``cxpulse.answers`` (in ANSWER_COLUMNS order) from the raw feedback messages the hot path
    counted (valid, first copies): decoded and validated again by the hot path's own steps (schemas.codec
    ``decode_batch``, ``validate_batch``) for their normalised form (scales, labels), which they pass.  Column by
    column, as the insert sends them (no row objects, no datetimes: ``occurred_at`` goes as epoch ms, the ticks of
    ``DateTime64(3)``).  ``themes``: each answer's themes as the hot path read them, "(any)" included (none when
    not given): stored as ``themes`` without "(any)", and ``commented``."""
    decoded = decode_batch(values, catalog)
    if decoded.failed:  # cannot happen for what the hot path counted; say so rather than lose a row silently
        raise StoreError(f"{len(decoded.failed)} counted answers do not decode again: {decoded.failed[0][1]}")
    records = decoded.records
    valid, rejected = validate_batch(records)
    if rejected:
        raise StoreError(f"{len(rejected)} counted answers do not validate again: {rejected[0].reason}")
    return counted_answer_columns(valid, records, themes if themes is not None else [() for _ in valid])


def counted_answer_columns(
    valid: Sequence[Feedback], records: Sequence[Mapping[str, Any]], themes: Sequence[Sequence[str]]
) -> list[list[Any]]:
    """The columns of ``cxpulse.answers`` (ANSWER_COLUMNS order) of counted answers: each validated answer, the
    record it was validated from (its comment as kept) and its themes, "(any)" included (``cxpulse backfill``'s,
    from replay; :func:`answer_field_columns` does the work)."""
    fields = list(zip(*valid, strict=True)) if valid else [() for _ in Feedback._fields]
    return answer_field_columns(
        fields,
        [r.get("interaction_id") for r in records],
        [r.get("agent_id") for r in records],
        [r.get("team") for r in records],
        [r.get("comment") for r in records],
        themes,
    )


def answer_field_columns(
    fields: Sequence[Sequence[Any]],
    interaction: Sequence[str | None],
    agent: Sequence[str | None],
    team: Sequence[str | None],
    comment: Sequence[str | None],
    themes: Sequence[Sequence[str]],
) -> list[list[Any]]:
    """The columns of ``cxpulse.answers`` (ANSWER_COLUMNS order) of counted answers given column by column:
    ``fields``, the columns of their validated forms (Feedback's fields in its order; any after ``reason_codes``
    are not read), then each one's interaction id, agent, team and comment as kept and its themes ("(any)"
    included: stored as ``themes`` without it, and ``commented``).  The one implementation behind the sink's
    (an answers message's rows, streams.processes.sink.answer_block) and ``cxpulse backfill``'s
    (:func:`counted_answer_columns`); column by column, as the insert sends them, so the sink never makes an
    object per answer (a Feedback and a dict each were half of its answers' CPU, py-spy 2026-12-07)."""
    (event_id, occurred_at, source, channel, journey, metric, score, scale_min, scale_max, touchpoint, customer_id,
     reason_codes) = fields[:12]  # fmt: skip
    states = list(map(contribution, metric, score, scale_min, scale_max))
    counters = [list(column) for column in zip(*states, strict=True)] if states else [[] for _ in State._fields]
    return [
        list(event_id),
        list(occurred_at),
        list(source),
        list(channel),
        list(journey),
        [t or "" for t in touchpoint],
        list(metric),
        list(score),
        list(scale_min),
        list(scale_max),
        [c or "" for c in customer_id],
        [i or "" for i in interaction],
        [a or "" for a in agent],
        [t or "" for t in team],
        [list(codes) for codes in reason_codes],
        [c or "" for c in comment],
        [[theme for theme in found if theme != ANY] for found in themes],
        [int(ANY in found) for found in themes],
        *counters[1:],  # promoters, passives, detractors, positive, high_effort, sx, sx2 (State's fields after n)
    ]


def answer_rows(values: Sequence[bytes], catalog: SchemaCatalog) -> list[list[Any]]:
    """:func:`answer_columns` as rows (for :func:`insert`)."""
    return [list(row) for row in zip(*answer_columns(values, catalog), strict=True)]


def as_columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows of ``width`` values as ``width`` columns."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def token(*parts: object) -> str:
    """A deterministic insert_deduplication_token for the input a batch was built from."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def insert(client: Client, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str) -> None:
    """Insert rows; the same ``dedup`` token again within the table's deduplication window is a no-op."""
    insert_columns(client, table, as_columns(rows, len(columns)), columns, dedup)


def insert_columns(
    client: Client, table: str, data: Sequence[Sequence[Any]], columns: Sequence[str], dedup: str
) -> None:
    """Insert column-oriented data (one sequence per name of ``columns``), deduplicated as :func:`insert`."""
    if data and data[0]:
        client.insert(
            f"{DATABASE}.{table}",
            data,
            column_names=list(columns),
            column_oriented=True,
            settings={"insert_deduplication_token": dedup},
        )


class Endpoint(NamedTuple):
    """The read-only query endpoint of the process that holds the embedded store, and its bearer token."""

    url: str
    token: str


def endpoint_of(data_dir: Path) -> Endpoint | None:
    """The query endpoint of the process holding the embedded store, if one is running (its file, mode 0600, holds
    a token that only the store's owner can read)."""
    try:
        found = json.loads((data_dir / ENDPOINT_FILE).read_text())
        os.kill(int(found["pid"]), 0)
        return Endpoint(str(found["url"]), str(found.get("token", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_endpoint(data_dir: Path, url: str, token: str) -> None:
    """Publish the endpoint (URL, token, pid) in ``<data dir>/clickhouse-endpoint.json``, readable by its owner
    only (created 0600: the token never exists in a file others can read)."""
    path = data_dir / ENDPOINT_FILE
    # Written beside and renamed into place: a reader (`cxpulse report` at the worker's start, a test polling the
    # file) sees the old file or the whole new one, never an empty one (CI of c19d6b2 read "" between the create
    # and the write, and a report could have taken the store for unheld).
    data_dir.mkdir(parents=True, exist_ok=True)  # `cxpulse sink` on a host of its own may not have made it yet
    partial = data_dir / f".{ENDPOINT_FILE}.{os.getpid()}"
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, out)
    os.replace(partial, path)


# What the endpoint answers: SELECTs that ClickHouse runs with readonly=1 (it refuses writes, DDL, SET and the
# file/url/remote table functions itself), reading tables of the cxpulse database only (ClickHouse's own parser,
# EXPLAIN AST, names every table a query reads: system.*, INFORMATION_SCHEMA.* and table functions are refused).
READ_ONLY_SETTINGS = {"readonly": 1}


def refused_tables(ast_lines: Sequence[str]) -> list[str]:
    """Tables or table functions of an ``EXPLAIN AST`` that the query endpoint does not read (outside the cxpulse
    database)."""
    refused = []
    previous = ""
    for line in ast_lines:
        node = line.strip()
        if node.startswith("TableIdentifier "):
            name = node.split()[1]
            if not name.startswith(f"{DATABASE}."):
                refused.append(name)
        elif node.startswith("Identifier ") and "." in node.split()[1]:
            name = node.split()[1]
            database = name.split(".")[0]
            if database.lower() in ("system", "information_schema"):
                refused.append(name)
        elif node.startswith("Function ") and previous.startswith("TableExpression"):
            refused.append(f"{node.split()[1]}()")
        previous = node
    return refused
