"""cxpulse simulate: reproducible for a seed, and its scripted incidents show in replay (section 7's detector)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.core.comments import ThemeMatcher
from streams.core.effort import EffortConfig
from streams.core.validate import validate_batch
from streams.replay import replay_file
from streams.simulate import SLICE_MS, Simulator, parse_incident
from streams.themes import load_taxonomy

pytestmark = pytest.mark.unit
START = 1_767_225_600_000
# 1 s panes, a 20 s baseline ending 2 s before the pane, at least 100 answers in it (a test's time scale)
FAST = EffortConfig(delta=0.10, threshold=10.0, guard_ms=2000, baseline_ms=20_000, short_ms=5000, min_baseline=100)


def events(seed: int, seconds: int, incidents: list[str], rate: float = 200.0) -> list[dict]:
    simulator = Simulator(
        seed=seed,
        rate=rate,
        start_ms=START,
        incidents=[parse_incident(text) for text in incidents],
        channels=("chat", "phone"),
        journeys=("billing", "support"),
    )
    return [event for batch in simulator.run(seconds * 1000) for event in batch]


def alerts_of(tmp_path: Path, batch: list[dict]) -> list[dict]:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in batch))
    return list(replay_file(path, 1000, lambda dead: None, matcher=ThemeMatcher(load_taxonomy())).alerts(FAST))


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    first, again, other = events(3, 20, []), events(3, 20, []), events(4, 20, [])
    assert first == again
    assert first != other
    assert len(first) == 20 * 200  # the rate, exactly, over whole slices
    valid, dead = validate_batch(first)
    assert not dead and len(valid) == len(first)  # canonical, valid events
    assert all(START <= e["occurred_at"] < START + 20_000 for e in first)
    customers = Counter(e["customer_id"] for e in first)
    assert sum(1 for n in customers.values() if n > 1) > 100  # customers answering along a journey


def test_an_effort_incident_fires_in_replay_for_its_segment_naming_its_touchpoint(tmp_path: Path) -> None:
    fired = alerts_of(tmp_path, events(5, 90, ["effort:chat/billing@+45s"]))
    firing = [a for a in fired if a["state"] == "FIRING"]
    assert firing, fired
    assert {(a["channel"], a["journey"]) for a in firing} == {("chat", "billing")}
    first = firing[0]
    assert START + 45_000 <= first["at"] <= START + 60_000  # within 15 s of the step at these volumes
    assert first["root_cause"][0] == {**first["root_cause"][0], "kind": "TOUCHPOINT", "name": "bot"}
    # its customers complain about the bot, in English and Dutch: the cause names the theme (contract section 9)
    themes = [cause["name"] for cause in first["root_cause"] if cause["kind"] == "THEME"]
    assert themes and themes[0] == "bot_self_service", first["root_cause"]


def test_no_incident_no_alert_and_an_incident_that_ends_resolves(tmp_path: Path) -> None:
    assert alerts_of(tmp_path, events(5, 90, [])) == []
    fired = alerts_of(tmp_path, events(5, 120, ["effort:chat/billing@+40s~20s"]))
    assert [a["state"] for a in fired if a["channel"] == "chat"] == ["FIRING", "RESOLVED"], fired


def test_an_outage_silences_its_channel_for_its_duration() -> None:
    batch = events(6, 30, ["outage:chat@+10s~10s"])
    chat = [e["occurred_at"] - START for e in batch if e["channel"] == "chat"]
    assert chat and not [t for t in chat if 10_000 <= t < 20_000]
    assert [t for t in chat if t >= 20_000 + SLICE_MS]  # back after it


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("effort:chat@+1m", "needs CHANNEL/JOURNEY"),
        ("outage:chat/billing@+1m", "whole channel"),
        ("spike:chat/billing@+1m", "is not an incident"),
        ("effort:chat/billing@+5q", "is not a duration"),
    ],
)
def test_a_bad_incident_is_a_usage_error_naming_the_problem(text: str, why: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--incident", text, "--to-file", str(tmp_path / "x"), "--duration", "1m"]
    )
    assert result.exit_code == 2
    assert why in result.output and "Traceback" not in result.output


def test_simulate_to_file_writes_what_replay_reads(tmp_path: Path) -> None:
    path = tmp_path / "sim.avro"
    runner = CliRunner()
    args = [
        "simulate",
        "--rate",
        "50",
        "--duration",
        "30s",
        "--start",
        str(START),
        "--invalid-share",
        "0",
        "--to-file",
        str(path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 1500 events" in result.output
    replayed = replay_file(path, 60_000, lambda dead: None)
    assert replayed.stats.valid == 1500
    assert runner.invoke(app, [*args[:-2], "--to-file", str(tmp_path / "again.avro")]).exit_code == 0
    again = replay_file(tmp_path / "again.avro", 60_000, lambda dead: None)
    assert again.panes == replayed.panes
    missing = runner.invoke(app, ["simulate", "--to-file", str(tmp_path / "y.jsonl")])
    assert missing.exit_code == 2 and "--duration" in missing.output


def test_an_invalid_share_gives_dead_letters_of_several_reasons() -> None:
    simulator = Simulator(seed=2, rate=500, start_ms=START, invalid_share=0.05)
    batch = [event for part in simulator.run(20_000) for event in part]
    valid, dead = validate_batch(batch)
    assert 0.03 * len(batch) < len(dead) < 0.07 * len(batch)
    assert len({letter.reason for letter in dead}) >= 3
    assert len(valid) + len(dead) == len(batch)


def test_the_daily_curve_keeps_the_mean_and_shapes_the_day() -> None:
    from streams.simulate import daily_volume

    day = [daily_volume(START + minute * 60_000) for minute in range(24 * 60)]
    assert sum(day) / len(day) == pytest.approx(1.0, rel=1e-3)
    simulator = Simulator(seed=1, rate=10, start_ms=START, daily_curve=True)  # START is midnight UTC
    per_hour = [0] * 24
    for batch in simulator.run(24 * 3_600_000):
        for e in batch:
            per_hour[(e["occurred_at"] - START) // 3_600_000] += 1
    assert sum(per_hour) == pytest.approx(24 * 3600 * 10, rel=0.01)
    assert max(per_hour[:5]) < 0.2 * 36_000 and min(per_hour[9:11]) > 1.4 * 36_000  # night vs mid-morning


def test_customers_go_through_multi_contact_journeys_that_end_worse_the_more_stops_they_take(tmp_path: Path) -> None:
    from streams.core.journey_kpis import JourneyCounts, counts_of, journey_kpis
    from streams.simulate import ESCALATION, SELF_SERVICE

    simulator = Simulator(seed=9, rate=60, start_ms=START, comeback_ms=120_000)
    batch = [event for part in simulator.run(1800_000) for event in part]
    path = tmp_path / "journeys.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in batch))
    replay = replay_file(path, 60_000, lambda dead: None, journey_gap_ms=600_000)
    instances = replay.journey_instances(now_ms=START + 2 * 3600_000)
    contacts = Counter(min(i.contacts, 5) for i in instances)
    assert contacts[1] > contacts[2] > contacts[3] > contacts[4] > 0  # most resolve at once, some take 4 stops
    assert contacts[5] < 0.002 * len(instances)  # the fourth contact resolves (more: a customer id drawn twice)
    assert any(i.answers > i.contacts for i in instances)  # a contact surveyed twice: one interaction id
    total = sum((counts_of(i) for i in instances), start=JourneyCounts())
    kpis = journey_kpis(total)
    assert 45 < kpis["one_stop_rate"] < 75 and 1.3 < kpis["contacts_per_journey"] < 1.9  # type: ignore[operator]
    # the further along, the worse the outcome: the mean last x falls with the number of contacts
    last = {n: [i.last_x for i in instances if i.contacts == n] for n in (1, 2, 3, 4)}
    means = [sum(v) / len(v) for v in last.values()]
    assert means == sorted(means, reverse=True) and means[0] - means[3] > 0.05, means
    # a customer coming back takes the channel's escalation path: switches follow it
    by_contact: dict[str, dict] = {}
    for e in batch:
        by_contact.setdefault(e["interaction_id"], e)
    walks: Counter[tuple[str, str]] = Counter()
    off_path = 0  # a customer id drawn again for another journey start: rare
    journeys: dict[tuple[str, str], list[dict]] = {}
    for e in sorted(by_contact.values(), key=lambda e: e["occurred_at"]):
        journeys.setdefault((e["customer_id"], e["journey"]), []).append(e)
    for stops in journeys.values():
        for before, after in zip(stops, stops[1:], strict=False):
            walks[(before["channel"], after["channel"])] += 1
            off_path += after["channel"] not in ESCALATION[before["channel"]]
    assert walks[("chat", "phone")] > 0 and walks[("web", "chat")] > 0 and off_path < 0.01 * walks.total()
    firsts = Counter(stops[0]["touchpoint"] in SELF_SERVICE for stops in journeys.values() if len(stops) > 1)
    assert firsts[True] > firsts[False]  # self-service resolves less often: more of the multi-stop journeys start there


def test_simulated_comments_fit_their_answer_in_english_and_dutch_and_the_bot_incident_is_about_the_bot() -> None:
    """Read with the shipped taxonomy (contract section 9): the effort incident's bad bot answers mention the bot,
    good answers mention no complaint, and customers write in both languages (each in one of them)."""
    from streams.config import Settings
    from streams.core.comments import read_comment
    from streams.core.synth import COMMENTS_BAD, COMMENTS_GOOD, COMMENTS_INCIDENT
    from streams.themes import theme_matcher

    matcher = theme_matcher(Settings())
    batch = events(8, 90, ["effort:chat/billing@+30s"])
    commented = [e for e in batch if e["comment"]]

    def in_the_incident(e: dict) -> bool:
        return (e["channel"], e["journey"]) == ("chat", "billing") and e["occurred_at"] >= START + 30_000

    hit = [e for e in batch if in_the_incident(e)]
    outside = [e for e in batch if not in_the_incident(e)]
    assert 0.1 < sum(bool(e["comment"]) for e in outside) / len(outside) < 0.2  # about 15%, without an incident
    # the customers a broken bot fails write more often (70% of the unhappy ones, against 40%)
    bot_hit = [e for e in hit if e["touchpoint"] == "bot"]
    assert sum(bool(e["comment"]) for e in bot_hit) / len(bot_hit) > 0.3
    pools = [*COMMENTS_BAD.values(), *COMMENTS_GOOD.values(), *COMMENTS_INCIDENT.values()]
    dutch = {text for _, nl in pools for text in nl}
    assert all(e["comment"] in dutch or any(e["comment"] in en for en, _ in pools) for e in commented)
    languages: dict[str, set[bool]] = {}
    for e in commented:
        languages.setdefault(e["customer_id"], set()).add(e["comment"] in dutch)
    assert all(len(found) == 1 for found in languages.values())  # a customer writes in one language
    assert 0.4 < sum(e["comment"] in dutch for e in commented) / len(commented) < 0.8
    bot = [e for e in commented if e["touchpoint"] == "bot" and e["occurred_at"] >= START + 30_000]
    bad_bot = [e for e in bot if "repeat_contact" in e["reason_codes"]]
    assert len(bad_bot) > 10
    assert all("bot_self_service" in read_comment(e["comment"], matcher, "redacted").themes for e in bad_bot)
    # in the incident's own words, which the bot's unhappy customers before it do not use
    incident = [e for e in bad_bot if e["journey"] == "billing"]
    assert len(incident) > 10 and all("loop" in e["comment"].lower() for e in incident)
    before = [e for e in commented if e["touchpoint"] == "bot" and e["occurred_at"] < START + 30_000]
    assert before and not any("loop" in e["comment"].lower() for e in before)
    complaints = {"waiting", "transfers", "not_resolved", "repeat_contact", "bot_self_service"}
    good = [
        e
        for e in commented
        if e["reason_codes"] and set(e["reason_codes"]) <= {"fast", "friendly", "first_contact_resolution"}
    ]
    assert good and not any(complaints & set(read_comment(e["comment"], matcher, "redacted").themes) for e in good)


@pytest.mark.parametrize("phase_ms", [0, 2500])
def test_the_demos_incident_names_its_theme_whichever_pane_fires(
    phase_ms: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cxpulse demo`'s simulation and detector settings: the alert names the bot and its theme when it fires, and
    also when it fires a pane or two later (a higher threshold H), and with room: the theme's rise clears z = 3,
    not only the 1.96 that names it.  With the incident in its own baseline (a 5 s guard) and fewer comments from
    its customers, the rise was significant at some panes and not at others (z 1.5-2.8), and the demo's alert named
    the theme in about 3 runs of 4 (CI on 63e1179 among them), though replays of its simulation named it."""
    import dataclasses

    from streams.commands.base import parse_ms
    from streams.config import effort_config, load_settings
    from streams.demo import DEMO_ENV, SIMULATION

    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    options = dict(zip(SIMULATION[::2], SIMULATION[1::2], strict=True))
    simulator = Simulator(
        seed=int(options["--seed"]),
        rate=float(options["--rate"]),
        start_ms=START + phase_ms,
        incidents=[parse_incident(options["--incident"])],
        journeys=tuple(options["--journeys"].split(",")),
        comeback_ms=parse_ms(options["--comeback"], "--comeback"),
    )
    path = tmp_path / "demo.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for batch in simulator.run(90_000) for e in batch))
    replay = replay_file(path, settings.pane_seconds * 1000, lambda dead: None, matcher=ThemeMatcher(load_taxonomy()))
    config = effort_config(settings)
    # with room to spare: a live run's answers fall into panes otherwise than a replay's file does
    monkeypatch.setattr("streams.core.effort.ROOT_CAUSE_Z", 3.0)
    fired_at = []
    for threshold in (config.threshold, config.threshold * 1.25, config.threshold * 1.5):
        firing = [a for a in replay.alerts(dataclasses.replace(config, threshold=threshold)) if a["state"] == "FIRING"]
        assert {(a["channel"], a["journey"]) for a in firing} == {("chat", "billing")}, firing
        causes = [(cause["kind"], cause["name"]) for cause in firing[0]["root_cause"]]
        assert ("TOUCHPOINT", "bot") in causes and ("THEME", "bot_self_service") in causes, (threshold, causes)
        fired_at.append(firing[0]["at"])
    assert fired_at[0] < fired_at[-1] <= START + phase_ms + 90_000, fired_at  # later panes, within the demo
