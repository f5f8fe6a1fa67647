"""CES drivers (touchpoints and reason codes behind effort): counted per pane, capped the same whatever the
split of the answers, and `cxpulse replay --alerts` naming the one that carries a spike."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from streams.cli import app
from streams.core.aggregate import DRIVER_CAP, aggregate_drivers, cap_drivers, merge_drivers
from streams.core.terms import g2
from tests.support import fb

runner = CliRunner()


def test_drivers_count_ces_answers_by_touchpoint_and_reason() -> None:
    events = [
        fb("CES", 2, 1, 7, t=5)._replace(touchpoint="IVR", reason_codes=("hold_time", "transfer")),
        fb("CES", 6, 1, 7, t=6)._replace(touchpoint="ivr", reason_codes=("hold_time",)),
        fb("CES", 1, 1, 7, t=7)._replace(touchpoint="#bad!", reason_codes=()),
        fb("NPS", 0, 0, 10, t=8)._replace(touchpoint="ivr"),  # not CES: no driver
    ]
    assert aggregate_drivers(events, 60_000) == {
        (0, "phone", "billing"): {
            "TOUCHPOINT:ivr": (2, 1),
            "REASON_CODE:hold_time": (2, 1),
            "REASON_CODE:transfer": (1, 1),
            "TOUCHPOINT:other": (1, 1),
        }
    }


names = st.lists(st.tuples(st.sampled_from(["TOUCHPOINT", "REASON_CODE"]), st.integers(0, 80)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(names, st.integers(0, 200), st.randoms())
def test_capping_commutes_with_merging(items: list[tuple[str, int]], cut: int, rng: random.Random) -> None:
    answers = [(f"{kind}:n{number:03d}", rng.randrange(2)) for kind, number in items]

    def drivers(part: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for name, high in part:
            n, h = out.get(name, (0, 0))
            out[name] = (n + 1, h + high)
        return cap_drivers(out)

    whole = drivers(answers)
    assert merge_drivers(drivers(answers[:cut]), drivers(answers[cut:])) == whole
    for kind in ("TOUCHPOINT", "REASON_CODE"):
        assert sum(1 for name in whole if name.startswith(kind) and not name.endswith(":other")) <= DRIVER_CAP
    assert sum(n for n, _ in whole.values()) == len(answers)


def ces_line(event_id: str, at: int, channel: str, touchpoint: str, high: bool, comment: str | None = None) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "occurred_at": at,
            "source": "sim",
            "channel": channel,
            "journey": "billing",
            "metric": "CES",
            "score": 2 if high else 6,
            "touchpoint": touchpoint,
            "reason_codes": ["hold_time"] if high else [],
            "comment": comment,
        }
    )


@pytest.mark.parametrize(("short_seconds", "bot_answers"), [(None, 50), ("120", 20)])
def test_replay_writes_the_alert_of_a_spike_with_its_root_cause(
    tmp_path: Path, short_seconds: str | None, bot_answers: int
) -> None:
    """10 bot answers a minute: the root cause counts those of the short window (5 minutes unless configured)."""
    rng = random.Random(4)
    lines = []
    start = 1_767_225_600_000
    for minute in range(180):
        for channel in ("chat", "phone"):
            for i in range(30):
                touchpoint = ("ivr", "agent_call", "bot")[i % 3]
                spike = channel == "chat" and minute >= 150 and touchpoint == "bot"
                high = rng.random() < (0.8 if spike else 0.2)
                # the bot's unhappy customers say so, some with their phone number in it (quoted redacted)
                said = f"bot {minute}-{i} useless, call 06 1234 56{i:02d}" if spike and high and i % 2 else None
                if minute < 140 and high and i % 2:  # before: those who struggle write about waiting
                    said = "waited too long on hold"
                lines.append(
                    ces_line(f"{channel}-{minute}-{i}", start + minute * 60_000 + i, channel, touchpoint, high, said)
                )
    source = tmp_path / "ces.jsonl"
    source.write_text("\n".join(lines) + "\n")
    alerts = tmp_path / "alerts.jsonl"
    env = {"CXPULSE_EFFORT_BASELINE_SECONDS": "3600", "CXPULSE_EFFORT_GUARD_SECONDS": "600"}
    if short_seconds is not None:
        env["CXPULSE_EFFORT_SHORT_SECONDS"] = short_seconds
    done = runner.invoke(
        app, ["replay", str(source), "-o", str(tmp_path / "out.jsonl"), "--alerts", str(alerts)], env=env
    )
    assert done.exit_code == 0, done.output
    fired = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [(a["state"], a["channel"]) for a in fired][:1] == [("FIRING", "chat")]
    assert all(a["channel"] == "chat" for a in fired)
    first = fired[0]
    assert start + 150 * 60_000 < first["at"] <= start + 160 * 60_000  # within 10 minutes of the step
    cause = first["root_cause"][0]
    assert (cause["kind"], cause["name"]) == ("TOUCHPOINT", "bot") and cause["high_effort"] > 0.5 * cause["n"]
    assert first["root_cause"][0]["n"] == bot_answers and first["n_short"] == 3 * bot_answers
    assert first["p0"] < first["p_short"]
    assert set(first) == {"state", "channel", "journey", "cusum", "p_short", "p0", "z", "n_short", "n_baseline",
                          "root_cause", "comments", "at", "terms"}  # fmt: skip
    # the alert quotes the 3 latest comments of high-effort answers of its short window, redacted
    spoken = [json.loads(line) for line in lines if '"comment": "bot' in line]
    latest = sorted((e for e in spoken if e["occurred_at"] < first["at"]), key=lambda e: e["occurred_at"])[-3:]
    assert first["comments"] == [e["comment"].split("call ")[0] + "call [number]" for e in reversed(latest)]
    # and the words its high-effort comments use more than the baseline's (the waiting of before is no news)
    short_ms = 1000 * int(short_seconds or 300)
    n_spike = sum(first["at"] - short_ms <= e["occurred_at"] < first["at"] for e in spoken)
    base_end = first["at"] - 60_000 - 600_000
    waited = [e for e in map(json.loads, lines) if e["channel"] == "chat" and e["comment"] == "waited too long on hold"]
    n_base = sum(base_end - 3_600_000 <= e["occurred_at"] < base_end for e in waited)
    assert n_spike >= 3 and n_base > 0
    expected = round(g2(n_spike, n_spike, 0, n_base), 3)
    assert first["terms"] == [
        {"term": w, "spike": n_spike, "baseline": 0, "g2": expected} for w in ("bot", "call", "useless")
    ]
