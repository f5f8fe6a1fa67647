"""``cxpulse worker``: one command that runs a worker's processes together on one machine.

- N hot-path slots (``CXPULSE_HOTPATH_PROCESSES``, default 1): streams.worker.hotpath, the rate-heavy step;
- the Faust processes of streams/processes/: ``merge`` (the merge agent, the KPI view, the effort detector) and,
  with a store, ``sink`` (the ClickHouse sink); with ``CXPULSE_HTTP_PORT``, the ``http`` ingest.

They use both cores.  The supervisor creates the topics, starts the children (each dies with it:
``PR_SET_PDEATHSIG``), serves their metrics summed on one ``/metrics`` endpoint with ``/healthz`` and
``/readyz`` beside it, and on SIGTERM or Ctrl-C asks each child to finish its batch and stop, waiting at most
``STOP_SECONDS``.  A child that dies is reported and restarted after a backoff (state comes back from Kafka); one
that keeps dying (``CRASH_LOOP_RESTARTS`` within ``CRASH_LOOP_SECONDS``, not counting deaths while Kafka is away)
or exits with ``EXIT_PERMANENT`` (a configuration it cannot run with) stops the whole worker with exit code 1.
A child that makes no progress while its input waits (``cxpulse_worker_process_stalled_seconds``) is not ready
after ``CXPULSE_STALL_SECONDS`` and is killed and restarted after ``CXPULSE_STALL_RESTART_SECONDS`` (counted in
``cxpulse_worker_stall_restarts_total``).  Scale-out is more workers: they share the partitions through the
consumer groups.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from streams.agents.exposition import blocks, render
from streams.agents.health import serve
from streams.config import Settings
from streams.errors import EXIT_PERMANENT, TopicMissingError
from streams.outage import bootstrap_addresses, tcp_probe
from streams.topics import (
    KafkaWait,
    changelog_specs,
    describe_topics,
    ensure_topics,
    internal_topic_specs,
    internal_topics,
    topic_specs,
)

LOG = logging.getLogger("cxpulse.worker")
HOTPATH_MODULE = "streams.worker.hotpath"
PROCESSES_MODULE = "streams.processes"  # the Faust processes (merge, sink), built by the composition root
HTTP_MODULE = "streams.http_ingest"
STOP_SECONDS = 9.0  # after SIGTERM, children that are still there are killed (the worker must end within 10 s)
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_SECONDS = 120.0
SCRAPE_TIMEOUT_SECONDS = 2.0
POLL_SECONDS = 0.2  # how often the supervisor looks at its children
PORT = "{metrics port}"  # in a child's arguments: its metrics port, a free one picked at each start
WATCH_SECONDS = 2.0  # how often it reads their progress (their /metrics)
_PR_SET_PDEATHSIG = 1


def worker_identity(settings: Settings) -> str:
    """A name that is stable across restarts of this worker and differs between workers: CXPULSE_WORKER_ID, else
    the host name and a digest of the data folder (two workers on one host need two data folders anyway)."""
    if settings.worker_id:
        return settings.worker_id
    digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:60] or "host"
    return f"{host}-{digest}"


def _die_with_parent() -> None:
    """Runs in a child before exec: the kernel kills it (SIGKILL) when the supervisor dies, however it dies."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Child:
    """One process of the worker and its history."""

    name: str
    module: str
    args: list[str]  # PORT stands for its metrics port
    metrics_port: int  # picked at each start (0: not started yet)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: deque[float] = field(default_factory=deque)
    next_start: float = 0.0
    stalled: float = 0.0  # its cxpulse_worker_process_stalled_seconds at the last look
    ready: bool = False  # its cxpulse_worker_process_ready at the last look
    answered: float = 0.0  # monotonic time its /progress last answered

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def look(self, text: str, now: float) -> None:
        """Take its progress from its /progress (its stall and readiness gauges; an empty text: it did not answer)."""
        if not text:
            self.ready = False
            return
        self.answered = now
        stalled, ready = 0.0, []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cxpulse_worker_process_stalled_seconds":
                    stalled = max(stalled, sample.value)
                elif sample.name == "cxpulse_worker_process_ready":
                    ready.append(sample.value == 1.0)
        self.stalled, self.ready = stalled, bool(ready) and all(ready)


def combine(expositions: dict[str, str]) -> Iterator[Metric]:
    """Metric families of several processes' /metrics texts (process name -> text), samples with the same name
    and labels summed: counters, gauges of state held per partition and histogram buckets all add up across
    processes.  Also ``cxpulse_worker_ready``: 1 when every process reported ``cxpulse_worker_process_ready``
    1 (a process without text, not running, counts as not ready)."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    ready = dict.fromkeys(expositions, 0.0)
    for process, text in expositions.items():
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # a creation time cannot be summed
                if sample.name == "cxpulse_worker_process_ready":
                    ready[sample.labels.get("process", process)] = sample.value
                key = (sample.name, tuple(sorted(sample.labels.items())))
                sums[family.name][key] = sums[family.name].get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in sums[name].items():
            family.add_sample(sample_name, dict(labels), value)
        yield family
    overall = Metric(
        "cxpulse_worker_ready",
        "1 once every process of the worker runs, holds its partitions and has restored its state",
        "gauge",
    )
    overall.add_sample("cxpulse_worker_ready", {}, 1.0 if ready and min(ready.values()) == 1.0 else 0.0)
    yield overall


ALWAYS_COMBINED = ("cxpulse_worker_process_ready",)  # read for cxpulse_worker_ready even when one process has it


def merge_pages(expositions: dict[str, str]) -> bytes:
    """The children's /metrics texts as one page: the families that more than one process exports (and the
    readiness) parsed and summed (:func:`combine`), every other family passed through as it is (the KPI and
    effort gauges, which one process owns: at the label cap, parsing them took 5.9 s of a scrape)."""
    per_process = {process: blocks(text) for process, text in expositions.items()}
    seen: dict[str, int] = {}
    for families in per_process.values():
        for name in families:
            seen[name] = seen.get(name, 0) + 1
    shared = {name for name, count in seen.items() if count > 1 or name in ALWAYS_COMBINED}
    to_sum = {
        process: "".join(text for n, text in fams.items() if n in shared) for process, fams in per_process.items()
    }
    alone = "".join(text for fams in per_process.values() for n, text in fams.items() if n not in shared)
    return render(combine(to_sum)) + alone.encode()


class ChildrenCollector:
    """The children's /metrics, fetched at scrape time."""

    @staticmethod
    def scrape(child: Child, path: str = "/metrics") -> str:
        return ChildrenCollector._scrape(child, path)

    @staticmethod
    def _scrape(child: Child, path: str) -> str:
        if not child.alive():
            return ""
        url = f"http://127.0.0.1:{child.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:  # loopback
                return str(response.read().decode())
        except OSError:
            return ""  # starting or stopping: its series are absent from this scrape


def children_of(settings: Settings, roles: Sequence[str], loglevel: str) -> list[Child]:
    """The processes of a worker with these roles, each with its own metrics port: the hot-path slots, the merge
    process (and with journeys on, the journeys process beside it), and when configured the HTTP ingest and the
    ClickHouse sink."""
    children = []
    if "hotpath" in roles:
        for slot in range(settings.hotpath_processes):
            children.append(Child(f"hotpath-{slot}", HOTPATH_MODULE, [str(slot), PORT], 0))
    if "merge" in roles:
        children.append(Child("merge", PROCESSES_MODULE, ["merge", PORT, loglevel], 0))
        if settings.journeys:  # the journey agent, beside merge (its own process: see journeys_process)
            children.append(Child("journeys", PROCESSES_MODULE, ["journeys", PORT, loglevel], 0))
    if "http" in roles and settings.http_port:
        children.append(Child("http", HTTP_MODULE, [PORT], 0))
    if "sink" in roles and settings.clickhouse_url:
        children.append(Child("sink", PROCESSES_MODULE, ["sink", PORT, loglevel], 0))
    return children


class Supervisor:
    """Starts, watches, restarts and stops the processes of one worker."""

    def __init__(
        self,
        settings: Settings,
        identity: str,
        loglevel: str,
        env: dict[str, str],
        roles: Sequence[str] = ("hotpath", "merge"),
    ) -> None:
        self.settings = settings
        self.env = {**env, "CXPULSE_WORKER_ID": identity}
        self.children = children_of(settings, roles, loglevel)
        self.stopping = False
        self.failure: str | None = None
        self.registry = CollectorRegistry()  # the supervisor's own; the children's pages are merged at scrape time
        self.up = Gauge(
            "cxpulse_worker_process_up", "1 while a process of the worker runs", ["process"], registry=self.registry
        )
        self.restarted = Counter(
            "cxpulse_worker_process_restarts",
            "Processes of the worker restarted after they died",
            ["process"],
            registry=self.registry,
        )
        self.stall_restarts = Counter(
            "cxpulse_worker_stall_restarts",
            "Processes of the worker killed and restarted because they made no progress while input waited",
            ["process"],
            registry=self.registry,
        )
        for child in self.children:
            self.up.labels(child.name).set_function(child.alive)
            self.restarted.labels(child.name)
            self.stall_restarts.labels(child.name)
        self.kafka_up = tcp_probe(bootstrap_addresses(settings.kafka_bootstrap))
        self.watched = 0.0
        self.kafka_away_at = -math.inf  # monotonic time Kafka was last seen unreachable

    def start(self, child: Child) -> None:
        """Start (or restart) a child, on a metrics port free now: a port picked earlier may have been taken
        meanwhile, and a child that cannot bind it dies at every restart (seen in CI, "Address already in use")."""
        child.metrics_port = _free_port()
        args = [str(child.metrics_port) if arg == PORT else arg for arg in child.args]
        command = [sys.executable, "-m", child.module, *args]
        child.proc = subprocess.Popen(  # our own module, argument list
            command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no Python state touched
        )
        child.started = time.monotonic()
        LOG.info("started %s (pid %d)", child.name, child.proc.pid)

    def run(self) -> int:
        """Run until asked to stop (exit 0) or until a child cannot be kept running (exit 1)."""
        for child in self.children:
            self.start(child)
        while not self.stopping:
            for child in self.children:
                self.watch(child)
                if self.failure is not None:
                    self.stop()
                    LOG.critical("%s", self.failure)
                    return 1
            self.look_at_progress()
            time.sleep(POLL_SECONDS)  # the supervisor's pace; signals interrupt it
        return self.stop()

    def look_at_progress(self) -> None:
        """Every WATCH_SECONDS: each child's progress; one stalled past CXPULSE_STALL_RESTART_SECONDS (or whose
        /metrics has not answered for that long) is killed, and restarted like any child that died.  Not while
        Kafka is unreachable: every child waits for it then, and a restart would only start over the waiting.  Nor
        for a stall that began while Kafka was away: the bound counts from when Kafka was last seen away, so a
        child recovering from an outage (a new producer, its state read back) is given the whole bound for that."""
        now = time.monotonic()
        if now - self.watched < WATCH_SECONDS:
            return
        self.watched = now
        bound = self.settings.stall_restart_seconds
        if not self.kafka_up():
            self.kafka_away_at = now
        for child in self.children:
            if not child.alive():
                continue
            child.look(ChildrenCollector.scrape(child, "/progress"), now)  # two gauges, not the whole page
            silent = now - max(child.answered, child.started)
            stalled = min(child.stalled, now - self.kafka_away_at)
            if stalled < bound and silent < bound:
                continue
            why = f"made no progress for {stalled:.0f} s" if stalled >= bound else "stopped answering"
            LOG.error(
                "%s %s while its input waits (CXPULSE_STALL_RESTART_SECONDS=%.0f); killing it to restart it",
                child.name,
                why,
                bound,
            )
            self.stall_restarts.labels(child.name).inc()
            if child.proc is not None:
                child.proc.kill()
            child.stalled = 0.0

    def page(self) -> bytes:
        """The worker's /metrics: its own metrics and the merge of its processes' pages."""
        children = {child.name: ChildrenCollector.scrape(child) for child in self.children}
        return generate_latest(self.registry) + merge_pages(children)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``/readyz``: every child running, ready and not stalled past CXPULSE_STALL_SECONDS (from the last
        look, at most WATCH_SECONDS old)."""
        processes = {
            child.name: {"running": child.alive(), "ready": child.ready, "stalled_seconds": round(child.stalled, 1)}
            for child in self.children
        }
        ready = bool(processes) and all(
            p["running"] and p["ready"] and child.stalled < self.settings.stall_seconds
            for child, p in zip(self.children, processes.values(), strict=True)
        )
        return ready, {"processes": processes}

    def watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if now >= child.next_start and not self.stopping:
                self.start(child)
            return
        code = child.proc.poll()
        if code is None or self.stopping:
            return
        child.proc = None
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if code == EXIT_PERMANENT:
            self.failure = f"{child.name} {how}: it cannot run with this configuration (see its log above)"
            return
        while child.restarts and now - child.restarts[0] > CRASH_LOOP_SECONDS:
            child.restarts.popleft()
        kafka_away = not self.kafka_up()
        if len(child.restarts) >= CRASH_LOOP_RESTARTS and not kafka_away:
            self.failure = (
                f"{child.name} {how}, the {CRASH_LOOP_RESTARTS + 1}th time within {CRASH_LOOP_SECONDS:.0f} s; giving up"
            )
            return
        if not kafka_away:  # a death while Kafka is away is the outage's, not a crash loop of the child's
            child.restarts.append(now)
        delay = min(30.0, 0.5 * 2 ** max(0, len(child.restarts) - 1)) if not kafka_away else 2.0
        child.next_start = now + delay
        self.restarted.labels(child.name).inc()
        LOG.log(
            logging.WARNING if kafka_away else logging.ERROR,
            "%s %s%s; restarting it in %.1f s (its state comes back from Kafka)",
            child.name,
            how,
            " while Kafka is away" if kafka_away else "",
            delay,
        )

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            LOG.info("%s: stopping the worker's processes", signal.Signals(signum).name)
        self.stopping = True

    def stop(self) -> int:
        """SIGTERM every child, wait up to STOP_SECONDS, kill what is left; 0 when all stopped by themselves."""
        self.stopping = True
        running = [child.proc for child in self.children if child.proc is not None and child.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        clean = True
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                clean = False
                LOG.error("pid %d did not stop within %.0f s of SIGTERM; killed", proc.pid, STOP_SECONDS)
                proc.kill()
                proc.wait()
        return 0 if clean else 1


def prepare_topics(settings: Settings, wait: KafkaWait | None = None) -> None:
    """Create the pipeline's topics and the worker's internal ones, and wait until every partition has a leader
    (BrokerError with the reason).  Once Kafka has answered, a topic without a leader yet (``cxpulse topics`` run
    beside, a broker restarting) or Kafka away is waited for as ``wait`` says (default: TOPIC_WAIT_SECONDS, logged
    once); a wrong address, refused credentials or a missing ACL fail at once."""
    kafka, replicas = settings.kafka, settings.replication_factor
    wait = wait or KafkaWait(log=LOG)
    ensure_topics(kafka, topic_specs(settings), replicas, wait)
    feedback_partitions = describe_topics(kafka, [settings.feedback_topic], wait).partitions[settings.feedback_topic]
    ensure_topics(kafka, internal_topic_specs(settings, feedback_partitions), replicas, wait)
    internal = internal_topics(settings)
    followed = (internal.partials, settings.results_topic, internal.journey_answers)
    counts = describe_topics(kafka, followed, wait).partitions
    partials, results, journeys = (counts[topic] for topic in followed)
    ensure_topics(kafka, changelog_specs(settings, partials, results, journeys), replicas, wait)


def sink_topics(settings: Settings) -> list[str]:
    """The topics a ClickHouse sink reads (streams/processes/sink.py sink_feeds)."""
    journeys = [settings.journeys_topic] if settings.journeys else []
    return [settings.results_topic, internal_topics(settings).answers, *journeys]


def await_sink_topics(settings: Settings, wait: KafkaWait | None = None) -> None:
    """`cxpulse sink` on its own host creates nothing (its role may not: `cxpulse acls --role sink`); it waits for
    the topics it reads, which the worker creates, as ``wait`` says (default TOPIC_WAIT_SECONDS, logged once), then
    fails naming the one missing."""
    wait = wait or KafkaWait(log=LOG)
    while True:
        try:
            describe_topics(settings.kafka, sink_topics(settings), wait)
            return
        except TopicMissingError as exc:
            wait.again(f"{exc} (`cxpulse worker` with CXPULSE_APP_ID={settings.app_id} creates it)")


def serve_metrics(supervisor: Supervisor, settings: Settings) -> str:
    """Serve the worker's /metrics, /healthz and /readyz (OSError when the port is taken); return the metrics
    URL, or "off"."""
    if not settings.metrics_port:
        return "off"
    serve(settings.metrics_port, settings.metrics_host, supervisor.page, supervisor.readiness)
    return f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"


def install_signals(supervisor: Supervisor) -> None:
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of the children: this process's, with the settings that flags may have changed, and
    Python's fault handler on (a child killed by a signal in native code leaves every thread's stack in the log)."""
    return {
        **os.environ,
        "CXPULSE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CXPULSE_DATA_DIR": str(settings.data_dir),
        "PYTHONFAULTHANDLER": "1",
    }
