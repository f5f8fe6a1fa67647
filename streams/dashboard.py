"""``cxpulse demo``'s live dashboard: the worker's KPI gauges per channel and journey, its throughput and lag, read
from its /metrics, and the effort alerts read from the alerts topic.

The demo (streams/demo.py) shows it on a terminal, refreshed twice a second; elsewhere a progress line every 10 s.
"""

from __future__ import annotations

import textwrap
import time
import urllib.request
import uuid
from collections import defaultdict
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table
from rich.text import Text

from schemas.codec import EFFORT_ALERT, LocalCatalog, decode_confluent
from streams.config import Settings
from streams.core.journey_kpis import JourneyCounts, journey_kpis
from streams.kafka import consumer

METRICS = ("NPS", "CES", "CSAT", "NLS", "CAS")
WINDOW = "1m"  # the rolling window the dashboard shows


class Dashboard:
    """What the dashboard shows, read from the worker: its /metrics and the alerts topic."""

    def __init__(self, settings: Settings, bootstrap: str, started: float | None = None) -> None:
        """``started``: the monotonic time the demo's clock counts from (the demo's own start, so that the header,
        its progress lines and its "up in" agree); now when not given."""
        self.url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        self.started = time.monotonic() if started is None else started
        self.kpis: dict[tuple[str, str], dict[str, tuple[float, float | None, float]]] = defaultdict(dict)
        self.records = 0.0
        self.rate = 0.0
        self.lag = 0.0
        self.dead_letters = 0.0
        self.journeys: dict[str, JourneyCounts] = {}  # journey -> counters of the journeys closed in the last 24 h
        self.journey_gap_seconds = settings.journey_gap_seconds
        self._last: tuple[float, float] | None = None
        self.alerts: list[dict[str, Any]] = []
        self.words: dict[tuple[str, str], list[str]] = {}  # per firing segment, the words of its spike (the gauge)
        self.words_told: set[tuple[str, str, tuple[str, ...]]] = set()
        self._alerts = consumer(bootstrap, f"cxpulse-demo-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
        self._alerts.assign([TopicPartition(settings.alerts_topic, 0, OFFSET_BEGINNING)])
        self.feedback_topic = settings.feedback_topic

    def poll(self) -> list[dict[str, Any]]:
        """Read the worker's state; return the alerts that arrived since the last poll."""
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:  # noqa: S310 - loopback, our worker
                self.read_gauges(response.read().decode())
        except OSError:
            self.read_gauges("")
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            self.rate = (self.records - self._last[1]) / (now - self._last[0])
        self._last = (now, self.records)
        new = []
        for message in self._alerts.consume(100, 0.05):
            payload = message.value()
            if message.error() is None and payload:
                new.append(decode_confluent(payload, LocalCatalog(), EFFORT_ALERT)[1])
        self.alerts.extend(new)
        return new

    def read_gauges(self, text: str) -> None:
        """The KPIs of the dashboard's window, the records read, the lag and the dead letters, from a /metrics page
        (empty: the worker did not answer; its KPIs are blank until it does)."""
        values: dict[tuple[str, str, str], list[float | None]] = defaultdict(lambda: [None, None, None])
        slots = {"cxpulse_kpi_value": 0, "cxpulse_kpi_moe95": 1, "cxpulse_kpi_responses": 2}
        lag = dead = 0.0
        journeys: dict[str, dict[str, int]] = defaultdict(dict)
        words: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "cxpulse_journeys_closed":
                    journeys[labels["journey"]][labels["counter"]] = int(sample.value)
                elif sample.name in slots and labels.get("window") == WINDOW:
                    values[(labels["channel"], labels["journey"], labels["metric"])][slots[sample.name]] = sample.value
                elif sample.name == "cxpulse_worker_records_total" and labels.get("topic") == self.feedback_topic:
                    self.records = sample.value
                elif sample.name == "cxpulse_consumer_lag_messages":
                    lag += sample.value
                elif sample.name == "cxpulse_worker_dead_letters_total":
                    dead += sample.value
                elif sample.name == "cxpulse_effort_term":
                    words[(labels["channel"], labels["journey"])].append((int(labels["rank"]), labels["term"]))
        self.words = {segment: [term for _, term in sorted(found)] for segment, found in words.items()}
        self.lag, self.dead_letters = lag, dead
        self.journeys = {j: JourneyCounts(**c) for j, c in journeys.items() if set(c) == set(JourneyCounts._fields)}
        self.kpis = defaultdict(dict)
        for (channel, journey, metric), (value, moe, n) in values.items():
            if value is not None and n is not None:
                self.kpis[(channel, journey)][metric] = (value, moe, n)

    def new_words(self) -> list[tuple[str, str, list[str]]]:
        """The words of a spike that appeared since the last call (they follow the alert once the store holds the
        spike): (channel, journey, words)."""
        out = []
        for (channel, journey), words in sorted(self.words.items()):
            told = (channel, journey, tuple(words))
            if told not in self.words_told:
                self.words_told.add(told)
                out.append((channel, journey, words))
        return out

    def render(self, width: int = 120) -> Group:
        """The dashboard for a terminal ``width`` columns wide (alert lines wrapped to it, never cut)."""
        elapsed = time.monotonic() - self.started
        head = Text(
            f"cxpulse demo  {elapsed:5.0f} s   events {self.records:,.0f} ({self.rate:,.0f}/s)   lag {self.lag:,.0f}"
            f"   dead letters {self.dead_letters:,.0f}   window {WINDOW}, 5-second panes (time-lapse)"
        )
        table = Table(title="KPIs per channel x journey (value ±95%, n)", title_justify="left")
        table.add_column("channel")
        table.add_column("journey")
        for metric in METRICS:
            table.add_column(metric, justify="right")
        for (channel, journey), kpis in sorted(self.kpis.items()):
            cells = []
            for metric in METRICS:
                found = kpis.get(metric)
                if found is None:
                    cells.append("-")
                    continue
                value, moe, n = found
                digits = 2 if metric == "CES" else 0
                cells.append(f"{value:.{digits}f} ±{moe or 0:.{digits}f} ({n:.0f})")
            firing = any(a["channel"] == channel and a["journey"] == journey for a in self.firing())
            style = "bold red" if firing else None
            table.add_row(channel, journey, *cells, style=style)
        parts: list[Any] = [head, table, Text(self.journey_line())]
        for alert in self.alerts[-5:]:
            words = self.words.get((alert["channel"], alert["journey"])) if alert["state"] == "FIRING" else None
            wrapped = textwrap.fill(alert_line(alert, words), width=max(40, width), subsequent_indent="    ")
            parts.append(Text(wrapped, style="bold red" if alert["state"] == "FIRING" else "green"))
        if not self.alerts:
            parts.append(Text("no effort alert yet (the incident starts 30 s after the simulator)", style="dim"))
        return Group(*parts)

    def journey_summary(self) -> str:
        """The journeys closed so far in a few words (the demo's progress lines)."""
        total = sum(self.journeys.values(), JourneyCounts())
        kpis = journey_kpis(total)
        if kpis["one_stop_rate"] is None or kpis["contacts_per_journey"] is None:
            return "no journey closed yet"
        return (
            f"{total.journeys:,} journeys closed: {kpis['one_stop_rate']:.0f}% one-stop, "
            f"{kpis['contacts_per_journey']:.2f} contacts each"
        )

    def journey_line(self) -> str:
        """The customer journeys closed so far: one-stop rate and contacts per journey, all and per journey."""
        if not any(c.journeys for c in self.journeys.values()):
            return (
                f"customer journeys: none closed yet (a journey closes {self.journey_gap_seconds:,} s after its last "
                "answer)"
            )
        total = sum(self.journeys.values(), JourneyCounts())
        parts = []
        for name, counts in [("all", total), *sorted(self.journeys.items())]:
            kpis = journey_kpis(counts)
            if kpis["one_stop_rate"] is not None and kpis["contacts_per_journey"] is not None:
                parts.append(
                    f"{name} {kpis['one_stop_rate']:.0f}% one-stop, {kpis['contacts_per_journey']:.2f} contacts "
                    f"({counts.journeys:,})"
                )
        return "customer journeys closed: " + "; ".join(parts)

    def firing(self) -> list[dict[str, Any]]:
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for alert in self.alerts:
            state[(alert["channel"], alert["journey"])] = alert
        return [a for a in state.values() if a["state"] == "FIRING"]

    def close(self) -> None:
        self._alerts.close()


def alert_line(alert: dict[str, Any], words: list[str] | None = None) -> str:
    """One line for an EffortAlert: state, segment, shares, root cause, the latest comment it quotes, and the words
    of its spike once known (``words``: from the worker's gauge)."""
    causes = ", ".join(
        f"{c['kind'].lower()} {c['name']} ({c['high_effort']}/{c['n']} high effort)" for c in alert["root_cause"]
    )
    p_short = alert.get("p_short")
    short = f"{100 * p_short:.0f}%" if p_short is not None else "-"
    return (
        f"effort spike {alert['state']} {alert['channel']}/{alert['journey']}: high-effort share {short} against "
        f"{100 * alert['p0']:.0f}% baseline, CUSUM {alert['cusum']:.1f}; root cause: {causes or '-'}"
        + (f'; a customer wrote: "{alert["comments"][0]}"' if alert.get("comments") else "")
        + (f"; words used more than usual: {', '.join(words)}" if words else "")
    )


def words_line(channel: str, journey: str, words: list[str]) -> str:
    """The line for the words of a spike, printed when they arrive after its alert."""
    return f"effort spike words {channel}/{journey}: {', '.join(words)} (used more than usual in its comments)"
