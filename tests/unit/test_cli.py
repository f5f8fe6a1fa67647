"""What a new user types: one-line errors with the right exit code, help that shows its notes, settings that
mean what the README says (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from tests.support import event

pytestmark = pytest.mark.unit
runner = CliRunner()


def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event(event_id=f"e{i}", occurred_at=1_700_000_000_000 + i * 7_000)) + "\n"
                            for i in range(20)))  # fmt: skip
    return path


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("cxpulse ")


def test_help_shows_its_env_notes() -> None:
    result = runner.invoke(app, ["replay", "--help"])
    assert "[env CXPULSE_PANE_SECONDS" in result.output
    assert "[env CXPULSE_FEEDBACK_TOPIC]" in runner.invoke(app, ["produce", "--help"]).output


def test_user_text_in_a_message_is_not_markup() -> None:
    result = runner.invoke(app, ["replay", "no[bold]such[/bold].jsonl"])
    assert result.exit_code == 1
    assert "no[bold]such[/bold].jsonl" in result.output


def test_replay_takes_the_pane_from_the_environment(tmp_path: Path) -> None:
    path = events_file(tmp_path)
    result = runner.invoke(app, ["replay", str(path), "-q"], env={"CXPULSE_PANE_SECONDS": "30"})
    assert result.exit_code == 0, result.output
    spans = {json.loads(line)["window_end"] != json.loads(line)["window_start"] for line in result.output.splitlines()}
    assert spans == {True}
    starts = {json.loads(line)["window_start"][17:19] for line in result.output.splitlines()}
    assert starts == {"00", "30"}  # 30-second panes
    assert runner.invoke(app, ["replay", str(path), "-q"]).output != result.output  # 60 s panes differ


def test_an_invalid_setting_stops_replay_with_exit_2_naming_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", str(events_file(tmp_path))], env={"CXPULSE_PANE_SECONDS": "abc"})
    assert result.exit_code == 2 and "CXPULSE_PANE_SECONDS" in result.output


def test_topics_blames_the_flag_typed() -> None:
    result = runner.invoke(app, ["topics", "--partitions", "0"])
    assert result.exit_code == 2 and "--partitions 0" in result.output and "CXPULSE_PARTITIONS" not in result.output


@pytest.mark.parametrize("option", ["-o", "--dead-letter", "--alerts"])
def test_unwritable_outputs_are_one_line_errors(tmp_path: Path, option: str) -> None:
    path = events_file(tmp_path)
    for target in (tmp_path / "no" / "such" / "dir" / "x", tmp_path):  # a missing folder, a folder
        result = runner.invoke(app, ["replay", str(path), option, str(target)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert option in result.output or "--output" in result.output


def test_an_impossible_port_is_a_usage_error() -> None:
    for args in (["broker", "--port", "99999"], ["broker", "--controller-port", "0"], ["demo", "--port", "-1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)


def test_an_unusable_data_folder_is_a_one_line_error() -> None:
    result = runner.invoke(app, ["broker"], env={"CXPULSE_DATA_DIR": "/proc/nope"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "data folder /proc/nope" in result.output and len(result.output.strip().splitlines()) == 1


def test_tables_are_not_cut_to_80_columns_off_a_terminal() -> None:
    from streams import cli

    assert not cli.out.is_terminal  # pytest captures stdout
    assert cli.out.width >= 200


@pytest.mark.parametrize(("value", "windows"), [("300,3600", (300, 3600)), ("5m, 1h,24h", (300, 3600, 86400)),
                                                ("[60, 300]", (60, 300))])  # fmt: skip
def test_windows_take_the_natural_forms(value: str, windows: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.config import load_settings

    monkeypatch.setenv("CXPULSE_WINDOWS_SECONDS", value)
    assert load_settings().windows_seconds == windows


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("CXPULSE_WINDOWS_SECONDS", "5m,soon", "CXPULSE_WINDOWS_SECONDS: 'soon' is not a duration"),
        ("CXPULSE_CLICKHOUSE_URL", "mysql://x", "use chdb://PATH (the embedded store), http(s)://"),
        ("CXPULSE_KPI_COMPONENT_WINDOWS", "2h", "not among CXPULSE_WINDOWS_SECONDS"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, name: str, value: str, says: str) -> None:
    """CXPULSE_WINDOWS_SECONDS=300,3600 ended in a pydantic traceback (exit 1); mysql:// in a driver's dump."""
    result = runner.invoke(app, ["replay", str(events_file(tmp_path))], env={name: value})
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_replay_refuses_a_file_that_is_something_else(tmp_path: Path) -> None:
    """`replay feedback.csv` and `replay /usr/bin/true` exited 0 with everything undecodable."""
    csv = tmp_path / "feedback.csv"
    csv.write_text("event_id,occurred_at,channel,metric,score\ne1,2026-01-01,chat,NPS,9\n")
    result = runner.invoke(app, ["replay", str(csv)])
    assert result.exit_code == 1 and "it looks like CSV (first line: 'event_id,occurred_at" in result.output
    result = runner.invoke(app, ["replay", "/usr/bin/true"])
    assert result.exit_code == 1 and "it looks like an ELF executable" in result.output
    result = runner.invoke(app, ["produce", str(csv), "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 1 and "it looks like CSV" in result.output  # refused before Kafka is asked


def test_replay_warns_about_answers_a_worker_would_refuse_for_their_time(tmp_path: Path) -> None:
    import time

    now = int(time.time() * 1000)
    path = tmp_path / "events.jsonl"
    stamps = [now + 3_600_000, now + 7_200_000, now - 30 * 86_400_000, now - 60_000]
    path.write_text("".join(json.dumps(event(event_id=f"e{i}", occurred_at=t)) + "\n" for i, t in enumerate(stamps)))
    result = runner.invoke(app, ["replay", str(path), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    assert "warning: 2 of the events counted lie more than 5 minutes in the future" in result.output
    assert "warning: 1 of the events counted are older than the retention (CXPULSE_RETENTION_SECONDS=604800)" in (
        result.output
    )


def test_simulate_to_a_file_writes_history_that_ends_now(tmp_path: Path) -> None:
    import time

    path = tmp_path / "history.jsonl"
    result = runner.invoke(app, ["simulate", "--duration", "1h", "--rate", "2", "--to-file", str(path)])
    assert result.exit_code == 0, result.output
    stamps = [json.loads(line).get("occurred_at") for line in path.read_text().splitlines()]
    stamps = [s for s in stamps if isinstance(s, int)]
    now = time.time() * 1000
    assert max(stamps) <= now and min(stamps) >= now - 3_600_000 - 60_000


def test_counts_say_one_in_the_singular(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(event()) + "\n")
    result = runner.invoke(app, ["replay", str(path), "--alerts", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "o")])
    assert "; 1 result; 0 effort alerts" in result.output, result.output
