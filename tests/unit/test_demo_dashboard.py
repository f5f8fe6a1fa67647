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
                   {"kind": "REASON_CODE", "name": "repeat_contact", "high_effort": 30, "n": 40},
                   {"kind": "THEME", "name": "bot_self_service", "high_effort": 20, "n": 21}],
    "comments": ["De chatbot begreep mijn vraag niet", "Could not get past the bot to a real person"],
}  # fmt: skip


def test_the_dashboard_shows_five_metrics_and_the_whole_alert_line() -> None:
    board = Dashboard(Settings(), "127.0.0.1:1")
    try:
        board.read_gauges(
            "# TYPE cxpulse_effort_term gauge\n"
            'cxpulse_effort_term{channel="chat",journey="billing",rank="2",term="bot"} 14.2\n'
            'cxpulse_effort_term{channel="chat",journey="billing",rank="1",term="chatbot"} 31.0\n'
        )
        assert board.new_words() == [("chat", "billing", ["chatbot", "bot"])] and board.new_words() == []
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
    said = " ".join(line.strip() for line in alert_lines)
    assert "reason_code repeat_contact (30/40 high effort)" in said and "theme bot_self_service (20/21" in said
    assert 'a customer wrote: "De chatbot begreep mijn vraag niet"' in said  # the latest comment it quotes
    assert "words used more than usual: chatbot, bot" in said  # the words of its spike, once read


def test_the_dashboard_shows_one_stop_rate_and_contacts_per_journey_from_the_counters() -> None:
    from streams.core.journey_kpis import JourneyCounts

    board = Dashboard(Settings(journey_gap_seconds=20), "127.0.0.1:1")
    try:
        assert "none closed yet" in board.journey_line() and "20 s" in board.journey_line()
        page = "".join(
            f'cxpulse_journeys_closed{{journey="{journey}",counter="{name}"}} {value}\n'
            for journey, counts in {
                "billing": JourneyCounts(journeys=4, one_stop=2, contacts_sum=7),
                "support": JourneyCounts(journeys=6, one_stop=6, contacts_sum=6),
            }.items()
            for name, value in counts._asdict().items()
        )
        board.read_gauges("# TYPE cxpulse_journeys_closed gauge\n" + page)
    finally:
        board.close()
    line = board.journey_line()
    assert board.journey_summary() == "10 journeys closed: 80% one-stop, 1.30 contacts each"
    assert "all 80% one-stop, 1.30 contacts (10)" in line  # counters summed, then computed: (2 + 6) / (4 + 6)
    assert "billing 50% one-stop, 1.75 contacts (4)" in line and "support 100% one-stop, 1.00 contacts (6)" in line
