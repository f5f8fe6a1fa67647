"""`cxpulse demo --duration 90`, as the README runs it but not on a terminal: it exits 0, leaves no process
behind, the store holds results for every simulated channel and journey, and the injected incident fired its
alert, naming the touchpoint the simulator broke."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from streams.demo import SIMULATION
from streams.simulate import CHANNELS
from tests.support import cxpulse_command, free_ports


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_the_demo_shows_the_loop_and_cleans_up(tmp_path: Path) -> None:
    port, controller, metrics_port = free_ports(3)
    data = tmp_path / "demo"
    env = {**os.environ, "CXPULSE_METRICS_PORT": str(metrics_port), "CXPULSE_DATA_DIR": str(data)}
    done = subprocess.run(
        cxpulse_command(
            "demo",
            "--port",
            str(port),
            "--controller-port",
            str(controller),
            "--data-dir",
            str(data),
            "--duration",
            "90",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not processes_mentioning(str(data)), "a process of the demo is still running"
    firing = [line for line in done.stdout.splitlines() if line.startswith("effort spike FIRING chat/billing")]
    assert firing and "touchpoint bot" in firing[0], done.stdout[-3000:]
    assert "segments" in done.stdout and "cxpulse report" in done.stdout  # progress lines and what to do next
    report = subprocess.run(
        cxpulse_command("report", "--window", "24h", "--format", "jsonl"),
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    segments = {(r["channel"], r["journey"]) for r in map(json.loads, report.stdout.splitlines())}
    journeys = SIMULATION[SIMULATION.index("--journeys") + 1].split(",")
    assert segments == {(c, j) for c in CHANNELS for j in journeys}
