"""The worker's one /metrics endpoint: the processes' metrics summed, readiness of all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.agents.metrics import WorkerMetrics
from streams.config import Settings
from streams.worker.supervisor import combine, worker_identity


def exposition(process: str, records: float, ready: float) -> str:
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.records.labels("cx.feedback").inc(records)
    metrics.dead_letters.labels("bad_scale").inc(2)
    metrics.batch_seconds.labels("hotpath").observe(0.02)
    metrics.process_ready.labels(process).set(ready)
    return generate_latest(metrics.registry).decode()


def samples(expositions: dict[str, str]) -> dict[str, float]:
    registry = CollectorRegistry()

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return combine(expositions)

    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_samples_of_the_processes_are_summed() -> None:
    got = samples({"hotpath-0": exposition("hotpath-0", 100, 1), "hotpath-1": exposition("hotpath-1", 50, 1)})
    assert got["cxpulse_worker_records_total{topic=cx.feedback}"] == 150
    assert got["cxpulse_worker_dead_letters_total{reason=bad_scale}"] == 4
    assert got["cxpulse_worker_batch_duration_seconds_count{step=hotpath}"] == 2
    assert got["cxpulse_worker_batch_duration_seconds_bucket{le=0.025,step=hotpath}"] == 2
    assert got["cxpulse_worker_process_ready{process=hotpath-1}"] == 1
    assert got["cxpulse_worker_ready{}"] == 1
    assert not any("_created" in name for name in got)


def test_the_worker_is_ready_only_when_every_process_is() -> None:
    assert samples({"a": exposition("a", 1, 1), "b": exposition("b", 1, 0)})["cxpulse_worker_ready{}"] == 0
    assert samples({"a": exposition("a", 1, 1), "b": ""})["cxpulse_worker_ready{}"] == 0  # b is down


def test_worker_identity_is_stable_per_data_dir_and_overridable(tmp_path: Path) -> None:
    one = worker_identity(Settings(data_dir=tmp_path / "a"))
    assert one == worker_identity(Settings(data_dir=tmp_path / "a"))
    assert one != worker_identity(Settings(data_dir=tmp_path / "b"))
    assert worker_identity(Settings(data_dir=tmp_path / "a", worker_id="w-7")) == "w-7"


def test_one_page_sums_what_processes_share_and_passes_the_rest_through() -> None:
    from sinks.prometheus import Snapshot
    from streams.worker.supervisor import merge_pages

    merge = WorkerMetrics(CollectorRegistry())
    merge.process_ready.labels("merge").set(1)
    merge.records.labels("cx-partials").inc(7)
    kpis = Snapshot()
    from prometheus_client.metrics_core import GaugeMetricFamily

    family = GaugeMetricFamily("cxpulse_kpi_value", "KPI", labels=["metric", "channel"])
    family.add_metric(["NPS", 'we"ird\\chan'], 12.5)
    kpis.families = [family]
    merge.snapshots.append(kpis)
    hot = exposition("hotpath-0", 100, 1)
    page = merge_pages({"merge": merge.page().decode(), "hotpath-0": hot})
    got = {}
    for parsed in text_string_to_metric_families(page.decode()):
        for sample in parsed.samples:
            got[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert got[("cxpulse_worker_records_total", (("topic", "cx.feedback"),))] == 100
    assert got[("cxpulse_worker_records_total", (("topic", "cx-partials"),))] == 7
    assert got[("cxpulse_kpi_value", (("channel", 'we"ird\\chan'), ("metric", "NPS")))] == 12.5  # escaped, intact
    assert got[("cxpulse_worker_ready", ())] == 1
    assert page.decode().count("# HELP cxpulse_worker_records_total") == 1


def test_a_stalled_child_is_not_killed_while_kafka_is_away_and_is_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process stalls while Kafka is unreachable; killing one then would only start its waiting over.  Once
    Kafka answers, the bound counts from its return (the child recovers: a new producer, its state read back); a
    child still stalled CXPULSE_STALL_RESTART_SECONDS after it is killed (to be restarted)."""
    import subprocess
    import sys
    import time

    from streams.worker import supervisor as sv

    boss = sv.Supervisor(Settings(clickhouse_url="", stall_restart_seconds=30.0), "id", "warn", {}, roles=("merge",))
    child = boss.children[0]
    child.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    page = (
        'cxpulse_worker_process_stalled_seconds{process="merge"} 45.0\n'
        'cxpulse_worker_process_ready{process="merge"} 0\n'
    )
    asked: list[str] = []
    monkeypatch.setattr(
        sv.ChildrenCollector, "scrape", staticmethod(lambda child, path="/metrics": asked.append(path) or page)
    )
    try:
        boss.kafka_up = lambda: False
        boss.watched = 0.0
        boss.look_at_progress()
        assert child.alive()
        assert boss.registry.get_sample_value("cxpulse_worker_stall_restarts_total", {"process": "merge"}) == 0
        boss.kafka_up = lambda: True
        boss.watched = 0.0
        boss.look_at_progress()  # back a moment ago: the 45 s stall began while Kafka was away
        assert child.alive()
        boss.kafka_away_at = time.monotonic() - 31.0  # back 31 s ago, and the child still stalled
        boss.watched = 0.0
        boss.look_at_progress()
        assert child.proc.wait(10) == -9
        assert boss.registry.get_sample_value("cxpulse_worker_stall_restarts_total", {"process": "merge"}) == 1
        assert set(asked) == {"/progress"}  # two gauges, not the whole page, every 2 s
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
