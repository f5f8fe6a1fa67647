"""Helpers shared by the tests: free ports, a started `cxpulse broker` subprocess, event builders."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from streams.core.validate import Feedback

READY = re.compile(r"ready on (?P<bootstrap>\S+) in (?P<seconds>[\d.]+) s \(java pid (?P<pid>\d+)")
BROKER_START_TIMEOUT = 120.0  # seconds; includes resolving the jars on a fresh machine


def first_time(marker: str) -> bool:
    """True once per test: the first process that gets here creates the marker file (fault injectors fire in
    the first incarnation of a process only)."""
    if not marker:
        return False
    try:
        Path(marker).open("x").close()
    except FileExistsError:
        return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports that were free on 127.0.0.1 a moment ago (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class RunningBroker:
    """A `cxpulse broker` process that printed its ready line."""

    proc: subprocess.Popen[str]
    bootstrap: str
    java_pid: int
    ready_seconds: float
    output: list[str]

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM a child process, SIGKILL it if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cxpulse_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


def pump_lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str | None], list[str]]:
    """Read a child's stdout on a thread: each line goes to the queue (None at EOF) and to the list."""
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines, output


def start_broker(data_dir: Path, *, new_session: bool = False) -> RunningBroker:
    """Start `cxpulse broker` on free ports and block until it prints that it is ready."""
    port, controller = free_ports(2)
    proc = subprocess.Popen(
        cxpulse_command(
            "broker",
            "--port",
            str(port),
            "--controller-port",
            str(controller),
            "--data-dir",
            str(data_dir),
            "--heap",
            "384m",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
        env={**os.environ, "COLUMNS": "250"},
    )
    lines, output = pump_lines(proc)
    while True:
        try:
            line = lines.get(timeout=BROKER_START_TIMEOUT)
        except queue.Empty:
            proc.kill()
            raise RuntimeError(f"broker not ready after {BROKER_START_TIMEOUT} s: {''.join(output)}") from None
        if line is None:
            raise RuntimeError(f"`cxpulse broker` exited with {proc.wait()}: {''.join(output)}")
        match = READY.search(line)
        if match:
            return RunningBroker(proc, match["bootstrap"], int(match["pid"]), float(match["seconds"]), output)


def event(**overrides: Any) -> dict[str, Any]:
    """A valid FeedbackEvent (JSON form), with overrides."""
    base: dict[str, Any] = {
        "event_id": "e-1",
        "occurred_at": 1_700_000_000_000,
        "source": "genesys",
        "channel": "phone",
        "journey": "billing",
        "metric": "CES",
        "score": 5,
    }
    base.update(overrides)
    return base


class Webhook:
    """A webhook receiver (Alertmanager, follow-ups) on a free loopback port: JSON posts land in ``posts``."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        """``statuses``: the answers to the first posts, in order (then 200)."""
        self.posts: queue.Queue[dict[str, Any]] = queue.Queue()
        self.headers: list[dict[str, str]] = []
        posts, answers, seen = self.posts, list(statuses or []), self.headers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = answers.pop(0) if answers else 200
                seen.append(dict(self.headers))
                if status == 200:
                    posts.put({"path": self.path, **json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.posts.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- builders of the pure core's tests ------------------------------------------------------------------------


def fb(
    metric: str,
    score: int,
    lo: int,
    hi: int,
    *,
    t: int = 0,
    channel: str = "phone",
    journey: str = "billing",
    event_id: str = "e",
) -> Feedback:
    return Feedback(event_id, t, "src", channel, journey, metric, score, lo, hi, None, None, ())


SCALES = {
    "NPS": [(0, 10)],
    "NLS": [(0, 10)],
    "CES": [(1, 7), (1, 5), (1, 10), (0, 13)],
    "CSAT": [(1, 5), (1, 7), (0, 100)],
    "CAS": [(1, 5), (1, 10)],
}


@st.composite
def feedbacks(draw: st.DrawFn) -> Feedback:
    metric = draw(st.sampled_from(sorted(SCALES)))
    lo, hi = draw(st.sampled_from(SCALES[metric]))
    return fb(
        metric,
        draw(st.integers(lo, hi)),
        lo,
        hi,
        t=draw(st.integers(0, 10 * 60_000)),
        channel=draw(st.sampled_from(["phone", "chat"])),
        journey=draw(st.sampled_from(["billing", "claims"])),
    )


# answers of customers over hours, for the journeys' tests: a start, an hour, the journey gap G
T = 1_800_000_000_000
H = 3_600_000
G = 72 * H
JOURNEY_SCALES = {"NPS": (0, 10), "NLS": (0, 10), "CES": (1, 7), "CSAT": (1, 5), "CAS": (1, 5)}


def generated(seed: int, count: int = 600) -> list[dict[str, Any]]:
    """Customers with several answers a journey, consecutive answers G - 1 ms, G or G + 1 ms apart as often as
    close together; duplicates, invalid answers, answers without customer or interaction ids, late answers."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    n = 0
    for customer in range(count // 6):
        at = T + rng.randrange(10 * H)
        for _ in range(rng.randint(1, 8)):
            at += rng.choice([G - 1, G, G + 1, rng.randrange(1, 5 * H), 0])
            metric = rng.choice(list(JOURNEY_SCALES))
            lo, hi = JOURNEY_SCALES[metric]
            n += 1
            item = event(
                event_id=f"e{n}",
                occurred_at=at,
                channel=rng.choice(["phone", "chat", "email", "Web "]),
                journey=rng.choice(["billing", "support"]),
                metric=metric,
                score=rng.randint(lo, hi),
                touchpoint=rng.choice([None, "ivr", "agent_call", "faq", " "]),
                customer_id=rng.choice([f"c{customer}"] * 8 + [None, "", "  "]),
                interaction_id=rng.choice([None, "", f"i{customer}-{rng.randrange(3)}", f"i{n}"]),
            )
            events.append(item)
            if rng.random() < 0.05:
                events.append(dict(item, score=lo))  # a duplicate: the first one counts
            if rng.random() < 0.03:
                events.append(dict(item, event_id=f"bad{n}", metric="XYZ"))  # invalid: never counted
    rng.shuffle(events)  # late answers: arrival order is not event order
    return events


def theme_records(found: subprocess.CompletedProcess[str] | str) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """Theme results (JSON lines of `report ... --by channel,journey,theme` or `replay --themes`): the counters of
    each (pane, channel, journey, metric, theme)."""
    if not isinstance(found, str):
        assert found.returncode == 0, found.stderr
        found = found.stdout
    fields = ("n", "promoters", "passives", "detractors", "positive", "high_effort")
    records = [json.loads(line) for line in found.splitlines()]
    return {
        (r["window_start"], r["channel"], r["journey"], r["metric"], r["theme"]): tuple(r[f] for f in fields)
        for r in records
    }
