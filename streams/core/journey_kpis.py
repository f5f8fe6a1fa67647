"""The journey KPIs (docs/contract.md section 8): additive counters over closed instances, and the values made
from them; rollups add counters, never values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from streams.core.journeys import Instance


class JourneyCounts(NamedTuple):
    """The journey KPIs' additive counters (section 8) over a set of closed instances."""

    journeys: int = 0
    one_stop: int = 0
    contacts_sum: int = 0
    switches_sum: int = 0
    high_effort: int = 0
    nps_promoters: int = 0
    nps_passives: int = 0
    nps_detractors: int = 0
    recoverable: int = 0
    recovered: int = 0

    def __add__(self, other: object) -> JourneyCounts:
        if not isinstance(other, JourneyCounts):
            return NotImplemented
        return JourneyCounts(*(a + b for a, b in zip(self, other, strict=True)))


def counts_of(instance: Instance) -> JourneyCounts:
    """The counters of one instance."""
    return JourneyCounts(
        1,
        int(instance.one_stop),
        instance.contacts,
        instance.channel_switches,
        int(instance.ces_high_effort >= 1),
        int(instance.last_nps == "promoter"),
        int(instance.last_nps == "passive"),
        int(instance.last_nps == "detractor"),
        int(instance.recoverable),
        int(instance.recovered),
    )


def journey_kpis(counts: JourneyCounts) -> dict[str, float | None]:
    """The journey KPI values from their counters; None where the denominator is 0."""

    def ratio(num: int, den: int, scale: float = 100.0) -> float | None:
        return scale * num / den if den else None

    nps_n = counts.nps_promoters + counts.nps_passives + counts.nps_detractors
    return {
        "one_stop_rate": ratio(counts.one_stop, counts.journeys),
        "contacts_per_journey": ratio(counts.contacts_sum, counts.journeys, 1.0),
        "switches_per_journey": ratio(counts.switches_sum, counts.journeys, 1.0),
        "high_effort_rate": ratio(counts.high_effort, counts.journeys),
        "journey_nps": ratio(counts.nps_promoters - counts.nps_detractors, nps_n),
        "recovery_rate": ratio(counts.recovered, counts.recoverable),
    }


def counts_by(
    instances: Iterable[Instance], key: str = "journey", window_ms: int | None = None
) -> Mapping[tuple[Any, ...], JourneyCounts]:
    """Counters of the closed instances by ``key`` (an Instance field) and, with ``window_ms``, by the window
    [k * window_ms, (k + 1) * window_ms) that holds their end."""
    out: dict[tuple[Any, ...], JourneyCounts] = {}
    for instance in instances:
        if not instance.closed:
            continue
        at: tuple[Any, ...] = (getattr(instance, key),)
        if window_ms is not None:
            at = (instance.end - instance.end % window_ms, *at)
        out[at] = out.get(at, JourneyCounts()) + counts_of(instance)
    return out
