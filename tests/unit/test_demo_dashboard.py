"""The demo's dashboard, rendered without a worker: every metric has a column, and an alert line is wrapped to
the terminal, never cut."""

from __future__ import annotations

import io

from rich.console import Console

from streams.config import Settings
from streams.dashboard import Dashboard

ALERT = {
    "state": "FIRING", "channel": "chat", "journey": "billing", "p_short": 0.35, "p0": 0.2, "cusum": 10.3,
    "root_cause": [{"kind": "TOUCHPOINT", "name": "bot", "high_effort": 35, "n": 98},
                   {"kind": "REASON_CODE", "name": "repeat_contact", "high_effort": 30, "n": 40}],
}  # fmt: skip


def test_the_dashboard_shows_five_metrics_and_the_whole_alert_line() -> None:
    board = Dashboard(Settings(), "127.0.0.1:1")
    try:
        board.kpis[("chat", "billing")] = {m: (50.0, 5.0, 120.0) for m in ("NPS", "CES", "CSAT", "NLS", "CAS")}
        board.alerts = [ALERT]
        buffer = io.StringIO()
        Console(file=buffer, width=80, soft_wrap=True).print(board.render(80))
    finally:
        board.close()
    text = buffer.getvalue()
    header = next(line for line in text.splitlines() if "┃ channel" in line)
    assert all(metric in header for metric in ("NPS", "CES", "CSAT", "NLS", "CAS"))
    alert_lines = text[text.index("effort spike FIRING") :].splitlines()
    assert all(len(line) <= 80 for line in alert_lines)
    assert "reason_code repeat_contact (30/40 high effort)" in " ".join(line.strip() for line in alert_lines)
