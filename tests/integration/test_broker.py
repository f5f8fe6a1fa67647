"""The local broker: `cxpulse broker` starts a real Kafka, leaves no orphan JVM, and `cxpulse demo` comes up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from streams import broker
from streams.broker import pid_alive
from streams.config import Settings
from streams.kafka import admin_client
from tests.support import RunningBroker, cxpulse_command, free_ports, start_broker

ORPHAN_DEADLINE_SECONDS = 30.0


def test_session_broker_answers_metadata(kafka_broker: RunningBroker) -> None:
    metadata = admin_client(kafka_broker.bootstrap).list_topics(timeout=10)
    assert [b.port for b in metadata.brokers.values()] == [int(kafka_broker.bootstrap.rsplit(":", 1)[1])]
    assert pid_alive(kafka_broker.java_pid)


def _wait_gone(pid: int, deadline_seconds: float) -> bool:
    """Wait for a process to disappear; the kernel's death signal makes the JVM shut down on its own."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)  # polling a PID that is not our child: there is no event to await
    return False


def test_kill_9_of_the_parent_leaves_no_orphan_java(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, new_session=True)
    assert pid_alive(broker.java_pid)
    os.kill(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait()
    gone = _wait_gone(broker.java_pid, ORPHAN_DEADLINE_SECONDS)
    if not gone:
        os.kill(broker.java_pid, signal.SIGKILL)
    assert gone, "the broker's JVM outlived its killed parent"


def test_sigterm_stops_broker_and_jvm(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    broker.stop()
    assert broker.proc.returncode == 0
    assert _wait_gone(broker.java_pid, ORPHAN_DEADLINE_SECONDS)


def test_restart_reuses_formatted_storage(tmp_path: Path) -> None:
    first = start_broker(tmp_path)
    first.stop()
    second = start_broker(tmp_path)  # would fail if it formatted again over existing data
    try:
        assert pid_alive(second.java_pid)
    finally:
        second.stop()


def test_port_in_use_is_a_clear_error(kafka_broker: RunningBroker, tmp_path: Path) -> None:
    port = kafka_broker.bootstrap.rsplit(":", 1)[1]
    done = subprocess.run(
        cxpulse_command("broker", "--port", port, "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"--port {port}: the port is in use" in done.stderr


def test_demo_starts_broker_topics_and_a_ready_worker(tmp_path: Path) -> None:
    port, controller, metrics_port = free_ports(3)  # the controller's too: port + 1 was taken once (CI, 2026-12-02)
    done = subprocess.run(
        cxpulse_command(
            "demo",
            "--port",
            str(port),
            "--controller-port",
            str(controller),
            "--data-dir",
            str(tmp_path),
            "--until-ready",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "COLUMNS": "250", "CXPULSE_METRICS_PORT": str(metrics_port)},
    )
    assert done.returncode == 0, done.stderr
    expected = [f"127.0.0.1:{port}", "cx.feedback", "cx.feedback.dlq", "cx.metrics.panes", "cx.alerts"]
    expected += ["stream worker", f"http://127.0.0.1:{metrics_port}/metrics", "ready in"]
    for text in expected:
        assert text in done.stdout, done.stdout


def test_format_accepts_a_cluster_id_that_starts_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "new_cluster_id", lambda: "-AAAAAAAAAAAAAAAAAAAAA")
    port, controller = free_ports(2)
    spec = broker.BrokerSpec(port, controller, tmp_path, broker.ensure_jars(Settings().kafka_lib_dir))
    assert broker.format_storage(spec, broker.write_server_properties(spec)) is True
    assert "cluster.id=-AAAAAAAAAAAAAAAAAAAAA" in (tmp_path / "kafka" / "logs" / "meta.properties").read_text()
    assert broker.format_storage(spec, broker.write_server_properties(spec)) is False  # formatted once only
