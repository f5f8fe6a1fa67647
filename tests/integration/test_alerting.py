"""deploy/prometheus and deploy/alertmanager for real: promtool's rule tests, amtool's config check, and an effort
incident from `cxpulse simulate` paging a webhook through a running worker, Prometheus and Alertmanager (Debian's
packages), then resolving."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_sinks import fast_effort_pipeline
from tests.support import RunningBroker, Webhook, cxpulse_command, free_ports, stop_process
from tests.workers import scrape, start_worker, stop_worker, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
QUIET_PANELS = {"Pipeline alerts"}  # empty while the pipeline is healthy (its query is still run and must parse)


def dashboard_queries(window: str) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, template variable and annotation of the Grafana dashboards, with
    Grafana's variables filled in as a user's first view would have them (All, the given window)."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == "prometheus":  # the SQL ones: tests/integration/test_store.py
                    out.append((f"{path.name}: {panel['title']} {target['refId']}", target["expr"]))
        for variable in board["templating"]["list"]:
            metric, label = variable["query"]["query"].removeprefix("label_values(").removesuffix(")").split(", ")
            out.append((f"{path.name}: variable {variable['name']}", f"count by ({label}) ({metric})"))
        for annotation in board["annotations"]["list"]:
            out.append((f"{path.name}: annotation {annotation['name']}", annotation["expr"]))
    fills = {"$channel": ".*", "$journey": ".*", "$window": window, "$__rate_interval": "30s"}
    for name, value in fills.items():
        out = [(where, expr.replace(name, value)) for where, expr in out]
    return out


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian packages prometheus, prometheus-alertmanager; .ci/run installs them)"
    return path


def test_promtool_accepts_the_config_and_every_rule_test_passes() -> None:
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yml"))
    assert len(tests) >= 2
    result = subprocess.run(
        [tool("promtool"), "test", "rules", *map(str, tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)
    # every alert rule has a test
    alerts = yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    tested = {
        case["alertname"]
        for path in tests
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert names == tested, names ^ tested


def test_amtool_accepts_the_alertmanager_config_and_routes_effort_to_the_cx_team() -> None:
    checked = subprocess.run(
        [tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def route(*labels: str) -> str:
        result = subprocess.run(
            [tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    assert route("alertname=CxEffortSpike", "channel=chat") == "cx-team"
    assert route("alertname=CxSinkFailing", "sink=prometheus") == "ops-oncall"


def start_server(argv: list[str], log: Path, ready_url: str, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{argv[0]} exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return proc
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{argv[0]} not ready in {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _words(prometheus: str) -> list[str]:
    """The words of chat/billing's spike on the worker's gauge, as Prometheus has them now."""
    return [r["metric"]["term"] for r in query(prometheus, 'cxpulse_effort_term{channel="chat",journey="billing"}')]


def _description(prometheus: str) -> str:
    """The description of the firing CxEffortSpike of chat/billing as Prometheus renders it now (empty: none)."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/alerts", timeout=10) as response:  # noqa: S310 - loopback
        alerts = json.loads(response.read())["data"]["alerts"]
    found = [a for a in alerts if a["labels"].get("alertname") == "CxEffortSpike" and a["labels"]["channel"] == "chat"]
    return str(found[0]["annotations"]["description"]) if found else ""


@pytest.fixture()
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_an_effort_incident_pages_the_cx_team_through_prometheus_and_alertmanager(
    kafka_broker: RunningBroker, tmp_path: Path, webhook: Webhook
) -> None:
    """Test time scale: 1 s panes, a 20 s baseline, 1 s scrapes and rule evaluations, `for:` 2 s, Alertmanager
    waits 1 s; everything else is the files in deploy/ as they are (the routes, the expressions, the labels)."""
    # journeys close within the test (the dashboards' journey panels show data); only here: closing every second
    # is work beside the effort tests' timing (tests/integration/test_sinks.py failed once with it, CI 2026-12-02)
    pipeline = fast_effort_pipeline(
        kafka_broker.bootstrap, tmp_path, journey_gap_seconds=2, clickhouse_url=f"chdb://{tmp_path / 'store'}"
    )
    worker_port, prom_port, am_port, am_cluster = free_ports(4)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "recording.yml").write_text((PROMETHEUS_DIR / "rules" / "recording.yml").read_text())
    (rules / "alerts.yml").write_text(
        (PROMETHEUS_DIR / "rules" / "alerts.yml")
        .read_text()
        .replace("for: 2m", "for: 2s")
        .replace("for: 10m", "for: 5s")
    )
    prom_config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    prom_config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
    job = prom_config["scrape_configs"][0]  # the worker on this machine instead of DNS discovery of "worker"
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    am_config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in am_config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook.url + urllib.parse.urlparse(hook["url"]).path
    for route in (am_config["route"], *am_config["route"]["routes"]):
        route.update(group_wait="1s", group_interval="1s")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))

    log = tmp_path / "worker.log"
    processes: list[subprocess.Popen[Any]] = []
    try:
        # the worker first, ready before Prometheus watches it: its start-up (6-8 s on a loaded 2-core CI machine)
        # is longer than the test's 2 s `for:` of CxPipelineDown, which would page ops before the incident begins
        worker = start_worker(pipeline, log, metrics_port=worker_port)
        processes.append(worker)
        wait_for(lambda: scrape(worker_port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        alertmanager = start_server(
            [
                tool("prometheus-alertmanager"),
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                f"--cluster.listen-address=127.0.0.1:{am_cluster}",
            ],
            tmp_path / "alertmanager.log",
            f"http://127.0.0.1:{am_port}/-/ready",
        )
        processes.append(alertmanager)
        prometheus = start_server(
            [
                tool("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
            f"http://127.0.0.1:{prom_port}/-/ready",
        )
        processes.append(prometheus)
        simulator = subprocess.Popen(
            cxpulse_command(
                "simulate",
                "--rate=300",
                "--duration=150s",
                "--channels=chat,phone",
                "--journeys=billing",
                "--incident=effort:chat/billing@+35s~25s",
                "--seed=11",
            ),
            env=pipeline.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        processes.append(simulator)
        prom = f"http://127.0.0.1:{prom_port}"

        posts = []
        firing: dict[str, Any] | None = None
        resolved: dict[str, Any] | None = None
        deadline = time.monotonic() + 160
        while resolved is None and time.monotonic() < deadline:
            post = webhook.next(timeout=1.0)
            if post is None:
                continue
            posts.append(post)
            if post["path"] == "/cxpulse/effort" and post["status"] == "firing" and firing is None:
                firing = post
                # while it fires: the gauges and rollups are in Prometheus too
                assert query(prom, 'cxpulse_kpi_value{metric="CES",channel="chat",journey="billing",window="1m"}')
                assert query(prom, 'cxpulse:kpi_value:by_journey{metric="NPS",journey="billing"}')
                assert query(prom, 'cxpulse_effort_spike{channel="phone",journey="billing"} == 0')
                # every query of every Grafana panel runs, and shows data (the quiet ones excepted)
                empty = []
                for where, expr in dashboard_queries("1m"):
                    if not query(prom, expr) and where.split(": ")[1].rsplit(" ", 1)[0] not in QUIET_PANELS:
                        empty.append(f"{where}: {expr}")
                assert not empty, empty
                # the words of the spike, read from the store when it holds the spike, in the alert's description
                # (in the first page when the rule's `for` is longer than the store's lag: 2 minutes in deploy/)
                wait_for(lambda: _words(prom), "the spike's words in Prometheus", log, 30)
                words = _words(prom)
                assert "loop" in words, words  # the simulated bot's customers: "stuck in a loop"
                wait_for(lambda: "Words used more than usual:" in _description(prom), "the words in the alert", log, 10)
                assert all(f" {word};" in _description(prom) for word in words), _description(prom)
            elif post["path"] == "/cxpulse/effort" and post["status"] == "resolved":
                resolved = post
        assert firing is not None, f"no effort page; posts: {posts}\n{log.read_text()[-3000:]}"
        alert = firing["alerts"][0]
        assert alert["labels"] == {
            "alertname": "CxEffortSpike",
            "channel": "chat",
            "journey": "billing",
            "severity": "page",
            "team": "cx",
        }
        assert firing["groupLabels"] == {"alertname": "CxEffortSpike", "channel": "chat"}  # grouped by channel
        said = alert["annotations"]["description"]
        # the page says what goes with it: the bot touchpoint, and the theme of what its customers write
        assert "High-effort share" in said and "Root cause: bot (touchpoint, " in said, said
        assert "bot_self_service (theme, " in said and 'Customers wrote: "' in said, said
        assert resolved is not None, f"not resolved; posts: {posts}"
        assert resolved["alerts"][0]["labels"]["channel"] == "chat"
        assert not [p for p in posts if p["path"] == "/cxpulse/pipeline"], posts  # the pipeline stayed healthy
        assert not [a for p in posts for a in p["alerts"] if a["labels"].get("channel") == "phone"], posts
        stop_process(simulator)
        stop_worker(worker, log)
    finally:
        for proc in reversed(processes):
            stop_process(proc)
