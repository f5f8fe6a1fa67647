"""`cxpulse replay --themes OUT --answers OUT` (docs/contract.md section 9), as a user runs it: theme results worked
out by hand, the first of two copies with different comments is the one that counts, the answers as the store
keeps them (redacted, themes without "(any)"), CXPULSE_COMMENTS and CXPULSE_THEMES_FILE honoured, a bad taxonomy
refused in one line before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from streams.cli import app
from tests.support import event

runner = CliRunner()
PANE = 1_700_000_040_000  # a pane start (60 s panes)


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def replay(tmp_path: Path, events: list[dict[str, Any]], *extra: str, **env: str) -> tuple[Any, list[Any], list[Any]]:
    source = write(tmp_path / "events.jsonl", events)
    themes, answers = tmp_path / "themes.jsonl", tmp_path / "answers.jsonl"
    done = runner.invoke(
        app, ["replay", str(source), "-q", "-o", str(tmp_path / "out.jsonl"), "--themes", str(themes), "--answers",
              str(answers), *extra], env={"CXPULSE_PANE_SECONDS": "60", **env},
    )  # fmt: skip
    read = [[json.loads(line) for line in p.read_text().splitlines()] if p.exists() else [] for p in (themes, answers)]
    return done, read[0], read[1]


ANSWERS = [
    event(
        event_id="p", occurred_at=PANE + 1, metric="NPS", score=10, comment="Waited long, but on hold music was fine"
    ),
    event(event_id="d", occurred_at=PANE + 2, metric="NPS", score=0, comment="Rude agent. And on hold for ages!"),
    event(event_id="n", occurred_at=PANE + 3, metric="NPS", score=7),  # no comment: in no theme result
    event(event_id="x", occurred_at=PANE + 4, metric="NPS", score=8, comment="..."),  # no word: no comment
    event(event_id="p", occurred_at=PANE + 5, metric="NPS", score=10, comment="a copy: rude!"),  # a duplicate
]


def test_theme_results_by_hand(tmp_path: Path) -> None:
    done, themes, _ = replay(tmp_path, ANSWERS)
    assert done.exit_code == 0, done.output
    got = {r["theme"]: (r["n"], r["promoters"], r["passives"], r["detractors"], r["value"]) for r in themes}
    # (any): p and d (x has no word, n no comment); waiting: p ("waited", "on hold") and d ("on hold");
    # friendliness: d only ("rude"): the copy of p that says "rude" is a duplicate and counts nowhere
    assert got == {
        "(any)": (2, 1, 0, 1, 0.0),
        "waiting": (2, 1, 0, 1, 0.0),
        "friendliness": (1, 0, 0, 1, -100.0),
    }
    assert {(r["window_start"], r["channel"], r["journey"], r["metric"]) for r in themes} == {
        ("2023-11-14T22:14:00.000Z", "phone", "billing", "NPS")
    }
    assert all(set(r) >= {"n", "sum_x", "sum_x2", "moe95", "version", "theme"} for r in themes)


def test_rolling_windows_of_themes_add_the_panes(tmp_path: Path) -> None:
    later = event(event_id="q", occurred_at=PANE + 61_000, metric="NPS", score=9, comment="waited")
    done, themes, _ = replay(tmp_path, [*ANSWERS, later], "--window", "2m")
    assert done.exit_code == 0, done.output
    assert {r["theme"]: r["n"] for r in themes} == {"(any)": 3, "waiting": 3, "friendliness": 1}


def test_answers_are_written_as_the_store_keeps_them(tmp_path: Path) -> None:
    leaky = event(event_id="m", occurred_at=PANE + 9, comment="mail jan@example.nl, NL91ABNA0417164300, 0612345678")
    done, _, answers = replay(tmp_path, [*ANSWERS, leaky])
    assert done.exit_code == 0, done.output
    by_id = {a["event_id"]: a for a in answers}
    assert list(by_id) == ["p", "d", "n", "x", "m"]  # counted answers, in order, the duplicate not among them
    assert by_id["p"]["comment"] == "Waited long, but on hold music was fine" and by_id["p"]["themes"] == ["waiting"]
    assert by_id["d"]["themes"] == ["friendliness", "waiting"] and by_id["d"]["detractor"] == 1
    assert by_id["n"]["comment"] is None and by_id["n"]["themes"] == [] and not by_id["n"]["commented"]
    assert by_id["p"]["commented"] and by_id["m"]["commented"]  # a word ("mail"): it counts under "(any)"
    # the rule takes everything but white space and @ around the @: the comma goes with the address
    assert by_id["m"]["comment"] == "mail [email] [iban], [number]" and by_id["m"]["themes"] == []
    assert by_id["m"]["channel"] == "phone" and by_id["m"]["occurred_at"] == "2023-11-14T22:14:00.009Z"


def test_comments_themes_drops_the_text_and_off_drops_the_themes(tmp_path: Path) -> None:
    done, themes, answers = replay(tmp_path, ANSWERS, CXPULSE_COMMENTS="themes")
    assert done.exit_code == 0, done.output
    # p, d, n, x ("..."): the text is gone, not the fact that there was one
    assert [a["commented"] for a in answers] == [True, True, False, False]
    assert all(a["comment"] is None for a in answers) and {r["theme"] for r in themes} == {
        "(any)",
        "waiting",
        "friendliness",
    }
    done, themes, answers = replay(tmp_path, ANSWERS, CXPULSE_COMMENTS="off")
    assert done.exit_code == 0 and themes == [] and all(a["themes"] == [] and not a["commented"] for a in answers)


def test_a_themes_file_of_ones_own_and_a_bad_one(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text("themes:\n  music:\n    - music\n")
    done, themes, _ = replay(tmp_path, ANSWERS, CXPULSE_THEMES_FILE=str(own))
    assert done.exit_code == 0 and {r["theme"] for r in themes} == {"(any)", "music"}
    own.write_text("themes:\n  music:\n    - '*music'\n")
    done, _, _ = replay(tmp_path, ANSWERS, CXPULSE_THEMES_FILE=str(own))
    assert done.exit_code == 1
    assert f"replay: themes file {own}: theme 'music', pattern '*music': a * must end a word" in done.output
