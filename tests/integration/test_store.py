"""The ClickHouse sink in a running worker, on the real broker and the embedded store: pane rows equal replay,
every counted answer once, nothing doubles on re-delivery, nothing is lost while ClickHouse is away; `cxpulse
report` answers through the worker while it holds the store."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from sinks.clickhouse import Endpoint, StoreError, endpoint_of
from sinks.store_access import EndpointReader
from streams.core.synth import CHANNELS as SYNTH_CHANNELS
from streams.replay import replay_file
from streams.simulate import CHANNELS as SIM_CHANNELS
from streams.simulate import JOURNEYS, Simulator
from tests.support import RunningBroker, cxpulse_command, free_ports, theme_records
from tests.workers import (
    Pipeline,
    children,
    expected_results,
    make_pipeline,
    mixed_events,
    produce,
    running_worker,
    scrape,
    split,
    start_worker,
    stop_worker,
    wait_for,
)

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def dashboard_sql() -> list[tuple[str, str]]:
    """(where, SQL) of every ClickHouse panel target, with Grafana's macros and variables filled in as a first
    view has them (the last 30 days, every channel and journey)."""
    channels = ", ".join(f"'{c}'" for c in sorted({*SIM_CHANNELS, *SYNTH_CHANNELS}))
    journeys = ", ".join(f"'{j}'" for j in JOURNEYS)
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] != "grafana-clickhouse-datasource":
                    continue
                sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now64(3) - INTERVAL 30 DAY", target["rawSql"])
                sql = sql.replace("${channel:singlequote}", channels).replace("${journey:singlequote}", journeys)
                assert "$" not in sql, sql
                out.append((f"{path.name}: {panel['title']}", sql))
    assert out, "no ClickHouse panels"
    return out


def store_pipeline(bootstrap: str, tmp_path: Path, url: str | None = None) -> Pipeline:
    return make_pipeline(bootstrap, tmp_path, clickhouse_url=url or f"chdb://{tmp_path / 'store'}")


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cxpulse_command(*args), env=pipeline.env, capture_output=True, text=True, check=False)


def endpoint(pipeline: Pipeline, token: str | None = None) -> EndpointReader:
    found = json.loads((pipeline.settings.data_dir / "clickhouse-endpoint.json").read_text())
    return EndpointReader(Endpoint(found["url"], found["token"] if token is None else token))


# what the store's query endpoint must refuse, and the word of the refusal (ClickHouse's readonly=1, or the
# endpoint's own check of the tables ClickHouse's parser names)
HOSTILE_SQL = [
    ("INSERT INTO cxpulse.answers SELECT * FROM cxpulse.answers", "single SELECT"),
    ("SELECT 1; DROP TABLE cxpulse.answers", "single SELECT"),
    ("WITH x AS (SELECT 1) SELECT * FROM cxpulse.answers SETTINGS readonly = 0", "READONLY"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
    ("SELECT * FROM url('http://127.0.0.1:1/', 'CSV', 'a String')", "url()"),
    ("SELECT name FROM system.tables", "system.tables"),
    ("SELECT count() FROM cxpulse.answers WHERE event_id IN (SELECT name FROM system.users)", "system.users"),
    ("SELECT * FROM INFORMATION_SCHEMA.tables", "INFORMATION_SCHEMA.tables"),
]


def assert_endpoint_is_read_only(pipeline: Pipeline) -> None:
    """The token file is the owner's only; no token, no answer; every hostile query refused, nothing changed."""
    path = pipeline.settings.data_dir / "clickhouse-endpoint.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = answers_count(pipeline)
    with pytest.raises(StoreError, match="bearer token is required"):
        endpoint(pipeline, token="guess").rows("SELECT 1", {})
    for sql, refusal in HOSTILE_SQL:
        with pytest.raises(StoreError, match=re.escape(refusal)):
            endpoint(pipeline).rows(sql, {})
    assert answers_count(pipeline) == before


def pane_records(pipeline: Pipeline) -> dict[tuple[Any, ...], dict[str, Any]]:
    """`cxpulse report --window pane --format jsonl`: the latest version of every pane group, as a user gets it."""
    result = cli(pipeline, "report", "--window", "pane", "--format", "jsonl")
    if "no cxpulse store at" in result.stderr:
        return {}  # the worker's sink has not created its store yet
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        out[(record["window_start"], record["channel"], record["journey"], record["metric"])] = record
    return out


def same_as_replay(got: dict[tuple[Any, ...], dict[str, Any]], expected: dict[tuple[Any, ...], dict[str, Any]]) -> bool:
    if set(got) != set(expected):
        return False
    fields = ("n", "promoters", "passives", "detractors", "positive", "high_effort")
    return all(all(got[k][f] == expected[k][f] for f in fields) for k in expected)


COUNT = "SELECT count(), uniqExact(event_id) FROM cxpulse.answers"
COUNT_FINAL = "SELECT count(), uniqExact(event_id) FROM cxpulse.answers FINAL"


def answers_count(pipeline: Pipeline, final: bool = False) -> tuple[int, int]:
    sql = COUNT_FINAL if final else COUNT
    rows = endpoint(pipeline).rows(sql, {})
    return int(rows[0][0]), int(rows[0][1])


def test_pane_rows_equal_replay_answers_once_and_redelivery_doubles_nothing(
    kafka_broker: RunningBroker, tmp_path: Path
) -> None:
    pipeline = store_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    simulated = Simulator(seed=4, rate=20, start_ms=int(time.time() * 1000) - 1800_000)  # comments, agents, teams
    with source.open("a") as out:
        out.writelines(json.dumps(e) + "\n" for batch in simulated.run(60_000) for e in batch)
    expected, _ = expected_results(source, settings.pane_seconds)
    counted = replay_file(source, settings.pane_seconds * 1000, lambda dead: None).stats.counted
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        # idle, before any answer: the sink opened the embedded store at its start and says it answers
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_clickhouse_up") == 1, "the store up, idle", log)
        assert answers_count(pipeline) == (0, 0)
        produce(settings, source)
        wait_for(lambda: same_as_replay(pane_records(pipeline), expected), "ClickHouse panes equal to replay", log)
        wait_for(lambda: answers_count(pipeline) == (counted, counted), "every counted answer in ClickHouse", log)
        # idle, the sink has nothing left: the commit marker ending the hot path's last transaction is no lag
        wait_for(
            lambda: {v for k, v in scrape(port).items() if k.startswith("cxpulse_sink_lag_messages{") and
                     'sink="clickhouse"' in k} == {0.0},
            "the ClickHouse sink's lag at 0 on every partition",
            log,
            timeout=30,
        )  # fmt: skip
        # the simulated comments' theme results, from the stored answers, equal replay's (contract section 9)
        themes = theme_records(cli(pipeline, "report", "--window", "pane", "--by", "channel,journey,theme",
                                   "--format", "jsonl"))  # fmt: skip
        replayed = tmp_path / "themes.jsonl"
        done = cli(pipeline, "replay", str(source), "-q", "-o", str(tmp_path / "r.jsonl"), "--themes", str(replayed))
        assert done.returncode == 0, done.stderr
        assert themes == theme_records(replayed.read_text()) and len({key[-1] for key in themes}) > 5
        sample = scrape(port)
        assert sample['cxpulse_sink_rows_total{table="answers"}'] == counted
        assert sample["cxpulse_clickhouse_up"] == 1
        # report reads through the worker's endpoint while it holds the store; table and csv too
        table = cli(pipeline, "report", "--window", "24h", "--by", "channel")
        assert table.returncode == 0 and "cxpulse report: 24h by channel" in table.stdout, table.stderr
        # every SQL query of the Grafana dashboards runs on this store and shows data
        empty = [where for where, sql in dashboard_sql() if not endpoint(pipeline).rows(sql, {})]
        assert not empty, empty
        assert_endpoint_is_read_only(pipeline)
        stop_worker(worker, log)
        # re-delivery: the sink's group forgets its offsets and reads everything again
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        for future in admin.delete_consumer_groups([f"{settings.app_id}-sink"], request_timeout=10).values():
            future.result()
        worker = start_worker(pipeline, log, metrics_port=port)
        wait_for(
            lambda: scrape(port, starting=True).get('cxpulse_sink_rows_total{table="answers"}', 0) >= counted,
            "the sink to read everything again",
            log,
        )
        assert same_as_replay(pane_records(pipeline), expected)
        assert answers_count(pipeline, final=True) == (counted, counted)
        stop_worker(worker, log)


def test_clickhouse_away_pauses_the_sink_and_loses_nothing(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    closed = free_ports(1)[0]  # nothing listens there: every insert is refused
    pipeline = store_pipeline(kafka_broker.bootstrap, tmp_path, url=f"http://127.0.0.1:{closed}")
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 2000)
    expected, _ = expected_results(source, settings.pane_seconds)
    counted = replay_file(source, settings.pane_seconds * 1000, lambda dead: None).stats.counted
    port = free_ports(1)[0]
    log = tmp_path / "worker.log"
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, source)

        def stuck() -> bool:
            sample = scrape(port, starting=True)
            lag = sum(v for k, v in sample.items() if k.startswith("cxpulse_sink_lag_messages{") and "clickhouse" in k)
            return sample.get('cxpulse_sink_errors_total{sink="clickhouse"}', 0) >= 3 and lag > 0

        wait_for(stuck, "the sink to fail, retry and hold its place", log)
        assert scrape(port)["cxpulse_clickhouse_up"] == 0
        # consuming is fine (ready, while the sink keeps failing); the sink alert says the rest
        wait_for(lambda: scrape(port)["cxpulse_worker_ready"] == 1, "the worker ready while ClickHouse is away", log)
        assert scrape(port)['cxpulse_sink_errors_total{sink="clickhouse"}'] >= 3
        stop_worker(worker, log)
        # ClickHouse is back (here: the embedded store), and the sink goes on from where it stood
        back = {**pipeline.env, "CXPULSE_CLICKHOUSE_URL": f"chdb://{tmp_path / 'store'}"}
        worker = start_worker(Pipeline(pipeline.settings, back), log, metrics_port=port)
        url = back["CXPULSE_CLICKHOUSE_URL"]
        restored = Pipeline(pipeline.settings.model_copy(update={"clickhouse_url": url}), back)
        wait_for(lambda: same_as_replay(pane_records(restored), expected), "ClickHouse panes equal to replay", log)
        wait_for(lambda: answers_count(restored, final=True) == (counted, counted), "every counted answer", log)
        stop_worker(worker, log)


def test_a_kill_9_of_the_sink_mid_stream_changes_no_row(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    """The sink killed with SIGKILL while answers stream in (a batch taken, perhaps inserted, not committed): the
    worker restarts it, it reads again from its last commit, and the store ends as replay says: every pane group's
    counts, every counted answer once, the journey instances replay has."""
    pipeline = store_pipeline(kafka_broker.bootstrap, tmp_path)
    settings = pipeline.settings
    source = tmp_path / "events.jsonl"
    mixed_events(source, 4000)
    expected, _ = expected_results(source, settings.pane_seconds)
    replayed = replay_file(
        source, settings.pane_seconds * 1000, lambda dead: None, journey_gap_ms=settings.journey_gap_seconds * 1000
    )
    counted = replayed.stats.counted
    instances = {(i.customer_id, i.journey, i.start) for i in replayed.journey_instances()}
    first, second = split(source, 2)
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    rows = 'cxpulse_sink_rows_total{table="answers"}'
    with running_worker(pipeline, log, metrics_port=port) as worker:
        produce(settings, first)
        wait_for(lambda: scrape(port, starting=True).get(rows, 0) > 0, "the sink writing answers", log)
        produce(settings, second)
        killed = children(worker.pid)["sink"]
        os.kill(killed, signal.SIGKILL)
        restarts = 'cxpulse_worker_process_restarts_total{process="sink"}'
        wait_for(lambda: scrape(port, starting=True).get(restarts, 0) == 1, "the sink restarted", log)

        def serving() -> bool:
            found = endpoint_of(settings.data_dir)  # the new sink's endpoint (the old one's pid is gone)
            return found is not None and children(worker.pid).get("sink") not in (None, killed)

        wait_for(serving, "the restarted sink's store endpoint", log)
        wait_for(lambda: same_as_replay(pane_records(pipeline), expected), "ClickHouse panes equal to replay", log)
        wait_for(lambda: answers_count(pipeline, final=True) == (counted, counted), "every counted answer once", log)
        seen: list[set[tuple[str, str, int]]] = [set()]

        def same_instances() -> bool:
            seen[0] = live_instances(pipeline)
            return seen[0] == instances

        try:
            wait_for(same_instances, "the journey instances replay has", log)
        except AssertionError:
            print(
                "only in the store",
                sorted(seen[0] - instances)[:20],
                "only in replay",
                sorted(instances - seen[0])[:20],
            )
            print(len(seen[0]), len(instances))
            raise
        stop_worker(worker, log)


def live_instances(pipeline: Pipeline) -> set[tuple[str, str, int]]:
    """The key (customer, journey, start) of each live journey instance in the store (newest, not deleted)."""
    sql = (
        "SELECT customer_id, journey, toUnixTimestamp64Milli(start_at) "
        "FROM cxpulse.journey_instances FINAL WHERE deleted = 0"
    )
    return {(str(r[0]), str(r[1]), int(r[2])) for r in endpoint(pipeline).rows(sql, {})}
