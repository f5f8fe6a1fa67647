"""``cxpulse demo``: the main job on the embedded default, in the foreground.

It starts a local Kafka (streams.broker), creates the topics, starts ``cxpulse worker`` with a time-lapse
configuration and waits until it is ready, starts the simulator with an effort incident, and shows the live
dashboard (streams.dashboard) until Ctrl-C or ``--duration``; then it stops everything it started and prints the
commands that read the run back.

The demo compresses time so that a user sees the whole loop within 90 s: 5-second panes, rolling windows of 1 and 5
minutes, and an effort detector with a 60-second baseline that ends 15 s before the pane (production: 60-second panes, a
24-hour baseline that ends 30 minutes before, longer than a detection takes). The guard keeps most of a spike out of its
own baseline: with 5 s, the pane that fired had 25-30 s of the incident in its baseline, and the alert named the
incident's theme in about 3 runs of 4; with 15 s, 10-15 s. The simulator sends 200 answers a second over every channel
and three journeys; 30 s in, chat's bot turns bad in billing (``effort:chat/billing@+30s``), and the alert fires some
30-40 s later, naming the bot, its theme and a customer's comment; once the store holds the spike, the words its
customers use more than usual follow (``loop``: the simulated bot is stuck in one,
streams.core.synth.COMMENTS_INCIDENT).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams import broker as local_broker
from streams.config import Settings
from streams.core.windows import iso_utc
from streams.dashboard import Dashboard, alert_line, words_line
from streams.errors import CxPulseError
from streams.render import count
from streams.topics import ensure_topics, topic_specs

WORKER_TIMEOUT_SECONDS = 120.0  # start-up of the demo's worker, recovery included
DEMO_ENV = {  # the worker's time-lapse settings (a user's own worker keeps the production defaults)
    "CXPULSE_PANE_SECONDS": "5",
    "CXPULSE_WINDOWS_SECONDS": "[60, 300]",
    "CXPULSE_EFFORT_BASELINE_SECONDS": "60",
    "CXPULSE_EFFORT_GUARD_SECONDS": "15",  # most of a spike out of its own baseline (see above)
    "CXPULSE_EFFORT_MIN_BASELINE": "80",
    "CXPULSE_EFFORT_SHORT_SECONDS": "30",  # six panes, as five minutes are five panes in production
    "CXPULSE_JOURNEY_GAP_SECONDS": "20",  # customers come back within 10 s (the simulator's --comeback)
}
SIMULATION = [
    "--rate", "200", "--journeys", "billing,support,delivery", "--incident", "effort:chat/billing@+30s", "--seed", "7",
    "--comeback", "10s",
]  # fmt: skip


def start_simulator(bootstrap: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`cxpulse simulate` against the demo's broker, its output in <data dir>/simulate.log."""
    log_path = data_dir / "simulate.log"
    env = {**os.environ, "CXPULSE_KAFKA_BOOTSTRAP": bootstrap, "CXPULSE_DATA_DIR": str(data_dir)}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # our own module
            [sys.executable, "-m", "streams.cli", "simulate", *SIMULATION],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=local_broker.die_with_parent,  # noqa: PLW1509 - only prctl
        )
    return proc, log_path


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


def summary(
    settings: Settings, alerts: list[dict[str, Any]], port: int, controller_port: int, stopped_ms: int | None = None
) -> str:
    """What the user can do next, printed when the demo stops: commands that run as printed (the demo's store,
    its 5-second panes, its broker's ports), also hours later (their windows end when the demo stopped)."""
    command = own_command()
    data = shlex.quote(str(settings.data_dir))
    env = f"CXPULSE_DATA_DIR={data} CXPULSE_PANE_SECONDS={DEMO_ENV['CXPULSE_PANE_SECONDS']}"
    stopped_ms = stopped_ms if stopped_ms is not None else int(time.time() * 1000)
    pane_ms = int(DEMO_ENV["CXPULSE_PANE_SECONDS"]) * 1000
    until = iso_utc(stopped_ms - stopped_ms % pane_ms + pane_ms)[:19] + "Z"  # the pane the demo stopped in, whole
    fired = sum(a["state"] == "FIRING" for a in alerts)
    return "\n".join(
        [
            f"data: {settings.data_dir} (Kafka, worker state, ClickHouse in {settings.data_dir / 'clickhouse'})",
            f"effort alerts: {fired} fired",
            "read it back (the demo ran 5-second panes):",
            f"  {env} {command} report --journeys --window 10m --by journey,channel --until {until}",
            f"  {env} {command} report --window 5m --by channel,journey --until {until}",
            f"  {env} {command} drivers --metric CES --channel chat --journey billing --window 10m --vs rest "
            f"--until {until}",
            "its alerts again, with its broker (Ctrl-C stops it):",
            f"  {command} broker --data-dir {data} --port {port} --controller-port {controller_port}",
            f"  CXPULSE_KAFKA_BOOTSTRAP=127.0.0.1:{port} {command} read alerts",
        ]
    )


class Demo:
    """One run of the demo: what it started, stopped in reverse order whatever happens."""

    def __init__(self, settings: Settings, out: Console, err: Console) -> None:
        self.settings = settings
        self.out = out
        self.err = err
        self.started = time.monotonic()
        self.children: list[subprocess.Popen[bytes]] = []  # the broker first
        self.foreground: local_broker.Foreground | None = None
        self._last_line = 0.0  # monotonic time of the last progress line (not a terminal)

    def run(self, port: int, controller_port: int | None, until_ready: bool, stop_after: float | None) -> None:
        """Start everything, show the dashboard until Ctrl-C, ``stop_after`` seconds or a child that dies, stop
        everything.  CxPulseError (a one-line reason) when a part cannot start; broker.Interrupted on Ctrl-C
        while the broker starts."""
        settings = self.settings
        spec, proc, self.foreground, broker_seconds = local_broker.start_foreground(
            settings.data_dir, settings.kafka_lib_dir, port, controller_port, local_broker.DEFAULT_HEAP, self._echo
        )
        self.children.append(proc)
        try:
            table = self._start_worker(spec, broker_seconds)
            if until_ready:
                self.out.print(table)
                return
            sim_proc, sim_log = start_simulator(spec.bootstrap, settings.data_dir)
            self._started(sim_proc)
            table.add_row("simulator", " ".join(SIMULATION), f"pid {sim_proc.pid}, log {sim_log}")
            self.out.print(table)
            self.out.print("running; Ctrl-C stops everything", highlight=False)
            alerts = self._show(spec.bootstrap, stop_after)
        finally:
            self.stop()
        self.out.print(summary(settings, alerts, spec.port, spec.controller_port), highlight=False, markup=False)

    def stop(self) -> None:
        """Stop every child, the last started first (the simulator first, the broker last)."""
        for child in reversed(self.children):
            local_broker.stop(child)

    def _echo(self, message: str) -> None:
        self.err.print(message, highlight=False)

    def _started(self, proc: subprocess.Popen[bytes]) -> None:
        self.children.append(proc)
        if self.foreground is not None:
            self.foreground.also_stop(proc)

    def _start_worker(self, spec: local_broker.BrokerSpec, broker_seconds: float) -> Table:
        """Topics and the worker, ready; the table of what runs where."""
        settings = self.settings
        specs = topic_specs(settings)
        ensure_topics(spec.bootstrap, specs)
        table = Table(title_justify="left")
        for column in ("part", "where", "state"):
            table.add_column(column)
        version = local_broker.kafka_version(spec.lib_dir)
        pid = self.children[0].pid
        table.add_row(f"Kafka {version} (KRaft)", spec.bootstrap, f"ready in {broker_seconds:.1f} s, java pid {pid}")
        for topic in specs:
            table.add_row("topic", topic.name, count(topic.partitions, "partition"))
        table.add_row("state", str(spec.data_dir), f"broker log {spec.log_file}")
        worker, log, seconds = start_worker(settings, spec.bootstrap, self._started)
        table.add_row(
            "stream worker",
            f"http://127.0.0.1:{settings.metrics_port}/metrics",
            f"ready in {seconds:.1f} s, pid {worker.pid}, log {log}",
        )
        table.title = f"cxpulse demo: up in {time.monotonic() - self.started:.1f} s"  # broker, topics, worker ready
        table.add_row("KPI gauges, effort detector", "same /metrics", f"alerts on {settings.alerts_topic}")
        if settings.clickhouse_url:
            table.add_row(
                "ClickHouse (worker's sink)", settings.clickhouse_url, "read it: cxpulse report, cxpulse drivers"
            )
        return table

    def _show(self, bootstrap: str, stop_after: float | None) -> list[dict[str, Any]]:
        """The live dashboard until Ctrl-C, ``stop_after``, or a child that dies; the alerts seen."""
        out = self.out
        board = Dashboard(self.settings, bootstrap, self.started)
        view = Live(board.render(out.width), console=out, refresh_per_second=2) if out.is_terminal else None
        try:
            if view is not None:
                view.start()
            while self._running(stop_after):
                for alert in board.poll():
                    out.print(alert_line(alert), highlight=False, markup=False)
                for channel, journey, words in board.new_words():
                    out.print(words_line(channel, journey, words), highlight=False, markup=False)
                if view is not None:
                    view.update(board.render(out.width))
                else:
                    self._progress_line(board)
                time.sleep(1.0)  # the dashboard's pace (the worker's gauges refresh every 2 s)
        finally:
            if view is not None:
                view.stop()
            board.close()
        if view is None:
            out.print(board.render())  # the last frame: same clock as the progress lines, so never earlier
        return list(board.alerts)

    def _running(self, stop_after: float | None) -> bool:
        if self.foreground is not None and self.foreground.requested:
            return False
        if stop_after is not None and time.monotonic() - self.started >= stop_after:
            return False
        dead = [c for c in self.children if c.poll() is not None]
        if dead:
            self.err.print(f"demo: pid {dead[0].pid} exited with {dead[0].returncode}; stopping", highlight=False)
            return False
        return True

    def _progress_line(self, board: Dashboard) -> None:
        """Not a terminal: a progress line every 10 s."""
        now = time.monotonic()
        if now - self._last_line < 10:
            return
        self._last_line = now
        self.out.print(
            f"{now - self.started:4.0f} s: {board.records:,.0f} events ({board.rate:,.0f}/s), lag {board.lag:,.0f}, "
            f"{len(board.kpis)} segments, {len(board.alerts)} alerts, {board.journey_summary()}",
            highlight=False,
        )


def start_worker(
    settings: Settings, bootstrap: str, started: Callable[[subprocess.Popen[bytes]], None]
) -> tuple[subprocess.Popen[bytes], Path, float]:
    """Start `cxpulse worker` against the demo broker (``started(proc)`` is told at once, so that it is stopped
    whatever happens next) and wait until its /metrics reports it ready: the process, its log, the seconds taken."""
    if not settings.metrics_port:
        raise CxPulseError("demo: the worker's readiness is read from /metrics; CXPULSE_METRICS_PORT must not be 0")
    began = time.monotonic()
    log_path = settings.data_dir / "worker.log"
    env = {
        **os.environ,
        **DEMO_ENV,
        "CXPULSE_KAFKA_BOOTSTRAP": bootstrap,
        "CXPULSE_DATA_DIR": str(settings.data_dir),
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=local_broker.die_with_parent,  # noqa: PLW1509 - only prctl, no Python state touched
        )
    started(proc)
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    while time.monotonic() < began + WORKER_TIMEOUT_SECONDS:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise CxPulseError(f"the worker exited with {proc.returncode}: {' | '.join(tail)} (log {log_path})")
        if worker_ready(url):
            return proc, log_path, time.monotonic() - began
        time.sleep(0.25)  # polling an HTTP endpoint that has no push
    raise CxPulseError(f"the worker was not ready after {WORKER_TIMEOUT_SECONDS:.0f} s; see {log_path}")


def worker_ready(url: str) -> bool:
    """Whether the worker's /metrics at ``url`` says cxpulse_worker_ready 1."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL built here
            text = response.read().decode()
    except OSError:
        return False
    return any(
        sample.name == "cxpulse_worker_ready" and sample.value == 1.0
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
