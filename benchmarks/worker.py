"""Worker throughput benchmark: one `cxpulse worker` process draining a pre-loaded feedback topic.

Starts a local broker (or uses --bootstrap), loads N realistic events (streams.synth: ~2% invalid, ~1%
duplicates; occurred_at spread over the last --spread seconds, default 600: a live stream's backlog, where a
batch touches few panes) into a fresh feedback topic, then starts one worker and
reads its own /metrics endpoint every 0.25 s until
  1. ingest has processed every feedback record (decode, validate, dedup, pane partials), and
  2. merge has processed every partial the ingest agent sent (merged WindowResults out).
Prints events/s for both, measured from the first record the worker processed (start-up and recovery excluded,
they are printed separately).  Usage:

    .venv/bin/python -m benchmarks.worker [--events 200000] [--partitions 3] [--spread 600] [--bootstrap HOST:PORT]

(run from the repository root: it borrows the broker helper of tests/support.py)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import fastavro

from schemas.codec import FEEDBACK_RAW, LocalCatalog
from streams.broker import die_with_parent
from streams.config import Settings
from streams.kafka import consumer
from streams.produce import produce_file
from streams.synth import realistic_events
from streams.topics import ensure_topics, topic_specs
from tests.support import free_ports, start_broker, stop_process

POLL_SECONDS = 0.25
SOURCE_PANES_KEYS = 'cxpulse_worker_state_keys{table="source-panes"}'


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return {}
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    }


def topic_size(bootstrap: str, topic: str, partitions: int) -> int:
    from confluent_kafka import TopicPartition

    client = consumer(bootstrap, f"bench-{uuid.uuid4().hex}")
    try:
        return sum(client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions))
    finally:
        client.close()


def run(bootstrap: str, events: int, partitions: int, spread: int, workdir: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    port = free_ports(1)[0]
    values = {
        "kafka_bootstrap": bootstrap,
        "app_id": f"bench-{tag}",
        "feedback_topic": f"bench-{tag}-feedback",
        "dlq_topic": f"bench-{tag}-dlq",
        "results_topic": f"bench-{tag}-panes",
        "alerts_topic": f"bench-{tag}-alerts",
        "partitions": partitions,
        "data_dir": workdir / "state",
        "metrics_port": port,
    }
    settings = Settings(**values)
    ensure_topics(bootstrap, topic_specs(settings))
    path = workdir / "events.avro"
    start_ms = int(time.time() * 1000) - spread * 1000
    with path.open("wb") as out:
        records = realistic_events(events, seed=3, start_ms=start_ms, per_second=events / spread)
        fastavro.writer(out, fastavro.parse_schema(FEEDBACK_RAW), records, codec="null")
    started = time.perf_counter()
    produce_file(path, bootstrap, settings.feedback_topic, LocalCatalog())
    print(
        f"loaded {events:,} events into {settings.feedback_topic} ({partitions} partitions) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    env = {**os.environ, **{f"CXPULSE_{k.upper()}": str(v) for k, v in values.items()}}
    log = (workdir / "worker.log").open("wb")
    launched = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl; no orphan worker if the benchmark is killed
    )
    fed = f'cxpulse_worker_records_total{{topic="{settings.feedback_topic}"}}'
    merged = f'cxpulse_worker_records_total{{topic="{settings.app_id}-partials"}}'
    first = ingested = done = None
    partials = None
    final: dict[str, float] = {}
    try:
        while done is None:
            if worker.poll() is not None:
                raise SystemExit(f"worker exited with {worker.returncode}; see {workdir / 'worker.log'}")
            sample = scrape(port)
            now = time.perf_counter()
            if first is None and sample.get(fed, 0) > 0:
                first = now
            if ingested is None and sample.get(fed, 0) >= events:
                ingested = now
                partials = topic_size(bootstrap, f"{settings.app_id}-partials", partitions)
            if ingested is not None and partials is not None and sample.get(merged, 0) >= partials:
                done = now
                final = sample
            time.sleep(POLL_SECONDS)
    finally:
        stop_process(worker)
        log.close()
    assert first is not None and ingested is not None and partials is not None
    print(f"worker start-up (launch to first record processed): {first - launched:.1f} s")
    print(f"ingest: {events:,} events in {ingested - first:.1f} s = {events / (ingested - first):,.0f} events/s")
    print(
        f"end to end (every partial merged, {partials:,} partials): {done - first:.1f} s = "
        f"{events / (done - first):,.0f} events/s"
    )
    dead = sum(v for k, v in final.items() if k.startswith("cxpulse_worker_dead_letters_total"))
    print(
        f"dead letters {dead:,.0f}, duplicates {final.get('cxpulse_worker_duplicates_total', 0):,.0f}, "
        f"state keys {final.get(SOURCE_PANES_KEYS, 0):,.0f} source-panes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--spread", type=int, default=600, help="seconds of event time the events cover")
    parser.add_argument("--bootstrap", help="an existing broker; default: start one on free ports")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = None if args.bootstrap else start_broker(workdir / "broker")
        try:
            run(args.bootstrap or broker.bootstrap, args.events, args.partitions, args.spread, workdir)  # type: ignore[union-attr]
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
