"""faust-streaming + aiokafka against the pinned Kafka (4.x removed old protocol versions, KIP-896; see
aio-libs/aiokafka#1085): a real Faust worker joins a group, consumes, and writes a changelog-backed table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from streams.kafka import producer
from tests.support import RunningBroker, pump_lines, stop_process

APP = Path(__file__).with_name("faust_smoke_app.py")
WAIT_SECONDS = 120.0
COUNT = re.compile(r"COUNT (?P<count>\d+) (?P<value>\S+)")


def test_faust_worker_consumes_and_keeps_a_table(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory(partitions=2)
    env = {
        **os.environ,
        "CXPULSE_SMOKE_BROKER": kafka_broker.bootstrap,
        "CXPULSE_SMOKE_TOPIC": topic,
        "CXPULSE_SMOKE_APP": f"smoke-{uuid.uuid4().hex[:8]}",
        "CXPULSE_SMOKE_DATADIR": str(tmp_path),
    }
    worker = subprocess.Popen(
        [sys.executable, str(APP), "worker", "--loglevel", "warn", "--without-web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines, output = pump_lines(worker)
    sent = [f"m{i}" for i in range(20)]
    out = producer(kafka_broker.bootstrap)
    for value in sent:
        out.produce(topic, value.encode(), key=value.encode())
    assert out.flush(30) == 0
    seen: list[str] = []
    try:
        while len(seen) < len(sent):
            line = lines.get(timeout=WAIT_SECONDS)
            assert line is not None, f"the Faust worker exited: {''.join(output)[-3000:]}"
            match = COUNT.search(line)  # Faust redirects print() into its log lines
            if match:
                seen.append(match["value"])
        assert sorted(seen) == sorted(sent)
        assert f"COUNT {len(sent)} " in "".join(output)  # the table counted every message once
    finally:
        stop_process(worker)
