"""`cxpulse replay`: a small file checked by hand, Avro input, dead letters and exit codes."""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest
from typer.testing import CliRunner

from schemas.codec import FEEDBACK_RAW, decode, parse
from streams.cli import app
from tests.support import cxpulse_command, event

T = 1_700_000_040_000  # a pane boundary (T % 60 000 == 0)
runner = CliRunner()


def lines_of(*items: dict[str, Any] | str) -> str:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items)


MIXED = lines_of(
    event(event_id="e1", metric="NPS", score=10, occurred_at=T + 1000),
    event(event_id="e2", metric="NPS", score=3, occurred_at=T + 2000),
    event(event_id="e3", metric="NPS", score=8, occurred_at=T + 59_999, channel="Phone ", journey=" BILLING"),
    event(event_id="e1", metric="NPS", score=0, occurred_at=T + 3000),  # duplicate: dropped
    event(event_id="e4", metric="CES", score=2, occurred_at=T + 60_000, channel="chat", journey="support"),
    event(event_id="e5", metric="CES", score=7, occurred_at=T + 61_000, channel="chat", journey="support"),
    event(event_id="", score=3),  # line 7: missing_field
    event(event_id="e8", metric="XYZ"),  # bad_metric
    event(event_id="e9", metric="CES", scale_min=3, scale_max=3),  # bad_scale
    event(event_id="e10", metric="CSAT", score=6),  # score_out_of_range
    event(event_id="e11", channel="#web"),  # bad_label
    "this is not json",  # line 12: undecodable
    "",  # blank line: not an event
    event(event_id="e13", metric="CSAT", score=4, occurred_at=T + 5000, channel="web", journey="onboarding"),
)


def run_replay(tmp_path: Path, content: str | bytes, *args: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    source = tmp_path / ("events.avro" if isinstance(content, bytes) else "events.jsonl")
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content)
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    result = runner.invoke(app, ["replay", str(source), "-o", str(out), "--dead-letter", str(dead), *args])
    assert result.exit_code == 0, result.output
    parse_lines = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    return parse_lines(out), parse_lines(dead)


def test_mixed_file_gives_exactly_the_results_the_contract_implies(tmp_path: Path) -> None:
    results, dead = run_replay(tmp_path, MIXED)
    assert [(r["window_start"], r["channel"], r["journey"], r["metric"], r["n"]) for r in results] == [
        ("2023-11-14T22:14:00.000Z", "phone", "billing", "NPS", 3),
        ("2023-11-14T22:14:00.000Z", "web", "onboarding", "CSAT", 1),
        ("2023-11-14T22:15:00.000Z", "chat", "support", "CES", 2),
    ]
    nps, csat, ces = results
    assert nps["window_end"] == "2023-11-14T22:15:00.000Z"
    assert (nps["promoters"], nps["passives"], nps["detractors"], nps["value"]) == (1, 1, 1, 0.0)
    assert nps["sum_x"] == pytest.approx(2.1) and nps["sum_x2"] == pytest.approx(1.73)
    assert nps["mean_normalized"] == pytest.approx(70.0)
    assert nps["moe95"] == pytest.approx(196 * math.sqrt(2 / 9))
    assert (csat["positive"], csat["value"], csat["moe95"], csat["mean_normalized"]) == (1, 100.0, None, 75.0)
    assert (ces["high_effort"], ces["value"]) == (1, pytest.approx(4.5))
    assert ces["moe95"] == pytest.approx(4.9)  # 1.96 * 6 * sqrt(25/72 / 2)
    assert all(r["version"] == 1 for r in results)
    assert [(d["reason"], d["position"]) for d in dead] == [
        ("missing_field", "line 7"),
        ("bad_metric", "line 8"),
        ("bad_scale", "line 9"),
        ("score_out_of_range", "line 10"),
        ("bad_label", "line 11"),
        ("undecodable", "line 12"),
    ]
    assert dead[-1]["event"] == "this is not json"
    assert json.loads(dead[0]["event"])["event_id"] == ""


def test_summary_counts_what_happened(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(MIXED)
    result = runner.invoke(app, ["replay", str(source)])
    assert result.exit_code == 0
    assert "replayed 13 events" in result.stderr
    assert "6 counted, 1 duplicates, 6 dead letters" in result.stderr
    assert len(result.stdout.splitlines()) == 3


def _avro_file(records: list[dict[str, Any]]) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(FEEDBACK_RAW), records)
    return out.getvalue()


def test_avro_container_gives_the_same_results_as_json_lines(tmp_path: Path) -> None:
    valid = [json.loads(line) for line in MIXED.splitlines()[:6]] + [json.loads(MIXED.splitlines()[-1])]
    bad = event(event_id="e10", metric="CSAT", score=6)
    json_results, _ = run_replay(tmp_path, lines_of(*valid, bad))
    avro_results, dead = run_replay(tmp_path, _avro_file([*valid, bad]))
    assert avro_results == json_results
    assert [(d["reason"], d["position"]) for d in dead] == [("score_out_of_range", "record 8")]
    original = decode(base64.b64decode(dead[0]["event"]), parse(FEEDBACK_RAW))
    assert (original["event_id"], original["score"]) == ("e10", 6)


def _records_of(path: Path) -> list[dict[str, Any]]:
    from streams.replay import read_batches

    return [record for batch, _ in read_batches(path) for record in batch.records]


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_avro_blocks_read_by_the_generated_decoder_are_what_fastavro_reads(tmp_path: Path, codec: str) -> None:
    """Blocks of the current schema go through the block decoder: every record as fastavro's reader gives it,
    occurred_at as epoch ms (fastavro's is a datetime), reason codes, nulls and unicode included."""
    records = [event(event_id=f"e{i}", occurred_at=T + i, score=i % 11, touchpoint=None if i % 3 else "Bot é",
                     reason_codes=["hold_time", "price"][: i % 3]) for i in range(3000)]  # fmt: skip
    path = tmp_path / "events.avro"
    with path.open("wb") as out:
        fastavro.writer(out, fastavro.parse_schema(FEEDBACK_RAW), records, codec=codec)
    with path.open("rb") as handle:
        expected = [{**r, "occurred_at": round(r["occurred_at"].timestamp() * 1000)} for r in fastavro.reader(handle)]
    got = _records_of(path)
    assert got == expected and len(got) == 3000
    assert all(type(r["occurred_at"]) is int for r in got)


def test_an_avro_file_of_another_schema_version_is_read_by_fastavro(tmp_path: Path) -> None:
    """A writer schema with one more field (an older or newer producer): not the block decoder's layout, so
    fastavro reads it, and the results are those of the same events in JSON lines."""
    from schemas.codec import is_current_feedback

    schema = {**FEEDBACK_RAW, "fields": [*FEEDBACK_RAW["fields"], {"name": "extra", "type": "long", "default": 0}]}
    in_micros = {"type": "long", "logicalType": "timestamp-micros"}
    micros = {**FEEDBACK_RAW, "fields": [{**f, "type": in_micros} if f["name"] == "occurred_at" else f
                                         for f in FEEDBACK_RAW["fields"]]}  # fmt: skip
    assert is_current_feedback(FEEDBACK_RAW) and not is_current_feedback(schema) and not is_current_feedback(micros)
    valid = [json.loads(line) for line in MIXED.splitlines()[:6]]
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), [{**e, "extra": 7} for e in valid])
    avro_results, _ = run_replay(tmp_path, out.getvalue())
    json_results, _ = run_replay(tmp_path, lines_of(*valid))
    assert avro_results == json_results


def test_a_block_the_generated_decoder_refuses_is_left_to_fastavro() -> None:
    from schemas.codec import read_feedback_block

    assert read_feedback_block(b"\x02\x00", 1) is None  # truncated: fastavro decides
    assert read_feedback_block(b"", 1) is None
    assert read_feedback_block(b"", 0) == []


def test_rolling_window_as_of_the_latest_event(tmp_path: Path) -> None:
    results, _ = run_replay(tmp_path, MIXED, "--window", "2m")
    assert [(r["window_start"], r["window_end"], r["metric"], r["n"]) for r in results] == [
        ("2023-11-14T22:14:00.000Z", "2023-11-14T22:16:00.000Z", "CES", 2),
        ("2023-11-14T22:14:00.000Z", "2023-11-14T22:16:00.000Z", "NPS", 3),
        ("2023-11-14T22:14:00.000Z", "2023-11-14T22:16:00.000Z", "CSAT", 1),
    ]


def test_truncated_avro_counts_what_was_read_and_dead_letters_the_rest(tmp_path: Path) -> None:
    records = [event(event_id=f"e{i}", occurred_at=T + i) for i in range(50_000)]
    data = _avro_file(records)
    results, dead = run_replay(tmp_path, data[: len(data) - 200])
    assert [d["reason"] for d in dead] == ["undecodable"]
    assert 0 < sum(r["n"] for r in results) < 50_000


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.jsonl", "no such file"),
        (lambda p: p, "is a directory"),
        (
            lambda p: (p / "other.avro", (p / "other.avro").write_bytes(_foreign_avro()))[0],
            "not FeedbackEvent",
        ),
    ],
)
def test_unreadable_input_exits_non_zero_with_one_line(tmp_path: Path, make: Any, message: str) -> None:
    done = subprocess.run(cxpulse_command("replay", str(make(tmp_path))), capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


def _foreign_avro() -> bytes:
    out = io.BytesIO()
    schema = {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "int"}]}
    fastavro.writer(out, fastavro.parse_schema(schema), [{"a": 1}])
    return out.getvalue()


def test_bad_pane_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "e.jsonl"
    source.write_text(MIXED)
    result = runner.invoke(app, ["replay", str(source), "--pane", "soon"])
    assert result.exit_code == 2
    assert "--pane" in result.stderr
