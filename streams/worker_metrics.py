"""The worker's own Prometheus metrics: what it processed, rejected, repaired and how much state it holds.

Served on ``CXPULSE_METRICS_PORT`` by ``cxpulse worker`` (0 turns the endpoint off).  One registry per worker
object, so tests can build several apps in one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from prometheus_client import CollectorRegistry, Counter, Gauge


class WorkerMetrics:
    """Counters and gauges of one worker."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter(
            "cxpulse_worker_records", "Input records processed, by input topic", ["topic"], registry=self.registry
        )
        self.dead_letters = Counter(
            "cxpulse_worker_dead_letters",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "cxpulse_worker_duplicates", "Later copies of an answer already counted", registry=self.registry
        )
        self.batch_errors = Counter(
            "cxpulse_worker_batch_errors",
            "Partition batches whose processing failed (logged; their offsets are processed again)",
            ["topic"],
            registry=self.registry,
        )
        self.late_events = Counter(
            "cxpulse_worker_late_events",
            "Valid events counted in a pane that had already closed on the processing clock (METRICS.md section 5)",
            registry=self.registry,
        )
        self.gap_records = Counter(
            "cxpulse_worker_gap_records",
            "Records the Kafka consumer skipped and the worker read back (see streams/gaps.py)",
            registry=self.registry,
        )
        self.expired = Counter(
            "cxpulse_worker_expired_keys",
            "State keys dropped after the retention, by table",
            ["table"],
            registry=self.registry,
        )
        self.state_keys = Gauge(
            "cxpulse_worker_state_keys",
            "Keys held in each state table (this worker's partitions)",
            ["table"],
            registry=self.registry,
        )

        self.remembered_ids = Gauge(
            "cxpulse_worker_remembered_ids",
            "Event ids remembered for de-duplication (this worker's partitions; they expire with the retention)",
            registry=self.registry,
        )
        self.ready = Gauge(
            "cxpulse_worker_ready",
            "1 once the worker holds partitions and its tables are recovered, 0 while it starts or rebalances",
            registry=self.registry,
        )

    def watch(self, tables: Mapping[str, Sized]) -> None:
        """Report the size of each table at scrape time."""
        for name, table in tables.items():
            self.state_keys.labels(name).set_function(table.__len__)
