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
