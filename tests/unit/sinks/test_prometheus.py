"""The KPI gauges: the rolling windows of replay, exact component counters, a capped label set."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sinks.prometheus import COMPONENTS, Snapshot, kpi_families, window_label
from streams.core.aggregate import aggregate_panes, merge_all
from streams.core.synth import realistic_events
from streams.core.validate import validate_batch
from streams.core.windows import result_record, rolling_window, state_of, window_result

P = 60_000
NOW = 1_767_300_030_000


def panes_of(count: int, seed: int = 1) -> dict:
    events = list(realistic_events(count, seed=seed, start_ms=NOW - 3 * 3600_000, per_second=count / 10800))
    valid, _ = validate_batch([{**e, "reason_codes": e["reason_codes"] or []} for e in events])
    return aggregate_panes(valid, P)


def scrape(families: list) -> dict[tuple, float]:
    registry = CollectorRegistry()
    snapshot = Snapshot()
    snapshot.families = families
    registry.register(snapshot)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_gauges_are_replays_rolling_windows(tmp_path: Any) -> None:
    """Every series of every window against replay's own output for the same answers (not against the functions
    the view calls): value, moe95, n and all eight components; and no series replay does not have."""
    import json

    from streams.replay import replay_file

    events = list(realistic_events(4000, seed=1, start_ms=NOW - 3 * 3600_000, per_second=4000 / 10800))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    replay = replay_file(path, P, lambda dead: None)
    got = scrape(kpi_families(replay.panes, NOW, (300, 3600, 86400), P, cap=1000)[0])
    assert got[("cxpulse_kpi_window_end_seconds", ())] == (NOW - NOW % P) / 1000
    expected_keys = set()
    for window_s, label in ((300, "5m"), (3600, "1h"), (86400, "24h")):
        for result in replay.results(window_s * 1000, NOW):
            labels = (("channel", result.channel), ("journey", result.journey), ("metric", result.metric),
                      ("window", label))  # fmt: skip
            expected_keys.add(labels)
            assert got[("cxpulse_kpi_value", labels)] == pytest.approx(result.value, abs=1e-9)
            assert got.get(("cxpulse_kpi_moe95", labels)) == (
                None if result.moe95 is None else pytest.approx(result.moe95)
            )
            assert got[("cxpulse_kpi_responses", labels)] == result.n
            for name in COMPONENTS:
                component = tuple(sorted((*labels, ("component", name))))
                assert got[("cxpulse_kpi_component", component)] == pytest.approx(getattr(result, name), abs=1e-9)
    exported = {labels for name, labels in got if name == "cxpulse_kpi_responses"}
    assert exported == expected_keys and len(expected_keys) > 100


def component_total(samples: dict, metric: str, component: str) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "cxpulse_kpi_component"
        and dict(labels)["metric"] == metric
        and dict(labels)["component"] == component
    )


def test_components_make_rollups_exact_and_the_cap_folds_into_other() -> None:
    panes = panes_of(4000, seed=2)
    capped = scrape(kpi_families(panes, NOW, (86400,), P, cap=3)[0])
    full = scrape(kpi_families(panes, NOW, (86400,), P, cap=1000)[0])
    assert capped[("cxpulse_kpi_folded_segments", ())] > 0
    for metric in ("NPS", "CES"):
        everything = merge_all(s for (_, _, m), s in rolling_window(panes, NOW, 86400_000, P).items() if m == metric)
        for component in ("n", "detractors"):
            exact = getattr(everything, component)
            assert component_total(capped, metric, component) == component_total(full, metric, component) == exact
        # sum_x is a float: summing series in another order may differ in the last bit
        assert component_total(capped, metric, "sum_x") == pytest.approx(everything.sum_x, rel=1e-12)
    segments = {
        (dict(labels)["channel"], dict(labels)["journey"]) for name, labels in capped if name == "cxpulse_kpi_value"
    }
    assert ("other", "other") in segments and len(segments) == 4


def test_result_records_give_back_the_exact_counters() -> None:
    for state in panes_of(2000, seed=3).values():
        record = result_record(window_result(0, P, "c", "j", "CES", state, 1))
        assert state_of(record) == state


def test_window_labels() -> None:
    assert [window_label(s) for s in (300, 3600, 86400, 604800, 90)] == ["5m", "1h", "24h", "7d", "90s"]


def test_rolling_view_is_rolling_window_through_updates_moves_and_drops() -> None:
    """The running sums equal replay's rolling_window after every kind of change, in any order."""
    import random

    from sinks.prometheus import RollingView

    rng = random.Random(7)
    panes = panes_of(3000, seed=3)
    keys = sorted(panes)
    view = RollingView((300, 3600), P)
    current: dict = {}
    now = NOW - 3 * 3600_000
    seen = {300: 0, 3600: 0}
    for step in range(400):
        action = rng.random()
        if action < 0.6:  # a pane result arrives or is revised
            key = rng.choice(keys)
            state = panes[key] if key not in current else current[key]._replace(n=current[key].n + 1)
            current[key] = state
            view.put(key, state)
        elif action < 0.9:  # the clock moves on, by less or more than the shortest window
            now += rng.choice((1_000, P, 3 * P, 7 * P))
        else:  # old panes expire
            cutoff = now - 3600_000 - P
            view.drop_before(cutoff)
            current = {k: v for k, v in current.items() if k[0] >= cutoff}
        view.advance(now)
        for window_s in (300, 3600):
            assert view.totals[window_s] == rolling_window(current, now, window_s * 1000, P), step
            seen[window_s] += bool(view.totals[window_s])
    assert seen[300] > 50 and seen[3600] > 100, seen  # the windows held data most of the time


def test_component_series_only_for_the_windows_asked_for() -> None:
    from sinks.prometheus import window_families
    from streams.core.aggregate import State

    windows = {w: {("chat", "billing", "NPS"): State(10, 5, 3, 2, 0, 0, 0, 0)} for w in (300, 3600, 86400)}
    for components, expected in ((None, {"5m", "1h", "24h"}), ({86400}, {"24h"}), (set(), set())):
        families, _ = window_families(windows, 1_800_000_000_000, 10, components)
        component = next(f for f in families if f.name == "cxpulse_kpi_component")
        assert {s.labels["window"] for s in component.samples} == expected
        value = next(f for f in families if f.name == "cxpulse_kpi_value")
        assert {s.labels["window"] for s in value.samples} == {"5m", "1h", "24h"}  # the KPIs themselves always


def test_the_snapshot_writes_what_prometheus_client_writes() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from sinks.prometheus import Snapshot, window_families
    from streams.core.aggregate import State

    windows = {w: {("chat", "billing", m): State(10, 5, 3, 2, 6, 1, 3 * 10**9, 2 * 10**9) for m in ("NPS", "CES")}
               for w in (300, 86400)}  # fmt: skip
    snapshot = Snapshot()
    snapshot.set_lazy(lambda: window_families(windows, 1_800_000_000_000, 10)[0])
    registry = CollectorRegistry()
    registry.register(snapshot)
    assert snapshot.exposition() == generate_latest(registry)


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["chat", "phone", "web.x", "a-b"]), st.sampled_from(["billing", "support"]),
                  st.sampled_from(["NPS", "CES", "CSAT"])),
        st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 10**12)),
        max_size=20,
    ),
    st.integers(1, 6),
    st.sampled_from([None, {86400}, set(), {300, 3600}]),
)  # fmt: skip
def test_the_page_written_straight_from_the_states_is_the_families_page(
    groups: dict, cap: int, components: set[int] | None
) -> None:
    """window_text (what a scrape serves) is byte for byte prometheus_client's page of window_families."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sinks.prometheus import Snapshot, window_families, window_text
    from streams.core.aggregate import State

    states = {key: State(n + 1, min(p, n + 1), 0, 0, min(p, n + 1), 0, sx, sx) for key, (n, p, sx) in groups.items()}
    windows = {w: states for w in (300, 3600, 86400)}
    snapshot = Snapshot()
    snapshot.families = window_families(windows, 1_800_000_000_000, cap, components)[0]
    registry = CollectorRegistry()
    registry.register(snapshot)
    assert window_text(windows, 1_800_000_000_000, cap, components) == generate_latest(registry)
