"""``cxpulse demo``'s live part: a time-lapse configuration for the worker, the simulator with an effort incident,
and a terminal dashboard read from the worker's /metrics and the alerts topic.

The demo compresses time so that a user sees the whole loop within 90 s: 5-second panes, rolling windows of 1 and
5 minutes, and an effort detector with a 60-second baseline that ends 5 s before the pane (production: 60-second
panes, a 24-hour baseline).  The simulator sends 200 answers a second over every channel and three journeys; 30 s
in, chat's bot turns bad in billing (``effort:chat/billing@+30s``), and the alert fires some 20-30 s later, naming
the bot.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table
from rich.text import Text

from schemas.codec import EFFORT_ALERT, LocalCatalog, decode_confluent
from streams.broker import die_with_parent
from streams.config import Settings
from streams.kafka import consumer

DEMO_ENV = {  # the worker's time-lapse settings (a user's own worker keeps the production defaults)
    "CXPULSE_PANE_SECONDS": "5",
    "CXPULSE_WINDOWS_SECONDS": "[60, 300]",
    "CXPULSE_EFFORT_BASELINE_SECONDS": "60",
    "CXPULSE_EFFORT_GUARD_SECONDS": "5",
    "CXPULSE_EFFORT_MIN_BASELINE": "80",
}
SIMULATION = [
    "--rate", "200", "--journeys", "billing,support,delivery", "--incident", "effort:chat/billing@+30s", "--seed", "7",
]  # fmt: skip
METRICS = ("NPS", "CES", "CSAT", "NLS", "CAS")
WINDOW = "1m"


def start_simulator(bootstrap: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`cxpulse simulate` against the demo's broker, its output in <data dir>/simulate.log."""
    log_path = data_dir / "simulate.log"
    env = {**os.environ, "CXPULSE_KAFKA_BOOTSTRAP": bootstrap, "CXPULSE_DATA_DIR": str(data_dir)}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "streams.cli", "simulate", *SIMULATION],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
        )
    return proc, log_path


class Dashboard:
    """What the dashboard shows, read from the worker: its /metrics and the alerts topic."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        self.started = time.monotonic()
        self.kpis: dict[tuple[str, str], dict[str, tuple[float, float | None, float]]] = defaultdict(dict)
        self.records = 0.0
        self.rate = 0.0
        self.lag = 0.0
        self.dead_letters = 0.0
        self._last: tuple[float, float] | None = None
        self.alerts: list[dict[str, Any]] = []
        self._alerts = consumer(bootstrap, f"cxpulse-demo-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
        self._alerts.assign([TopicPartition(settings.alerts_topic, 0, OFFSET_BEGINNING)])
        self.feedback_topic = settings.feedback_topic

    def poll(self) -> list[dict[str, Any]]:
        """Read the worker's state; return the alerts that arrived since the last poll."""
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:  # noqa: S310 - loopback, our worker
                text = response.read().decode()
        except OSError:
            text = ""
        values: dict[tuple[str, str, str], list[float | None]] = defaultdict(lambda: [None, None, None])
        lag = dead = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name.startswith("cxpulse_kpi_") and labels.get("window") == WINDOW:
                    slot = {"cxpulse_kpi_value": 0, "cxpulse_kpi_moe95": 1, "cxpulse_kpi_responses": 2}.get(sample.name)
                    if slot is not None:
                        values[(labels["channel"], labels["journey"], labels["metric"])][slot] = sample.value
                elif sample.name == "cxpulse_worker_records_total" and labels.get("topic") == self.feedback_topic:
                    self.records = sample.value
                elif sample.name == "cxpulse_consumer_lag_messages":
                    lag += sample.value
                elif sample.name == "cxpulse_worker_dead_letters_total":
                    dead += sample.value
        self.lag, self.dead_letters = lag, dead
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            self.rate = (self.records - self._last[1]) / (now - self._last[0])
        self._last = (now, self.records)
        self.kpis = defaultdict(dict)
        for (channel, journey, metric), (value, moe, n) in values.items():
            if value is not None and n is not None:
                self.kpis[(channel, journey)][metric] = (value, moe, n)
        new = []
        for message in self._alerts.consume(100, 0.05):
            payload = message.value()
            if message.error() is None and payload:
                new.append(decode_confluent(payload, LocalCatalog(), EFFORT_ALERT)[1])
        self.alerts.extend(new)
        return new

    def render(self, width: int = 120) -> Group:
        """The dashboard for a terminal ``width`` columns wide (alert lines wrapped to it, never cut)."""
        elapsed = time.monotonic() - self.started
        head = Text(
            f"cxpulse demo  {elapsed:5.0f} s   events {self.records:,.0f} ({self.rate:,.0f}/s)   lag {self.lag:,.0f}"
            f"   dead letters {self.dead_letters:,.0f}   window {WINDOW}, 5-second panes (time-lapse)"
        )
        table = Table(title="KPIs per channel x journey (value ±95%, n)", title_justify="left")
        table.add_column("channel")
        table.add_column("journey")
        for metric in METRICS:
            table.add_column(metric, justify="right")
        for (channel, journey), kpis in sorted(self.kpis.items()):
            cells = []
            for metric in METRICS:
                found = kpis.get(metric)
                if found is None:
                    cells.append("-")
                    continue
                value, moe, n = found
                digits = 2 if metric == "CES" else 0
                cells.append(f"{value:.{digits}f} ±{moe or 0:.{digits}f} ({n:.0f})")
            firing = any(a["channel"] == channel and a["journey"] == journey for a in self.firing())
            style = "bold red" if firing else None
            table.add_row(channel, journey, *cells, style=style)
        parts: list[Any] = [head, table]
        for alert in self.alerts[-5:]:
            wrapped = textwrap.fill(alert_line(alert), width=max(40, width), subsequent_indent="    ")
            parts.append(Text(wrapped, style="bold red" if alert["state"] == "FIRING" else "green"))
        if not self.alerts:
            parts.append(Text("no effort alert yet (the incident starts 30 s after the simulator)", style="dim"))
        return Group(*parts)

    def firing(self) -> list[dict[str, Any]]:
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for alert in self.alerts:
            state[(alert["channel"], alert["journey"])] = alert
        return [a for a in state.values() if a["state"] == "FIRING"]

    def close(self) -> None:
        self._alerts.close()


def alert_line(alert: dict[str, Any]) -> str:
    """One line for an EffortAlert: state, segment, shares, root cause."""
    causes = ", ".join(
        f"{c['kind'].lower()} {c['name']} ({c['high_effort']}/{c['n']} high effort)" for c in alert["root_cause"]
    )
    p_short = alert.get("p_short")
    short = f"{100 * p_short:.0f}%" if p_short is not None else "-"
    return (
        f"effort spike {alert['state']} {alert['channel']}/{alert['journey']}: high-effort share {short} against "
        f"{100 * alert['p0']:.0f}% baseline, CUSUM {alert['cusum']:.1f}; root cause: {causes or '-'}"
    )


def own_command() -> str:
    """How this shell can run cxpulse again: ``cxpulse`` when it is on PATH, else the path it was started by
    (``.venv/bin/cxpulse`` after ``make demo``)."""
    started = Path(sys.argv[0])
    found = shutil.which("cxpulse")
    if found is not None and Path(found).resolve() == started.resolve():
        return "cxpulse"
    if started.name == "cxpulse" and started.exists():
        return shlex.quote(os.path.relpath(started))
    return f"{shlex.quote(sys.executable)} -m streams.cli"


def summary(settings: Settings, alerts: list[dict[str, Any]], port: int, controller_port: int) -> str:
    """What the user can do next, printed when the demo stops: commands that run as printed (the demo's store,
    its 5-second panes, its broker's ports)."""
    command = own_command()
    data = shlex.quote(str(settings.data_dir))
    env = f"CXPULSE_DATA_DIR={data} CXPULSE_PANE_SECONDS={DEMO_ENV['CXPULSE_PANE_SECONDS']}"
    fired = sum(a["state"] == "FIRING" for a in alerts)
    return "\n".join(
        [
            f"data: {settings.data_dir} (Kafka, worker state, ClickHouse in {settings.data_dir / 'clickhouse'})",
            f"effort alerts: {fired} fired",
            "read it back (the demo ran 5-second panes):",
            f"  {env} {command} report --window 5m --by channel,journey",
            f"  {env} {command} drivers --metric CES --channel chat --journey billing --window 10m --vs rest",
            "its alerts again, with its broker (Ctrl-C stops it):",
            f"  {command} broker --data-dir {data} --port {port} --controller-port {controller_port}",
            f"  CXPULSE_KAFKA_BOOTSTRAP=127.0.0.1:{port} {command} read alerts",
        ]
    )
