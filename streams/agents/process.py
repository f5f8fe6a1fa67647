"""What every process of a worker but the hot path does first (the Faust processes and the ClickHouse sink alike):
its settings, metrics, health and outage log, and its loopback endpoint.  Faust-free, so that the sink process,
which is not a Faust app, never imports Faust (streams/processes/)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from streams.agents.health import ProcessHealth, serve
from streams.agents.metrics import WorkerMetrics
from streams.config import Settings, load_settings
from streams.errors import CxPulseError
from streams.outage import OutageLog
from streams.runtime import tune_gc


def start_process(
    process: str, port: int, check: Callable[[Settings], str | None] = lambda settings: None
) -> tuple[Settings, WorkerMetrics] | None:
    """What every process of a worker but the hot path does first: the collector's setting (streams.runtime), its
    settings from the environment (None, the reason printed, when they are invalid or ``check`` names a problem),
    its metrics, health and Kafka outage log, and its /metrics, /readyz and /progress on the loopback ``port``."""
    tune_gc()
    try:
        settings = load_settings()
        problem = check(settings)
        if problem is not None:
            raise CxPulseError(problem)
    except CxPulseError as exc:
        print(f"cxpulse {process}: {exc}", file=sys.stderr)
        return None
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.health = ProcessHealth(settings.stall_seconds, OutageLog.install(settings.kafka_bootstrap))
    metrics.process_stalled.labels(process).set_function(metrics.health.progress.stalled)
    if port:
        serve(port, "127.0.0.1", metrics.page, lambda: (metrics.health.ready(True), {}), metrics.progress_page)
    return settings, metrics
