"""The worker's own Prometheus metrics, one factory for every process of a worker.

Each child process (hot-path slots, the Faust process) serves its registry on a loopback port of its own;
``cxpulse worker`` (streams.worker.supervisor) serves the sum of them on ``CXPULSE_METRICS_PORT``.
Example::

    metrics = WorkerMetrics(CollectorRegistry())
    metrics.records.labels("cx.feedback").inc(500)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streams.agents.health import ProcessHealth
from streams.core.journey_kpis import JourneyCounts, journey_kpis

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
# seconds; finer from 1 to 5 s, where a result waits for the gauges' refresh (2 s) and, at low rates, the broker's
# fetch wait (1 s): with only 2 and 3 there, every p99 at 20,000 answers/s was "between 2 and 3 s"
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


PROGRESS_FAMILIES = ("cxpulse_worker_process_stalled_seconds", "cxpulse_worker_process_ready")


class WorkerMetrics:
    """Counters and gauges of one worker process, on an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.snapshots: list[Any] = []  # sinks.prometheus.Snapshot: large families served beside the registry
        self.health = ProcessHealth(bound=60.0)  # replaced by the process's own (settings, outage) at start
        self._batches(registry)
        self._state(registry)
        self._journeys(registry)
        self._lag_and_health(registry)

    def _batches(self, registry: CollectorRegistry) -> None:
        """What the batches of a process did: records, dead letters, duplicates, transactions, follow-ups."""
        self.records = Counter(
            "cxpulse_worker_records", "Input records processed, by input topic", ["topic"], registry=registry
        )
        self.dead_letters = Counter(
            "cxpulse_worker_dead_letters",
            "Events sent to the dead-letter topic, by reason (docs/contract.md section 2)",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "cxpulse_worker_duplicates", "Later copies of an answer already counted", registry=registry
        )
        self.late_events = Counter(
            "cxpulse_worker_late_events",
            "Valid events counted in a pane that had already closed on the processing clock (docs/contract.md, 5)",
            registry=registry,
        )
        self.batch_errors = Counter(
            "cxpulse_worker_batch_errors",
            "Batches whose processing failed and was retried (logged; nothing is skipped), by input topic",
            ["topic"],
            registry=registry,
        )
        self.transactions = Counter(
            "cxpulse_worker_transactions",
            "Hot-path Kafka transactions, by outcome (committed, aborted)",
            ["outcome"],
            registry=registry,
        )
        self.producer_reinits = Counter(
            "cxpulse_worker_producer_reinits",
            "Transactional producers replaced after a fatal error (a transaction that could not complete)",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "cxpulse_worker_batch_duration_seconds",
            "Time to process one batch, by step (hotpath: consume to commit; merge: partials to results)",
            ["step"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.followups = Counter(
            "cxpulse_followups",
            "Detractor follow-ups, by outcome (sent: to the follow-ups topic; rate_limited: over "
            "CXPULSE_FOLLOWUPS_PER_MINUTE, dropped; posted: accepted by the follow-up webhook)",
            ["outcome"],
            registry=registry,
        )

    def _state(self, registry: CollectorRegistry) -> None:
        """What merge keeps and repairs: read-backs, chain breaks, results, expired and kept keys."""
        self.repaired = Counter(
            "cxpulse_worker_repaired_records",
            "Partial messages the Faust consumer skipped and merge read back (see streams/worker/repair.py)",
            registry=registry,
        )
        self.chain_breaks = Counter(
            "cxpulse_worker_chain_breaks",
            "Source ranges that did not link up even after a read-back (logged as errors)",
            registry=registry,
        )
        self.results = Counter(
            "cxpulse_worker_results", "Window results emitted to the results topic", registry=registry
        )
        self.expired = Counter(
            "cxpulse_worker_expired_keys",
            "State keys dropped after the retention, by table",
            ["table"],
            registry=registry,
        )
        self.state_keys = Gauge(
            "cxpulse_worker_state_keys",
            "Keys held in each state table (this worker's partitions)",
            ["table"],
            registry=registry,
        )
        self.remembered_ids = Gauge(
            "cxpulse_worker_remembered_ids",
            "Event ids remembered for de-duplication (this worker's partitions; they expire with the retention)",
            registry=registry,
        )
        self.restored = Counter(
            "cxpulse_worker_restored",
            "State restored at assignment, by table and where from: local (the process's copy on disk, up to its "
            "checkpoint) or changelog (read from Kafka: past the checkpoint, or all of it without a copy); ids for "
            "seen-ids, changelog entries for its changelog, keys for the tables' local copies",
            ["table", "source"],
            registry=registry,
        )
        self.copied = Counter(
            "cxpulse_worker_local_copy_messages",
            "Table changelog messages Kafka acknowledged and the process wrote to its local copies",
            registry=registry,
        )

    def _journeys(self, registry: CollectorRegistry) -> None:
        """What the journey agent sends and counts (contract section 8)."""
        self.journey_revisions = Counter(
            "cxpulse_worker_journey_revisions",
            "Journey instance revisions sent to the journeys topic, by kind: open, closed, deleted (replaced)",
            ["kind"],
            registry=registry,
        )
        self.journeys_closed = Gauge(
            "cxpulse_journeys_closed",
            "Counters of the customer journeys closed with their end in the last 24 h, by journey (contract "
            "section 8): journeys, one_stop, contacts_sum, switches_sum, high_effort, nps_*, recoverable, "
            "recovered; over several workers, sum them and compute the KPIs from the sums",
            ["journey", "counter"],
            registry=registry,
        )
        self.journey_kpi = Gauge(
            "cxpulse_journey_kpi",
            "Journey KPIs of the journeys closed in the last 24 h, by journey, from this process's counters: "
            "one_stop_rate, contacts_per_journey, switches_per_journey, high_effort_rate, journey_nps, recovery_rate",
            ["journey", "kpi"],
            registry=registry,
        )
        self.journey_labels: set[str] = set()

    def _lag_and_health(self, registry: CollectorRegistry) -> None:
        """How far behind each input and sink is, and whether each process is ready and making progress."""
        self.consumer_lag = Gauge(
            "cxpulse_consumer_lag_messages",
            "Messages of an input partition not yet processed (end offset - position), by topic and partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.sink_lag = Gauge(
            "cxpulse_sink_lag_messages",
            "Results not yet applied by a sink (end offset - position), by sink and results partition",
            ["sink", "partition"],
            registry=registry,
        )
        self.sink_errors = Counter(
            "cxpulse_sink_errors",
            "Records or writes a sink could not handle (logged), by sink",
            ["sink"],
            registry=registry,
        )
        self.event_to_gauge = Histogram(
            "cxpulse_event_to_gauge_seconds",
            "From the Kafka timestamp of the newest event in a result to the refresh that shows it in the gauges",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.process_stalled = Gauge(
            "cxpulse_worker_process_stalled_seconds",
            "Seconds a process of the worker has made no progress while input waits or a batch is in flight",
            ["process"],
            registry=registry,
        )
        self.process_ready = Gauge(
            "cxpulse_worker_process_ready",
            "1 once a process of the worker holds partitions and has restored its state, by process",
            ["process"],
            registry=registry,
        )

    def set_journey_kpis(self, totals: Mapping[str, JourneyCounts]) -> None:
        """The journey gauges from the counters (JourneyCounts) of each journey; a journey gone is set to 0."""
        shown = self._kpi_labels()
        for journey in self.journey_labels | totals.keys():
            counts = totals.get(journey, JourneyCounts())
            for name, value in counts._asdict().items():
                self.journeys_closed.labels(journey, name).set(value)
            for kpi, value in journey_kpis(counts).items():
                if value is not None:
                    self.journey_kpi.labels(journey, kpi).set(value)
                elif (journey, kpi) in shown:  # no denominator (a journey gone): no value
                    self.journey_kpi.remove(journey, kpi)
        self.journey_labels |= totals.keys()

    def _kpi_labels(self) -> set[tuple[str, ...]]:
        return {tuple(sample.labels.values()) for metric in self.journey_kpi.collect() for sample in metric.samples}

    def page(self) -> bytes:
        """The process's /metrics page: the registry, then the snapshots' own text."""
        return generate_latest(self.registry) + b"".join(snapshot.exposition() for snapshot in self.snapshots)

    def progress_page(self) -> bytes:
        """The process's ``/progress``: its stall and readiness gauges only, what the supervisor looks at every 2 s
        (it read the whole /metrics before: the merge process wrote its KPI page and the supervisor parsed it, every
        2 s, for two numbers)."""
        return generate_latest(self.registry.restricted_registry(PROGRESS_FAMILIES))
