"""What misled a new user in their first hour, each as they typed it (issue 34): standard input and output, a
metric in another case, window labels of short panes, help texts against docs/usage.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.codec import LocalCatalog
from streams import produce
from streams.cli import app
from streams.config import REPO_ROOT
from streams.core.validate import validate_record
from streams.kafka import KafkaCluster
from streams.render import span_label
from tests.support import cxpulse_command, event

pytestmark = pytest.mark.unit
runner = CliRunner()
START = 1_700_000_000_000


def answers(tmp_path: Path, count: int = 40) -> Path:
    path = tmp_path / "answers.jsonl"
    rows = [event(event_id=f"e{i}", occurred_at=START + i * 7_000, customer_id=f"c{i % 5}") for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cxpulse_command(*args), input=stdin, capture_output=True, check=False, timeout=120)


def test_replay_reads_standard_input_and_writes_standard_output(tmp_path: Path) -> None:
    """`cat answers.jsonl | cxpulse replay -` (it said `/dev/stdin: None`), `-o -` and `--journeys -` (they made a
    file named `-`): the same results as from the file."""
    source = answers(tmp_path)
    from_file = run("replay", str(source), "-q")
    assert from_file.returncode == 0 and from_file.stdout
    for name in ("-", "/dev/stdin"):
        piped = run("replay", name, "-q", "-o", "-", stdin=source.read_bytes())
        assert (piped.returncode, piped.stdout) == (0, from_file.stdout), piped.stderr
    journeys = run(
        "replay", "-", "-q", "-o", str(tmp_path / "results.jsonl"), "--journeys", "-", stdin=source.read_bytes()
    )
    assert journeys.returncode == 0 and len(journeys.stdout.splitlines()) == 5  # one journey per customer
    assert not (Path.cwd() / "-").exists()


def test_replay_reads_an_avro_container_from_standard_input(tmp_path: Path) -> None:
    avro = tmp_path / "answers.avro"
    made = run("simulate", "--to-file", str(avro), "--duration", "2m", "--rate", "3")
    assert made.returncode == 0, made.stderr
    assert run("replay", "-", "-q", stdin=avro.read_bytes()).stdout == run("replay", str(avro), "-q").stdout != b""


def test_a_metric_in_another_case_says_which_one_was_meant() -> None:
    refused = validate_record({**event(), "metric": "nps", "scale_min": 0, "scale_max": 10})
    assert refused == (
        "bad_metric",
        "metric 'nps' is not one of NPS, CES, CSAT, NLS, CAS (did you mean 'NPS'? metric names are upper case)",
    )
    assert "did you mean" not in validate_record({**event(), "metric": "XYZ"})[1]  # type: ignore[index]


def test_windows_of_short_panes_are_labelled_to_the_second() -> None:
    """`report --window pane` with the demo's 5-second panes labelled every row to the minute."""
    assert span_label(START, START + 5_000) == "2023-11-14T22:13:20 → 22:13:25"
    minute = START - START % 60_000
    assert span_label(minute, minute + 300_000) == "2023-11-14T22:13 → 22:18"


def test_the_help_texts_say_what_the_commands_do() -> None:
    produce = runner.invoke(app, ["produce", "--help"], env={"COLUMNS": "200"}).output
    assert "on stdout" in produce and "stderr)" not in produce.split("--validate")[1].split("\n")[0]
    assert "README: Root cause" not in runner.invoke(app, ["drivers", "--help"], env={"COLUMNS": "200"}).output
    worker = " ".join(runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "the hot path, merge, journeys" in worker and "the Faust process" not in worker


def test_every_option_docs_usage_shows_is_an_option_of_its_command() -> None:
    """The command table of docs/usage.md against each command's --help."""
    usage = (REPO_ROOT / "docs" / "usage.md").read_text()
    rows = re.findall(r"^\| `cxpulse (\w+)([^`]*)` \|", usage, flags=re.MULTILINE)
    assert len(rows) >= 12
    for command, synopsis in rows:
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        for option in re.findall(r"(--[a-z][a-z-]*)", synopsis):
            assert option in shown, (command, option)


class _InterruptedProducer:
    """librdkafka's producer as `produce` sees it, with Ctrl-C landing right after the ``at``-th produce() it took:
    the message is queued, the count after it has not run."""

    def __init__(self, at: int) -> None:
        self.at, self.queued = at, []

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, **options: Any) -> None:
        self.queued.append(options["on_delivery"])
        if len(self.queued) == self.at:
            raise KeyboardInterrupt

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        for on_delivery in self.queued[:-1]:  # all but the last are delivered; the last is still in the queue
            on_delivery(None, None)
        self.queued = self.queued[-1:]
        return len(self.queued)

    def __len__(self) -> int:
        return len(self.queued)


def test_ctrl_c_after_a_produce_counts_that_message_as_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI saw `44584 events sent, 44585 of them delivered`: the interrupt came between a produce() and its count."""
    out = _InterruptedProducer(at=25)
    monkeypatch.setattr(produce, "producer", lambda kafka, **options: out)
    monkeypatch.setattr(produce, "check_topic", lambda kafka, topic: None)
    stats = produce.produce_file(answers(tmp_path), KafkaCluster("127.0.0.1:9"), "feedback", LocalCatalog())
    assert stats.interrupted and (stats.sent, stats.delivered) == (25, 24)
