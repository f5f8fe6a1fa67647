"""`make bench`: cxpulse and its peers side by side on the same broker and the same events, in one run.

Starts its own Kafka broker (`cxpulse broker` on free loopback ports), loads the same generated FeedbackEvents
(valid and unique, so that every system must arrive at the same counts; Confluent-framed Avro keyed by customer,
Kafka timestamp = occurred_at) into one 6-partition topic per event shape:

- live: event times over the last minute (few panes, the batches of a real-time stream);
- backlog: 48 channel x journey segments, event times over 3 hours (a catch-up: many panes per batch).

and measures, per shape, the median of ``--runs`` runs of each system, each a fresh process (and consumer
group) reading the topic from the start:

- bare: confluent-kafka ``consume(10000)`` + fastavro + a dict count (benchmarks/peers/bare.py): the ceiling;
- cxpulse: ``cxpulse worker`` as a user runs it (journeys and the embedded store on), from launch to the end of
  its pipeline: the last result on the results topic, the journeys caught up, every answer in the store (the
  headline; start-up: launch to the first result); with one default off as comparisons (``--journeys-off``,
  ``--store-off``);
- quix: Quix Streams 3.28 group_by + tumbling window + reduce + current() (benchmarks/peers/quix_app.py, in
  .venv-quix);
- faust: a naive Faust agent, one event at a time into a tumbling windowed table (benchmarks/peers/faust_naive.py);
- replay: ``cxpulse replay``'s computation over the same events in an Avro container file (no Kafka).

Every system's final counts per (pane, channel, journey, metric) are checked against the generated events.
Then, for cxpulse alone: 1 vs 2 hot-path processes on the backlog; event-to-result latency at a steady rate
(and event to gauge, the worker's own histogram);
at the same rate with the ClickHouse sink, how long after its pane result each answer is in ClickHouse; what a
default worker costs at a small contact center's rate (``--quiet-rate 200``, ``cxpulse simulate`` beside it: CPU
per process and RSS); the worker's RSS over a steady run with a 5-minute retention.  Usage::

    .venv/bin/python -m benchmarks.bench [--events 200000] [--runs 3] [--rate 20000] [--latency-seconds 60]
                                         [--store-lag-seconds 120] [--quiet-seconds 120] [--quiet-rate 200]
                                         [--quiet-load simulate] [--soak-seconds 600] [--only cxpulse,bare]
                                         [--shapes live,backlog] [--comments 0.6] [--steady-customers 10000000]

The steady runs (latency, store lag, soak) draw each answer's customer from ``--steady-customers`` (ten million,
as ``cxpulse simulate``: most answers a journey of their own); 0 sends the 1,000 templates' own customers again and
again, as every steady run did until 2026-12-08.

``--comments 0.6`` gives 60% of the answers a comment (English and Dutch, a tenth with an address and a number to
redact): what reading comments costs the hot path (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from benchmarks import profile as profiling
from benchmarks.comments import comments as comment_texts
from schemas.codec import FEEDBACK, FEEDBACK_RAW, WINDOW_RESULT, LocalCatalog, decode_confluent, encode_confluent
from streams.broker import die_with_parent
from streams.config import REPO_ROOT, Settings
from streams.core.synth import CHANNELS, realistic_events
from streams.replay import replay_file
from streams.topics import TopicSpec, ensure_topics, internal_topics, topic_specs
from tests.support import free_ports, start_broker

PARTITIONS = 6
PANE_MS = 60_000
RUN_TIMEOUT_SECONDS = 900.0
QUIET_WARM_UP_SECONDS = 60.0  # the quiet run measures after this
PROFILES: Path | None = None  # --profile: where py-spy profiles of the cxpulse runs go
BROKER_PID: int | None = None  # the broker's JVM (its CPU time in a cxpulse run's figures)
QUIX_PYTHON = REPO_ROOT / ".venv-quix" / "bin" / "python"
SHAPES: dict[str, dict[str, Any]] = {
    "live": {"spread_ms": 60_000, "channels": CHANNELS},
    "backlog": {"spread_ms": 3 * 3_600_000, "channels": (*CHANNELS, "sms")},  # 8 x 6 journeys = 48 segments
}
FIELDS = {f["name"]: f.get("default") for f in FEEDBACK_RAW["fields"]}
console = Console()

GroupKey = tuple[int, str, str, str]  # pane start, channel, journey, metric


@dataclass
class Run:
    """One run of one system: when it was launched, first produced output, and finished; its peak RSS."""

    launched: float
    first: float
    done: float
    events: int
    peak_rss_mb: float
    counts: dict[GroupKey, int] = field(repr=False, default_factory=dict)
    stored: float | None = None  # when ClickHouse held every answer (runs with the sink)
    journeys_done: float | None = None  # when the journey agent had handled every forwarded answer (journeys on)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process, launch to the end (Run.end)

    @property
    def startup(self) -> float:
        return self.first - self.launched

    @property
    def rate(self) -> float:
        """Events per second from launch to the last result."""
        return self.events / (self.done - self.launched)

    @property
    def steady(self) -> float:
        """Events per second from the first output to the last."""
        return self.events / max(1e-9, self.done - self.first)

    @property
    def end(self) -> float:
        """When everything was done: the last result, the journeys and the store (those the run had)."""
        return max(self.done, self.journeys_done or self.done, self.stored or self.done)

    @property
    def end_rate(self) -> float:
        """Events per second from launch to :attr:`end`."""
        return self.events / (self.end - self.launched)


# --- events ----------------------------------------------------------------------------------------------


def generate(
    shape: str, count: int, now_ms: int, comment_share: float = 0.0
) -> tuple[list[tuple[bytes, bytes, int]], Counter[GroupKey]]:
    """(key, value, timestamp) messages of one shape, and the expected count of every pane group; ``comment_share``
    of the answers carry a comment (benchmarks/comments.py's English and Dutch ones, a tenth with an address and a
    phone number to redact)."""
    spec = SHAPES[shape]
    events = realistic_events(
        count,
        seed=17,
        start_ms=now_ms - spec["spread_ms"],
        per_second=count / (spec["spread_ms"] / 1000),
        invalid_share=0.0,
        duplicate_share=0.0,
        channels=spec["channels"],
    )
    messages = []
    expected: Counter[GroupKey] = Counter()
    said = comment_texts(count) if comment_share > 0 else []
    pick = random.Random(23)
    for i, event in enumerate(events):
        record = {**FIELDS, **event}
        if said and pick.random() < comment_share:
            record["comment"] = said[i]
        at = record["occurred_at"]
        expected[(at - at % PANE_MS, record["channel"], record["journey"], record["metric"])] += 1
        value = encode_confluent(record, FEEDBACK, 1)
        messages.append((record["customer_id"].encode(), value, at))
    return messages, expected


def load(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4"})
    for key, value, timestamp in messages:
        while True:
            try:
                producer.produce(topic, value, key, timestamp=timestamp)
                break
            except BufferError:
                producer.poll(0.2)
    assert producer.flush(60) == 0


def avro_file(path: Path, messages: list[tuple[bytes, bytes, int]]) -> None:
    records = (decode_confluent(value, LocalCatalog(), FEEDBACK)[1] for _, value, _ in messages)
    with path.open("wb") as out:
        fastavro.writer(out, fastavro.parse_schema(FEEDBACK_RAW), records, codec="null")


# --- watching a run --------------------------------------------------------------------------------------


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (index 1: the parent, 11-12: CPU ticks, 21: RSS
    pages); None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        stat = proc_stat(entry) if entry.isdigit() else None
        if stat is None:
            continue
        parents[int(entry)] = int(stat[1])
        rss[int(entry)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(rss.get(p, 0) for p in tree) / 1e6


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    stats = ((int(entry), proc_stat(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [child for child, stat in stats if stat is not None and int(stat[1]) == pid]


def process_names(pid: int) -> dict[int, str]:
    """The worker's children by pid, each named by its module: ``hotpath 0``, ``merge``, ``journeys``, ``sink``."""
    out = {}
    for child in children(pid):
        try:
            args = [a.decode() for a in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        at = next((i for i, a in enumerate(args) if a.startswith("streams.")), None)
        name = str(child) if at is None else args[at].rsplit(".", 1)[-1]
        if at is not None and at + 1 < len(args) and args[at + 1].isdigit():
            name += f" {args[at + 1]}"
        elif at is not None and name == "processes" and at + 1 < len(args):
            name = args[at + 1]  # streams.processes merge|journeys|sink
        taken = set(out.values())
        out[child] = name if name not in taken else f"{name} {child}"
    return out


MEMORY_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File")


def smaps_mb(pid: int) -> dict[str, float]:
    """A process's memory from /proc/PID/smaps_rollup, MB: ``Rss``, ``Pss`` (each shared page divided among the
    processes that map it), ``Pss_Anon`` (its heaps: what it allocated), ``Pss_File`` (mapped files: shared
    libraries' code, which the kernel can drop and read again); empty when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    fields = (line.split() for line in lines)
    return {name.rstrip(":"): int(kb) * 1024 / 1e6 for name, kb, *_ in fields}  # MB as tree_rss_mb counts them


def memory_by_process(pid: int) -> dict[str, dict[str, float]]:
    """:func:`smaps_mb` of the worker's supervisor and of each of its children by name."""
    return {"supervisor": smaps_mb(pid), **{name: smaps_mb(child) for child, name in process_names(pid).items()}}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, s (0: gone)."""
    stat = proc_stat(pid)
    return 0.0 if stat is None else (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(pid: int, broker_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of the worker's supervisor, of each of its children by name, and of the broker."""
    out = {"supervisor": cpu_seconds(pid)}
    out.update({name: cpu_seconds(child) for child, name in process_names(pid).items()})
    if broker_pid is not None:
        out["broker"] = cpu_seconds(broker_pid)
    return out


class RssSampler:
    """Samples a process tree's RSS every 0.25 s on a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, tree_rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


Decode = Callable[[Any], tuple[Any, GroupKey, int, int] | None]  # message -> (slot key, group, order, count)


def watch(
    bootstrap: str, topic: str, decode: Decode, events: int, proc: subprocess.Popen[bytes]
) -> tuple[float, float, dict[GroupKey, int]]:
    """Read an output topic until the latest counts add up to ``events``; return (first, done, counts)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"watch-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    latest: dict[Any, tuple[int, GroupKey, int]] = {}
    total = 0
    first = None
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args} exited with {proc.returncode}")
            for message in consumer.consume(num_messages=10_000, timeout=0.1):
                if message.error() is not None:
                    continue
                decoded = decode(message)
                if decoded is None:
                    continue
                if first is None:
                    first = time.time()
                slot, group, order, count = decoded
                before = latest.get(slot)
                if before is None or before[0] <= order:
                    total += count - (before[2] if before is not None else 0)
                    latest[slot] = (order, group, count)
            if total == events and first is not None:
                done = time.time()
                counts: Counter[GroupKey] = Counter()
                for _, group, count in latest.values():
                    counts[group] += count
                return first, done, dict(counts)
        raise SystemExit(f"{topic}: counts reached {total} of {events} in {RUN_TIMEOUT_SECONDS:.0f} s")
    finally:
        consumer.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(command: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl: no orphan if the benchmark dies
            cwd=REPO_ROOT,
        )


# --- the systems ------------------------------------------------------------------------------------------


def cxpulse_settings(bootstrap: str, topic: str, workdir: Path, **extra: Any) -> tuple[Settings, dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    values = {
        "kafka_bootstrap": bootstrap,
        "app_id": f"bench-{tag}",
        "feedback_topic": topic,
        "dlq_topic": f"bench-{tag}-dlq",
        "results_topic": f"bench-{tag}-panes",
        "alerts_topic": f"bench-{tag}-alerts",
        # every output topic a run of its own: with the default cx.journeys, each run's sink (a new group) stored
        # the journey instances of every run before it as well (the sink's CPU grew run by run, 2026-12-06)
        "journeys_topic": f"bench-{tag}-journeys",
        "followups_topic": f"bench-{tag}-followups",
        "partitions": PARTITIONS,
        "data_dir": workdir / f"cxpulse-{tag}",
        "metrics_port": free_ports(1)[0],
        "clickhouse_url": "",  # the ClickHouse sink only in the runs that measure it (run_cxpulse clickhouse=True)
        **extra,
    }
    settings = Settings(**values)
    env = {
        **os.environ,
        **{f"CXPULSE_{k.upper()}": json.dumps(v) if isinstance(v, tuple) else str(v) for k, v in values.items()},
    }
    return settings, env


def decode_result(message: Any) -> tuple[Any, GroupKey, int, int]:
    _, record = decode_confluent(message.value(), LocalCatalog(), WINDOW_RESULT)
    group = (record["window_start"], record["channel"], record["journey"], record["metric"])
    return group, group, record["version"], record["n"]


def run_cxpulse(
    bootstrap: str,
    topic: str,
    events: int,
    workdir: Path,
    slots: int = 1,
    clickhouse: bool = False,
    journeys: bool = True,
) -> Run:
    """``clickhouse``: with the ClickHouse sink on the embedded store; the run then also waits until the store
    holds every answer, and reports that moment as ``stored``.  ``journeys``: follow customer journeys (the
    default, as a worker does)."""
    extra: dict[str, Any] = {"hotpath_processes": slots, "journeys": journeys}
    if clickhouse:
        extra["clickhouse_url"] = f"chdb://{workdir / ('chdb-' + uuid.uuid4().hex[:8])}"
    settings, env = cxpulse_settings(bootstrap, topic, workdir, **extra)
    ensure_topics(bootstrap, topic_specs(settings))
    launched = time.time()
    broker_cpu = cpu_seconds(BROKER_PID) if BROKER_PID is not None else 0.0
    proc = spawn([sys.executable, "-m", "streams.cli", "worker"], env, workdir / "cxpulse.log")
    sampler = RssSampler(proc.pid)
    stored = None
    cpu: dict[str, float] = {}
    profile = None
    if PROFILES is not None:
        path = PROFILES / f"cxpulse-{uuid.uuid4().hex[:6]}.txt"
        console.print(f"  (profile of the next run: {path})", highlight=False)
        profile = profiling.record(proc.pid, path)
    try:
        first, done, counts = watch(bootstrap, settings.results_topic, decode_result, events, proc)
        journeys_done, stored = wait_end(settings, proc, events, journeys, clickhouse)
        cpu = cpu_by_process(proc.pid, BROKER_PID)  # launch to the end: the last result, journeys, the store
        if "broker" in cpu:
            cpu["broker"] -= broker_cpu
        if profile is not None:
            profiling.stop(profile)
    finally:
        if profile is not None:
            profiling.stop(profile)
        peak = sampler.stop()
        stop(proc)
    return Run(launched, first, done, events, peak, counts, stored, journeys_done, cpu)


class JourneysProbe:
    """The journeys group's progress over the journey-answers topic, read from outside (called after the last pane
    result, when the hot path has forwarded everything): the topic's ends are taken once; a partition is done at
    end - 1 (the end holds one commit marker after the last message)."""

    def __init__(self, settings: Settings) -> None:
        topic = internal_topics(settings).journey_answers
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.app_id}-journeys",
                # it only reads the group's commits and never polls: librdkafka's "maximum poll interval exceeded:
                # leaving group" after 5 minutes of a long wait (a 10-minute steady run) is not this probe's to say
                "max.poll.interval.ms": 86_400_000,
            }
        )
        listed = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p) for p in listed]
        self.ends = {tp.partition: self.consumer.get_watermark_offsets(tp, 10, False)[1] for tp in self.partitions}
        self.done: dict[int, int] = {}

    def caught_up(self) -> bool:
        """Whether the group's committed offsets (read now) reached the ends."""
        self.done = {tp.partition: tp.offset for tp in self.consumer.committed(self.partitions, timeout=10)}
        return all(end == 0 or self.done.get(p, -1) >= end - 1 for p, end in self.ends.items())

    def share(self) -> str:
        """How much of the journey-answers topic the journeys group has committed."""
        committed = sum(min(max(self.done.get(p, 0), 0), end) for p, end in self.ends.items())
        return f"{committed:,} of {sum(self.ends.values()):,} journey-answers offsets committed"


def wait_journeys(settings: Settings, proc: subprocess.Popen[bytes], timeout: float = RUN_TIMEOUT_SECONDS) -> float:
    """When the journeys group's committed offsets reach the end of the journey-answers topic (polled).  Says how
    far it is every minute."""
    probe = JourneysProbe(settings)
    try:
        started = time.monotonic()
        told = started
        while time.monotonic() < started + timeout:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args} exited with {proc.returncode}")
            if probe.caught_up():
                return time.time()
            if time.monotonic() - told >= 60:
                told = time.monotonic()
                print(f"  journeys: {probe.share()} after {told - started:.0f} s", flush=True)
            time.sleep(0.2)  # committed offsets have no push
    finally:
        probe.consumer.close()
    raise SystemExit(f"the journey agent did not catch up within {timeout:.0f} s ({probe.share()})")


def wait_end(
    settings: Settings, proc: subprocess.Popen[bytes], events: int, journeys: bool, clickhouse: bool
) -> tuple[float | None, float | None]:
    """After the last pane result: when the journeys were done and when the store held every answer (None for
    what the run does not have), each watched on its own, polled every 0.2 s in one loop.

    The journeys are done when their last instance revision reached ``cx.journeys``: the moment the topic's end
    last grew, once the journeys group's committed offsets reached the end of the journey-answers topic (which
    says every answer was handled).  Faust commits every 2.8 s (``broker_commit_interval``), so the commit itself
    comes up to that much later; nothing a user sees waits for it (the instances are out, the store writes them),
    and timed by it a run fell into two modes ~2.8 s apart (2026-12-06)."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    probe = JourneysProbe(settings)
    try:
        instances = settings.journeys_topic
        listed = probe.consumer.list_topics(instances, timeout=10).topics[instances].partitions if journeys else {}
        out = [TopicPartition(instances, p) for p in listed]
        sent, sent_at = -1, time.time()
        journeys_done = None if journeys else 0.0
        stored = None if clickhouse else 0.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args} exited with {proc.returncode}")
            now = time.time()
            if journeys_done is None:
                # the commits first: a batch's revisions are in Kafka before its offsets are committed, so the end
                # read after a commit that shows every answer handled holds the last revision
                caught_up = probe.caught_up()
                total = sum(probe.consumer.get_watermark_offsets(tp, 10, False)[1] for tp in out)
                if total != sent:
                    sent, sent_at = total, now
                if caught_up:
                    journeys_done = sent_at
            if stored is None and stored_answers(settings.metrics_port) >= events:
                stored = now
            if journeys_done is not None and stored is not None:
                return (journeys_done if journeys else None), (stored if clickhouse else None)
            time.sleep(0.2)  # committed offsets and the store's counter have no push
    finally:
        probe.consumer.close()
    raise SystemExit(
        f"not done within {RUN_TIMEOUT_SECONDS} s: journeys {probe.share()}, "
        f"store {'done' if stored is not None else 'behind'}"
    )


def stored_answers(port: int) -> float:
    """The worker's ClickHouse sink's answers written so far (its rows counter; 0 when /metrics does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cxpulse_sink_rows_total" and sample.labels.get("table") == "answers":
                return sample.value
    return 0.0


def histogram_buckets(port: int, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets on a worker's /metrics: (upper bound, count) in order, +Inf last."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sorted(
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_bucket"
    )


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile of a histogram's cumulative buckets as Prometheus's ``histogram_quantile`` estimates it:
    linear within the bucket that holds it (from 0 for the first); the largest finite bound when it falls in +Inf."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def wait_stored(port: int, events: int, proc: subprocess.Popen[bytes]) -> float:
    """When the worker's ClickHouse sink has written every answer (its rows counter, polled)."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        if stored_answers(port) >= events:
            return time.time()
        time.sleep(0.2)
    raise SystemExit(f"ClickHouse did not hold {events} answers within {RUN_TIMEOUT_SECONDS} s")


def run_quix(bootstrap: str, topic: str, events: int, workdir: Path, grace_ms: int) -> Run:
    out = f"quix-out-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(out, PARTITIONS, {})])
    command = [
        str(QUIX_PYTHON),
        str(REPO_ROOT / "benchmarks" / "peers" / "quix_app.py"),
        "--bootstrap", bootstrap, "--topic", topic, "--out", out,
        "--group", f"quix-{uuid.uuid4().hex[:8]}", "--state", str(workdir / f"quix-state-{uuid.uuid4().hex[:8]}"),
        "--grace-ms", str(grace_ms),
    ]  # fmt: skip

    def decode(message: Any) -> tuple[Any, GroupKey, int, int]:
        channel, journey, metric = message.key().decode().split("|")
        value = json.loads(message.value())
        group = (int(value["start"]), channel, journey, metric)
        return group, group, int(value["value"]), int(value["value"])

    launched = time.time()
    proc = spawn(command, None, workdir / "quix.log")
    sampler = RssSampler(proc.pid)
    try:
        first, done, counts = watch(bootstrap, out, decode, events, proc)
    finally:
        peak = sampler.stop()
        stop(proc)
    return Run(launched, first, done, events, peak, counts)


def run_faust(bootstrap: str, topic: str, events: int, workdir: Path) -> Run:
    app_id = f"faust-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable, "-m", "benchmarks.peers.faust_naive", "--bootstrap", bootstrap, "--topic", topic,
        "--app-id", app_id, "--data-dir", str(workdir / app_id), "--partitions", str(PARTITIONS),
    ]  # fmt: skip

    def decode(message: Any) -> tuple[Any, GroupKey, int, int] | None:
        if message.value() is None:
            return None
        segment, (start, _end) = json.loads(message.key())
        channel, journey, metric = segment.split("|")
        group = (round(start * 1000), channel, journey, metric)
        count = int(json.loads(message.value()))
        return group, group, count, count

    launched = time.time()
    proc = spawn(command, None, workdir / "faust.log")
    sampler = RssSampler(proc.pid)
    try:
        first, done, counts = watch(bootstrap, f"{app_id}-counts-changelog", decode, events, proc)
    finally:
        peak = sampler.stop()
        stop(proc)
    return Run(launched, first, done, events, peak, counts)


def run_bare(bootstrap: str, topic: str, events: int, workdir: Path) -> Run:
    counts_file = workdir / f"bare-{uuid.uuid4().hex[:8]}.json"
    command = [
        sys.executable, "-m", "benchmarks.peers.bare", "--bootstrap", bootstrap, "--topic", topic,
        "--events", str(events), "--counts", str(counts_file),
    ]  # fmt: skip
    launched = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO_ROOT, preexec_fn=die_with_parent)  # noqa: PLW1509
    sampler = RssSampler(proc.pid)
    output, _ = proc.communicate(timeout=RUN_TIMEOUT_SECONDS)
    peak = sampler.stop()
    times = json.loads(output.decode().strip().splitlines()[-1])
    counts = {(int(a), b, c, d): n for a, b, c, d, n in json.loads(counts_file.read_text())}
    return Run(launched, times["first"], times["done"], events, peak, counts)


def run_replay(path: Path, events: int) -> Run:
    launched = time.time()
    replay = replay_file(path, PANE_MS, lambda dead: None)
    results = replay.results()
    done = time.time()
    counts = {(r.window_start, r.channel, r.journey, r.metric): r.n for r in results}
    return Run(launched, launched, done, events, 0.0, counts)


# --- cxpulse alone: latency and RSS under a steady load -----------------------------------------------------


class SteadyLoad:
    """Sends fresh events (occurred_at = now) at a fixed rate on a thread, remembering per pane group the send
    time of each event in order, so a result with n answers tells when the group's n-th event was counted.

    ``customers``: each event's customer drawn from that many (as ``cxpulse simulate`` draws them from ten million:
    journeys of a contact or two, each answer a revision of its own); 0: each template's own customer, so about
    1,000 customers answering again and again, each one's journey instance growing through the run (every steady
    run until 2026-12-08)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rate: int,
        seconds: float,
        templates: list[dict[str, Any]],
        customers: int = 0,
    ) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
        self.topic = topic
        self.rate = rate
        self.seconds = seconds
        self.customers = customers
        self.sent: dict[GroupKey, list[float]] = {}
        self.ids: dict[GroupKey, list[int]] = {}  # the events' numbers (event_id "s-N"), in the order of ``sent``
        self.count = 0
        self.lock = threading.Lock()
        # (channel, journey, metric, customer key, Avro bytes after occurred_at up to the customer id's string, the
        # bytes after it): the template's own customer id sits between the two unless ``customers`` draws another
        self.tails: list[tuple[str, str, str, bytes, bytes, bytes]] = []
        marker = "\x01" + uuid.uuid4().hex + "\x01"
        marked = b"\x02" + _zigzag(len(marker)) + marker.encode()  # the union's string branch, the marker's bytes
        for record in templates:
            full = encode_confluent({**FIELDS, **record}, FEEDBACK, 1)
            head = encode_confluent({**FIELDS, **record, "event_id": "", "occurred_at": 0}, FEEDBACK, 1)
            assert full.endswith(head[7:])
            split = encode_confluent(
                {**FIELDS, **record, "event_id": "", "occurred_at": 0, "customer_id": marker}, FEEDBACK, 1
            )[7:]
            assert split.count(marked) == 1
            before, after = split.split(marked)
            assert before + self._customer(record["customer_id"].encode()) + after == head[7:]
            self.tails.append(
                (record["channel"], record["journey"], record["metric"], record["customer_id"].encode(), before, after)
            )
        self.finished = 0.0  # when the last event was sent (and flushed)
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _customer(customer: bytes) -> bytes:
        """A customer id as the Avro union ["null", "string"] writes it."""
        return b"\x02" + _zigzag(len(customer)) + customer

    def _run(self) -> None:
        started = time.time()
        step = 0.01  # send in bursts every 10 ms
        index = 0
        draw = random.Random(5).randrange
        while time.time() - started < self.seconds:
            due = int((time.time() - started) * self.rate)
            while self.count < due:
                channel, journey, metric, key, before, after = self.tails[index % len(self.tails)]
                if self.customers:
                    key = b"steady-%08d" % draw(self.customers)
                index += 1
                now = time.time()
                at = int(now * 1000)
                event_id = f"s-{index}".encode()
                value = (
                    b"\x00\x00\x00\x00\x01" + _zigzag(len(event_id)) + event_id + _zigzag(at)
                    + before + self._customer(key) + after
                )  # fmt: skip
                group = (at - at % PANE_MS, channel, journey, metric)
                with self.lock:
                    self.sent.setdefault(group, []).append(now)
                    self.ids.setdefault(group, []).append(index)
                while True:
                    try:
                        self.producer.produce(self.topic, value, key)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
                self.count += 1
            self.producer.poll(0)
            time.sleep(step)  # pacing a load generator, not synchronisation
        self.producer.flush(30)
        self.finished = time.time()


def _zigzag(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                if b"cxpulse_worker_ready 1.0" in response.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling an endpoint that has no push
    raise SystemExit("the worker was not ready in 120 s")


def cover(
    message: Any,
    load: SteadyLoad,
    covered: dict[GroupKey, int],
    latencies: list[float],
    result_seen: array[float] | None,
) -> None:
    """A pane result of a steady run, seen now: the latency of each of its group's events it counts first."""
    seen = time.time()
    _, group, _, n = decode_result(message)
    done = covered.get(group, 0)
    if n > done:
        with load.lock:
            times = load.sent.get(group, [])[done:n]
            ids = load.ids.get(group, [])[done:n]
        latencies.extend(seen - t for t in times)
        if result_seen is not None:
            for number in ids:
                result_seen[number] = seen
        covered[group] = n


def steady_run(
    bootstrap: str,
    workdir: Path,
    rate: int,
    seconds: float,
    templates: list[dict[str, Any]],
    store_lags: list[float] | None = None,
    gauge: list[tuple[float, float]] | None = None,
    customers: int = 0,
    journeys_after: list[float] | None = None,
    **extra: Any,
) -> tuple[list[float], list[tuple[float, float]], int]:
    """A worker under a steady load: latencies of every counted event (s), (elapsed s, RSS MB) samples, sent.

    With ``gauge`` (a list to fill), the worker's ``cxpulse_event_to_gauge_seconds`` buckets once every event was
    counted, and after its KPI view's next refresh: from an event's Kafka timestamp to the refresh that shows it
    in the gauges, as a scrape finds it (:func:`histogram_buckets`).

    With ``store_lags`` (a list to fill), the worker runs its ClickHouse sink on an embedded store, and the run
    ends when the store holds every answer; then, per answer, the time from its pane result's arrival here to
    its row's ``written_at`` in ``cxpulse.answers`` (the insert's time: one machine, one clock) is put in it.
    With ``journeys_after`` too (and journeys on), the run then waits for the journeys group to have handled every
    answer forwarded to it, and puts in how many seconds after the last answer was sent that was."""
    topic = f"steady-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, {})])
    if store_lags is not None:
        extra["clickhouse_url"] = f"chdb://{workdir / ('chdb-' + uuid.uuid4().hex[:8])}"
    settings, env = cxpulse_settings(bootstrap, topic, workdir, **extra)
    ensure_topics(bootstrap, topic_specs(settings))
    proc = spawn([sys.executable, "-m", "streams.cli", "worker"], env, workdir / "steady.log")
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    result_seen = array("d", bytes(8 * (int(rate * seconds) + 2))) if store_lags is not None else None
    try:
        wait_ready(settings.metrics_port, proc)
        consumer.subscribe([settings.results_topic])
        load_ = SteadyLoad(bootstrap, topic, rate, seconds, templates, customers)
        started = time.time()
        load_.thread.start()
        covered: dict[GroupKey, int] = {}
        latencies: list[float] = []
        rss: list[tuple[float, float]] = []
        next_rss = 0.0
        while load_.thread.is_alive() or sum(covered.values()) < load_.count:
            if time.time() - started > seconds + 120:
                break
            for message in consumer.consume(num_messages=10_000, timeout=0.1):
                if message.error() is None:
                    cover(message, load_, covered, latencies, result_seen)
            if time.time() - started >= next_rss:
                rss.append((time.time() - started, tree_rss_mb(proc.pid)))
                next_rss += 10.0
        if store_lags is not None:
            wait_stored(settings.metrics_port, load_.count, proc)
            if journeys_after is not None and settings.journeys:
                journeys_after.append(wait_journeys(settings, proc) - load_.finished)
        if gauge is not None:
            gauge.extend(gauge_buckets_settled(settings.metrics_port))
        return latencies, rss, load_.count
    finally:
        consumer.close()
        stop(proc)
        if store_lags is not None and result_seen is not None:
            store_lags.extend(written_lags(settings, result_seen))


def gauge_buckets_settled(port: int) -> list[tuple[float, float]]:
    """The event-to-gauge buckets once the KPI view has refreshed after the last result: its count stops growing
    between two scrapes a refresh apart (the view observes each result's latency at its refresh)."""
    from sinks.kpi_view import REFRESH_SECONDS

    buckets = histogram_buckets(port, "cxpulse_event_to_gauge_seconds")
    for _ in range(30):
        time.sleep(REFRESH_SECONDS * 1.5)  # the view's refresh is a timer with nothing to await from here
        again = histogram_buckets(port, "cxpulse_event_to_gauge_seconds")
        if again and buckets and again[-1][1] == buckets[-1][1]:
            return again
        buckets = again
    return buckets


def quiet_run(
    bootstrap: str,
    workdir: Path,
    rate: int,
    warm_up_s: float,
    seconds: float,
    templates: list[dict[str, Any]],
    load: str = "simulate",
) -> tuple[dict[str, float], dict[str, dict[str, float]], float, float, int]:
    """A worker with every default on (journeys, the embedded store) at a low steady rate, as a small contact center
    runs it: after ``warm_up_s``, each process's share of a core over ``seconds`` (%), each one's memory at the end
    (:func:`smaps_mb`), the worker's mean and largest RSS over them (MB), and how many events were sent.  With
    --profile, py-spy over those seconds.

    ``load`` "simulate" (issue 35's measurement): ``cxpulse simulate --rate RATE`` beside the worker, a contact
    center's customers (drawn from millions, journeys of a few contacts, comments).  "templates": the steady runs'
    1,000 answers sent again and again, the quiet run's load until 2026-12-07: about 1,000 customers, each answering
    every 1000/RATE seconds, so that each one's journey instance grows through the run."""
    topic = f"quiet-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, {})])
    settings, env = cxpulse_settings(
        bootstrap, topic, workdir, clickhouse_url=f"chdb://{workdir / ('chdb-' + uuid.uuid4().hex[:8])}"
    )
    ensure_topics(bootstrap, topic_specs(settings))
    proc = spawn([sys.executable, "-m", "streams.cli", "worker"], env, workdir / "quiet.log")
    profile = None
    simulator: subprocess.Popen[bytes] | None = None
    steady: SteadyLoad | None = None
    try:
        wait_ready(settings.metrics_port, proc)
        if load == "simulate":
            simulator = spawn(
                [sys.executable, "-m", "streams.cli", "simulate", "--rate", str(rate), "--topic", topic,
                 "--bootstrap", bootstrap, "--duration", f"{warm_up_s + seconds:.0f}s"],
                env, workdir / "quiet-simulate.log",
            )  # fmt: skip
        else:
            steady = SteadyLoad(bootstrap, topic, rate, warm_up_s + seconds, templates)
            steady.thread.start()
        time.sleep(warm_up_s)  # a measurement window, not synchronisation
        if PROFILES is not None:
            path = PROFILES / f"quiet-{uuid.uuid4().hex[:6]}.txt"
            console.print(f"  (profile of the quiet run: {path})", highlight=False)
            profile = profiling.record(proc.pid, path)
        before, started = cpu_by_process(proc.pid, None), time.monotonic()
        rss: list[float] = []
        while time.monotonic() - started < seconds:
            rss.append(tree_rss_mb(proc.pid))
            time.sleep(5.0)  # RSS samples over the window
        after, elapsed = cpu_by_process(proc.pid, None), time.monotonic() - started
        shares = {name: 100 * (cpu - before.get(name, 0.0)) / elapsed for name, cpu in after.items()}
        memory = memory_by_process(proc.pid)
        if steady is not None:
            steady.thread.join()
        return shares, memory, sum(rss) / len(rss), max(rss), sent_to(bootstrap, topic)
    finally:
        if profile is not None:
            profiling.stop(profile)
        if simulator is not None:
            stop(simulator)
        stop(proc)


def sent_to(bootstrap: str, topic: str) -> int:
    """How many messages ``topic`` holds (the sum of its partitions' high watermarks)."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}"})
    try:
        return sum(
            probe.get_watermark_offsets(TopicPartition(topic, partition), 10, False)[1]
            for partition in range(PARTITIONS)
        )
    finally:
        probe.close()


def written_lags(settings: Settings, result_seen: array[float]) -> list[float]:
    """Per answer of a steady run's embedded store (opened here once the worker has stopped): written_at minus
    the time its pane result was seen (s), in the order they were sent; answers whose result was not seen are
    left out."""
    from sinks import clickhouse as store

    client = store.connect(settings)
    rows = client.query(
        "SELECT toUInt64(substring(event_id, 3)), toUnixTimestamp64Milli(written_at) FROM cxpulse.answers"
    ).result_rows
    return [ms / 1000 - result_seen[number] for number, ms in sorted(rows) if result_seen[number] > 0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the report -------------------------------------------------------------------------------------------


def steady_customers(args: argparse.Namespace) -> str:
    """Whose answers a steady run sent, for its line of the report."""
    if args.steady_customers:
        return f"customers drawn from {args.steady_customers:,}"
    return "the 1,000 templates' own customers"


def median_run(runs: list[Run]) -> Run:
    """The run in the middle by the rate to the end of the pipeline (the pane results' rate when it has no more)."""
    return sorted(runs, key=lambda r: r.end_rate)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="bare,cxpulse,quix,faust,replay")
    parser.add_argument("--shapes", default="live,backlog")
    parser.add_argument(
        "--comments", type=float, default=0.0, help="share of the answers with a comment (0.6: issue 33's cost run)"
    )
    parser.add_argument("--rate", type=int, default=20_000, help="events/s of the latency and soak runs")
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument(
        "--quiet-seconds", type=float, default=120.0, help="a default worker at --quiet-rate: its cost (0: none)"
    )
    parser.add_argument("--quiet-rate", type=int, default=200, help="events/s of the quiet run")
    parser.add_argument(
        "--quiet-load",
        choices=("simulate", "templates"),
        default="simulate",
        help="the quiet run's answers: cxpulse simulate (default), or the steady runs' 1,000 answers again and again",
    )
    parser.add_argument(
        "--store-lag-seconds", type=float, default=120.0, help="steady run with the ClickHouse sink (0: none)"
    )
    parser.add_argument(
        "--steady-customers",
        type=int,
        default=10_000_000,
        help="the steady runs (latency, store lag, soak) draw each answer's customer from this many, as `cxpulse "
        "simulate` does; 0: the 1,000 templates' own customers, each answering again and again (until 2026-12-08)",
    )
    parser.add_argument(
        "--steady-journeys",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow customer journeys in the ClickHouse steady run (the worker's default)",
    )
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--journeys-off",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run cxpulse without customer journeys: what following them costs",
    )
    parser.add_argument(
        "--store-off",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run cxpulse without its store (CXPULSE_CLICKHOUSE_URL empty): what storing every answer costs",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each cxpulse run's processes with py-spy, launch to the end (DIR/cxpulse-<id>.txt, named "
        "before the run's line; read with python -m benchmarks.profile)",
    )
    args = parser.parse_args()
    global PROFILES
    PROFILES = args.profile
    systems = args.only.split(",")
    if "quix" in systems and not QUIX_PYTHON.exists():
        raise SystemExit(f"{QUIX_PYTHON} is missing: `make bench` creates it (quixstreams pins its own Kafka client)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir / "broker")
        global BROKER_PID
        BROKER_PID = broker.java_pid
        console.print(f"broker {broker.bootstrap}; {args.events:,} events per shape; median of {args.runs} runs")
        try:
            report(broker.bootstrap, workdir, systems, args)
        finally:
            broker.stop()


def warm_up(bootstrap: str) -> None:
    """The broker's first consumer group join creates __consumer_offsets (~3 s): not any system's start-up."""
    topic = f"warm-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"warm-{uuid.uuid4().hex}"})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.2)
    consumer.close()


def run_system(system: str, shape: str, bootstrap: str, topic: str, path: Path, events: int, workdir: Path) -> Run:
    """One run of ``system`` over the loaded ``topic`` (replay: over the Avro file at ``path``)."""
    if system == "bare":
        return run_bare(bootstrap, topic, events, workdir)
    if system == "cxpulse":  # as a user runs it: every default on (journeys, the embedded store)
        return run_cxpulse(bootstrap, topic, events, workdir, clickhouse=True)
    if system == "quix":
        return run_quix(bootstrap, topic, events, workdir, SHAPES[shape]["spread_ms"] + 60_000)
    if system == "faust":
        return run_faust(bootstrap, topic, events, workdir)
    return run_replay(path, events)


def report(bootstrap: str, workdir: Path, systems: list[str], args: argparse.Namespace) -> None:
    warm_up(bootstrap)
    now_ms = int(time.time() * 1000)
    summary: dict[str, dict[str, Run]] = {}
    for shape in [name for name in args.shapes.split(",") if name]:  # --shapes "": the steady runs only
        messages, expected = generate(shape, args.events, now_ms, args.comments)
        topic = f"bench-{shape}-{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, {})])
        load(bootstrap, topic, messages)
        path = workdir / f"{shape}.avro"
        avro_file(path, messages)
        console.print(f"[bold]{shape}[/]: {len(expected):,} pane groups, loaded into {topic}")
        summary[shape] = {}
        for system in systems:
            runs = []
            for number in range(args.runs):
                run = run_system(system, shape, bootstrap, topic, path, args.events, workdir)
                agree = run.counts == dict(expected)
                behind = "" if run.journeys_done is None else f", journeys done {run.journeys_done - run.done:+.1f} s"
                behind += "" if run.stored is None else f", every answer stored {run.stored - run.done:+.1f} s"
                used = ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(run.cpu.items()))
                behind += f"; CPU s {used}" if used else ""
                console.print(
                    f"  {system} run {number + 1}: {run.rate:,.0f} events/s launch to last result "
                    f"(start-up {run.startup:.1f} s, {run.steady:,.0f}/s after it{behind}), "
                    f"peak RSS {run.peak_rss_mb:,.0f} MB, "
                    f"counts {'agree' if agree else 'DIFFER'}",
                    highlight=False,
                )
                if not agree:
                    raise SystemExit(f"{system} on {shape}: counts differ from the generated events")
                runs.append(run)
            summary[shape][system] = median_run(runs)
        comparisons = []  # cxpulse with a default off: what each costs
        if args.journeys_off:
            comparisons.append(("cxpulse, journeys off", {"journeys": False, "clickhouse": True}))
        if args.store_off:
            comparisons.append(("cxpulse, no store", {"clickhouse": False}))
        for name, options in comparisons if "cxpulse" in systems else []:
            runs = []
            for number in range(args.runs):
                run = run_cxpulse(bootstrap, topic, args.events, workdir, **options)
                console.print(
                    f"  {name}, run {number + 1}: {run.rate:,.0f} events/s launch to last result, "
                    f"{run.end_rate:,.0f} to the end (start-up {run.startup:.1f} s)",
                    highlight=False,
                )
                runs.append(run)
            off = summary[shape][name] = median_run(runs)
            on = summary[shape]["cxpulse"]
            console.print(
                f"  defaults: {on.end_rate:,.0f} events/s to the end, {name}: {off.end_rate:,.0f} "
                f"({100 * (on.end_rate / off.end_rate - 1):+.1f}% with it on)",
                highlight=False,
            )
        if args.scaling and "cxpulse" in systems and shape == "backlog":
            two = median_run(
                [
                    run_cxpulse(bootstrap, topic, args.events, workdir, slots=2, clickhouse=True)
                    for _ in range(args.runs)
                ]
            )
            summary[shape]["cxpulse, 2 hot-path processes"] = two
    print_summary(summary)
    steady_reports(bootstrap, workdir, systems, args)


def steady_reports(bootstrap: str, workdir: Path, systems: list[str], args: argparse.Namespace) -> None:
    """cxpulse alone under a steady load: latency, the ClickHouse sink's lag, RSS over a soak."""
    templates = [record for record in realistic_events(1000, seed=5, invalid_share=0.0, duplicate_share=0.0)]
    if args.latency_seconds > 0 and "cxpulse" in systems:
        gauge: list[tuple[float, float]] = []
        latencies, _, sent = steady_run(
            bootstrap, workdir, args.rate, args.latency_seconds, templates, gauge=gauge,
            customers=args.steady_customers,
        )  # fmt: skip
        console.print(
            f"latency at {args.rate:,} events/s for {args.latency_seconds:.0f} s ({steady_customers(args)}; "
            f"{sent:,} sent, {len(latencies):,} counted): event to result p50 "
            f"{percentile(latencies, 0.5) * 1000:,.0f} ms, p99 {percentile(latencies, 0.99) * 1000:,.0f} ms, "
            f"max {max(latencies) * 1000:,.0f} ms; "
            f"event to gauge (cxpulse_event_to_gauge_seconds, {gauge[-1][1] if gauge else 0:,.0f} pane results, "
            f"estimated within its buckets as histogram_quantile does) p50 {bucket_quantile(0.5, gauge) * 1000:,.0f} "
            f"ms, p99 {bucket_quantile(0.99, gauge) * 1000:,.0f} ms",
            highlight=False,
        )
    if args.store_lag_seconds > 0 and "cxpulse" in systems:
        lags: list[float] = []
        journeys_after: list[float] = []
        _, _, sent = steady_run(
            bootstrap, workdir, args.rate, args.store_lag_seconds, templates, store_lags=lags,
            customers=args.steady_customers, journeys=args.steady_journeys, journeys_after=journeys_after,
        )  # fmt: skip
        sixth = max(1, len(lags) // 6)
        console.print(
            f"ClickHouse at {args.rate:,} events/s for {args.store_lag_seconds:.0f} s (journeys "
            f"{'on' if args.steady_journeys else 'off'}, {steady_customers(args)}; {sent:,} sent, {len(lags):,} "
            "stored): every answer in "
            f"ClickHouse after its pane result p50 {percentile(lags, 0.5):.2f} s, p99 {percentile(lags, 0.99):.2f} s, "
            f"max {max(lags):.2f} s; p99 by sixth of the run: "
            + ", ".join(f"{percentile(lags[at : at + sixth], 0.99):.2f}" for at in range(0, sixth * 6, sixth))
            + (
                f"; the journeys had handled every answer {journeys_after[0]:.1f} s after the last was sent"
                if journeys_after
                else ""
            ),
            highlight=False,
        )
    if args.quiet_seconds > 0 and "cxpulse" in systems:
        shares, memory, mean_mb, peak_mb, sent = quiet_run(
            bootstrap, workdir, args.quiet_rate, QUIET_WARM_UP_SECONDS, args.quiet_seconds, templates, args.quiet_load
        )
        console.print(
            f"quiet: at {args.quiet_rate:,} events/s ({args.quiet_load}) with every default on (journeys, embedded "
            "store), after "
            f"{QUIET_WARM_UP_SECONDS:.0f} s, over {args.quiet_seconds:.0f} s ({sent:,} sent): the worker used "
            f"{sum(shares.values()):.1f}% of a core ("
            + ", ".join(f"{name} {share:.1f}%" for name, share in sorted(shares.items(), key=lambda kv: -kv[1]))
            + f"), RSS mean {mean_mb:,.0f} MB, largest {peak_mb:,.0f} MB",
            highlight=False,
        )
        total = {field: sum(m.get(field, 0.0) for m in memory.values()) for field in MEMORY_FIELDS}
        console.print(
            "quiet: memory at the end, MB ("
            + " / ".join(MEMORY_FIELDS)
            + "; PSS shares each shared page among the processes that map it, anon is what they allocated, file is "
            "mapped files such as shared libraries' code): the worker "
            + " / ".join(f"{total[f]:,.0f}" for f in MEMORY_FIELDS)
            + "; "
            + ", ".join(
                f"{name} " + " / ".join(f"{m.get(f, 0.0):,.0f}" for f in MEMORY_FIELDS)
                for name, m in sorted(memory.items(), key=lambda kv: -kv[1].get("Rss", 0.0))
            ),
            highlight=False,
        )
    if args.soak_seconds > 0 and "cxpulse" in systems:
        _, rss, sent = steady_run(
            bootstrap, workdir, args.rate, args.soak_seconds, templates, customers=args.steady_customers,
            retention_seconds=300, windows_seconds=(300,),
        )  # fmt: skip
        third = [mb for t, mb in rss if t >= args.soak_seconds * 2 / 3]
        console.print(
            f"RSS over {args.soak_seconds:.0f} s at {args.rate:,} events/s (retention 5 min, {sent:,} sent): "
            + ", ".join(f"{t:.0f}s {mb:.0f} MB" for t, mb in rss[:: max(1, len(rss) // 12)])
            + (f"; growth over the last third {100 * (max(third) / third[0] - 1):.1f}%" if third else ""),
            highlight=False,
        )


HEADLINE = "cxpulse (defaults: journeys, store)"


def print_summary(summary: dict[str, dict[str, Run]]) -> None:
    """A table per shape: the headline is cxpulse as a user runs it (every default on), to the end of its
    pipeline (the last pane result, journeys, every answer in the store); the other rows compare."""
    for shape, runs in summary.items():
        table = Table(title=f"{shape}: median runs", title_justify="left")
        for column in ("system", "events/s to the end (journeys, store)", "x bare", "to the last pane result",
                       "start-up s", "peak RSS MB"):  # fmt: skip
            table.add_column(column, justify="right" if column != "system" else "left")
        bare = runs.get("bare")
        for name, run in runs.items():
            ratio = f"{bare.rate / run.end_rate:.2f}" if bare is not None else "-"
            table.add_row(
                HEADLINE if name == "cxpulse" else name, f"{run.end_rate:,.0f}", ratio, f"{run.rate:,.0f}",
                f"{run.startup:.1f}", f"{run.peak_rss_mb:,.0f}" if run.peak_rss_mb else "-",
            )  # fmt: skip
        console.print(table)


if __name__ == "__main__":
    main()
