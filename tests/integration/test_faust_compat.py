"""faust-streaming + aiokafka against the pinned Kafka (4.x removed old protocol versions, KIP-896; see
aio-libs/aiokafka#1085), with what cxpulse changes of Faust (streams/agents/faust_compat.py): a real Faust worker
joins a group, reads committed records only, and keeps a table whose changelog librdkafka writes."""

from __future__ import annotations

import os
import re
import shutil
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
PACED = re.compile(r"PACED (?P<settled>True|False) (?P<wait>\S+)")


def test_faust_reads_committed_records_only_and_recovers_a_table_written_through_librdkafka(
    kafka_broker: RunningBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """streams/agents/faust_compat.py for real: an aborted transaction's records never reach the agent (the
    hot path's aborted partials stay invisible to merge), and a KeyPartitionedTable whose changelog librdkafka
    wrote is recovered by Faust after its local state is wiped."""
    topic = topic_factory(partitions=2)
    env = {
        **os.environ,
        "CXPULSE_SMOKE_BROKER": kafka_broker.bootstrap,
        "CXPULSE_SMOKE_TOPIC": topic,
        "CXPULSE_SMOKE_APP": f"smoke-{uuid.uuid4().hex[:8]}",
        "CXPULSE_SMOKE_DATADIR": str(tmp_path / "state"),
    }
    sender = producer(kafka_broker.bootstrap, **{"transactional.id": f"smoke-{uuid.uuid4().hex[:8]}"})
    sender.init_transactions(30)
    for values, commit in ((["m0", "m1", "m2"], True), (["aborted0", "aborted1"], False), (["m3", "m4"], True)):
        sender.begin_transaction()
        for value in values:
            sender.produce(topic, value.encode(), key=value.encode())
        if commit:
            sender.commit_transaction(30)
        else:
            sender.flush(30)  # on the broker, then aborted
            sender.abort_transaction(30)
    paced: list[tuple[str, str]] = []
    seen = run_until(env, tmp_path, 5, paced=paced)
    assert sorted(seen) == ["m0", "m1", "m2", "m3", "m4"]  # nothing of the aborted transaction
    # fetches wait 100 ms at the broker while the table recovers, 500 ms once settled (faust_compat.pace_fetches)
    assert ("True", "500") in paced, paced
    assert set(paced) <= {("False", "None"), ("False", "100"), ("True", "500")}, paced
    shutil.rmtree(tmp_path / "state")  # the table comes back from its changelog alone
    sender.begin_transaction()
    sender.produce(topic, b"m5", key=b"m5")
    sender.commit_transaction(30)
    assert run_until(env, tmp_path, 1, count=6) == ["m5"]


def run_until(
    env: dict[str, str],
    tmp_path: Path,
    messages: int,
    count: int | None = None,
    paced: list[tuple[str, str]] | None = None,
) -> list[str]:
    """Run the smoke worker until it counted ``messages`` (the last with table count ``count``); the values.  With
    ``paced``, until it also said it is settled, and the (settled, fetch wait) pairs it said go there."""
    worker = subprocess.Popen(
        [sys.executable, str(APP), "worker", "--loglevel", "warn", "--without-web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines, output = pump_lines(worker)
    seen: list[str] = []
    try:
        while len(seen) < messages or (paced is not None and ("True", "500") not in paced):
            line = lines.get(timeout=WAIT_SECONDS)
            assert line is not None, f"the Faust worker exited: {''.join(output)[-3000:]}"
            match = COUNT.search(line)  # Faust redirects print() into its log lines
            if match:
                seen.append(match["value"])
                last = int(match["count"])
            pace = PACED.search(line)
            if pace and paced is not None:
                paced.append((pace["settled"], pace["wait"]))
        assert count is None or last == count, "".join(output)[-3000:]
        return seen
    finally:
        stop_process(worker)
