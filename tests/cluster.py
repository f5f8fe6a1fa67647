"""Kafka brokers that a test owns: one node or a KRaft cluster of several, started from the resolved jars on free
loopback ports, killed (SIGKILL), stopped (SIGTERM) and started again on their data, the way operators and
crashes do it.  The session's shared broker (tests/conftest.py) is never touched by these."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer

from streams import broker
from streams.config import Settings
from streams.kafka import admin_client
from tests.support import free_ports

READY_SECONDS = 90.0
IN_SYNC_SECONDS = 120.0


@dataclass
class Node:
    spec: broker.BrokerSpec
    proc: subprocess.Popen[bytes] | None = None


# A split cluster's controller fences a broker that stopped heartbeating after this long (Kafka's default: 9 s), and
# the broker heartbeats this often (default 2 s): shorter than the briefest outage plus a JVM start in the tests.
SESSION_TIMEOUT_MS = 3000
HEARTBEAT_MS = 500


@dataclass
class LocalCluster:
    """``size`` combined KRaft nodes (broker + controller each) with one cluster id; or, with
    ``dedicated_controller``, ``size`` broker-only nodes beside one controller-only node that the tests never stop.

    A broker restart in a split cluster is what production sees (dedicated controllers are Kafka's advice for
    production).  A lone combined node that restarts is a different thing: its controller replays the old broker
    registration as alive, the node leads its partitions from that replayed metadata and its transaction
    coordinator starts sending markers, then the controller refuses the new registration
    (DUPLICATE_BROKER_REGISTRATION) until the old session times out and fences the broker: every partition is
    leaderless for a moment, and the coordinator skips the markers of those partitions ("likely deleted already")
    and completes the transaction anyway, leaving a hanging transaction on them (seen in our broker logs with
    Kafka 4.3.1; docs/production.md).  The single-broker fault tests run split so that they test cxpulse, not
    that."""

    root: Path
    size: int = 1
    heap: str = "320m"
    listeners: tuple[broker.Listener, ...] = ()  # per-node extra listeners are not needed: one node with them
    extra: tuple[tuple[str, str], ...] = ()
    dedicated_controller: bool = False
    nodes: list[Node] = field(default_factory=list)
    controller: Node | None = None

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size + (2 if self.dedicated_controller else 0))
        lib = broker.ensure_jars(Settings().kafka_lib_dir)
        cluster_id = broker.new_cluster_id()
        replicas = min(3, self.size)
        extra = self.extra
        if self.dedicated_controller:
            voters = f"{self.size + 1}@127.0.0.1:{ports[-1]}"
            extra += (("broker.session.timeout.ms", str(SESSION_TIMEOUT_MS)),)
            extra += (("broker.heartbeat.interval.ms", str(HEARTBEAT_MS)),)
            spec = broker.BrokerSpec(
                ports[-2], ports[-1], self.root / "controller", lib, heap="256m", node_id=self.size + 1,
                voters=voters, replicas=replicas, min_isr=max(1, replicas - 1), extra=extra, cluster_id=cluster_id,
                roles="controller",
            )  # fmt: skip
            self.controller = Node(spec)
        else:
            voters = ",".join(f"{i + 1}@127.0.0.1:{ports[2 * i + 1]}" for i in range(self.size))
        for i in range(self.size):
            spec = broker.BrokerSpec(
                ports[2 * i],
                ports[2 * i + 1],
                self.root / f"node-{i + 1}",
                lib,
                heap=self.heap,
                node_id=i + 1,
                voters=voters,
                replicas=replicas,
                min_isr=max(1, replicas - 1),
                listeners=self.listeners,
                extra=extra,
                cluster_id=cluster_id,
                roles="broker" if self.dedicated_controller else "broker,controller",
            )
            self.nodes.append(Node(spec))

    @property
    def bootstrap(self) -> str:
        return ",".join(node.spec.bootstrap for node in self.nodes)

    def start(self, which: Iterable[int] | None = None) -> None:
        """Start nodes (all by default) and wait until each answers."""
        indices = list(range(self.size)) if which is None else list(which)
        if self.controller is not None and self.controller.proc is None:  # the brokers wait for it to register
            self.controller.spec.kafka_dir.mkdir(parents=True, exist_ok=True)
            self.controller.proc = broker.start(self.controller.spec)
        for i in indices:
            node = self.nodes[i]
            node.spec.kafka_dir.mkdir(parents=True, exist_ok=True)
            node.proc = broker.start(node.spec)
        for i in indices:
            node = self.nodes[i]
            assert node.proc is not None
            broker.wait_ready(node.spec, node.proc, READY_SECONDS)

    def kill(self, i: int) -> None:
        """SIGKILL a node's JVM (a crash: nothing flushed, no controlled shutdown)."""
        proc = self.nodes[i].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, i: int) -> None:
        """SIGTERM a node (a controlled shutdown, as a rolling upgrade does) and wait for it to exit."""
        proc = self.nodes[i].proc
        assert proc is not None
        broker.stop(proc, timeout=60)

    def stop_all(self) -> None:
        for node in [*self.nodes, *([self.controller] if self.controller is not None else [])]:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGKILL)
                node.proc.wait()

    def wait_in_sync(self, timeout: float = IN_SYNC_SECONDS) -> None:
        """Until every partition of every topic has all its replicas in sync (a rolling restart waits for it
        before the next node goes down)."""
        admin = admin_client(self.bootstrap)
        deadline = time.monotonic() + timeout
        while True:
            try:
                topics = admin.list_topics(timeout=5).topics
                lagging = [
                    (name, p)
                    for name, meta in topics.items()
                    for p, part in meta.partitions.items()
                    if len(part.isrs) < len(part.replicas)
                ]
                if not lagging:
                    return
            except KafkaException:
                lagging = [("metadata", -1)]
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas not in sync after {timeout} s: {lagging[:5]}")
            time.sleep(0.5)  # polling the cluster's metadata: it has no push

    def with_listeners(self, listeners: tuple[broker.Listener, ...]) -> None:
        for node in self.nodes:
            node.spec = replace(node.spec, listeners=listeners)


class Feeder:
    """Sends pre-encoded messages at a steady rate on a thread, through broker outages (librdkafka retries; the
    idempotent producer never duplicates), and reports what could not be delivered."""

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]], rate: float) -> None:
        self.topic = topic
        self.messages = messages
        self.rate = rate
        self.failed: list[str] = []
        self.sent = 0
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "message.timeout.ms": 300_000,
                "log_level": 0,
            }
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Feeder:
        self.thread.start()
        return self

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failed.append(error.str())

    def _run(self) -> None:
        started = time.monotonic()
        for i, (key, value) in enumerate(self.messages):
            due = started + i / self.rate
            while (wait := due - time.monotonic()) > 0:
                self.producer.poll(wait)
            while True:
                try:
                    self.producer.produce(self.topic, value, key, on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.sent += 1
        self.producer.flush(300)

    def join(self, timeout: float) -> None:
        """Wait until every message is sent and delivered; fail on any delivery error."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"feeder still sending after {timeout} s ({self.sent} sent)"
        assert self.producer.flush(60) == 0, "messages still undelivered"
        assert not self.failed, self.failed[:5]

    @property
    def seconds(self) -> float:
        return len(self.messages) / self.rate


def kill_on_exit(cluster: LocalCluster) -> None:
    """Registered by the fixtures: no broker outlives its test, whatever happened."""
    cluster.stop_all()


def environ(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}
