"""`cxpulse import` (streams/history.py): a Qualtrics-style export written for the test (three header rows, Dutch
labels, a reversed effort question, blank cells, both DST changes of 2026 in its local times, a duplicate response,
a row with a bad score and an unknown label), its mapping, and the events worked out by hand; the same export as
.xlsx gives the same events; the command's exit code, refusals file and summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.history import ImportError_, import_export, load_mapping

HEADER = [
    "StartDate;EndDate;Status;RecordedDate;ResponseId;ExternalReference;Kanaal;Q1_NPS;Q2_CES;Q3_CSAT;Q4_Toelichting",
    '"Start Date";"End Date";"Response Type";"Recorded Date";"Response ID";"External Data Reference";"Kanaal";'
    '"Hoe waarschijnlijk is het dat u ons aanbeveelt?";"Hoeveel moeite kostte het? (1 = weinig moeite)";'
    '"Hoe tevreden bent u?";"Toelichting"',
    '"{""ImportId"":""startDate""}";"{""ImportId"":""endDate""}";"{""ImportId"":""status""}";'
    '"{""ImportId"":""recordedDate""}";"{""ImportId"":""_recordId""}";"{""ImportId"":""externalDataReference""}";'
    '"{""ImportId"":""QID7""}";"{""ImportId"":""QID1""}";"{""ImportId"":""QID2""}";"{""ImportId"":""QID3""}";'
    '"{""ImportId"":""QID4_TEXT""}"',
]
ROWS = [
    # row 4: winter time (CET, +01:00)
    "2026-03-28 10:10:00;2026-03-28 10:15:00;0;2026-03-28 10:15:00;R_001;K-17;Telefoon;9;2;Zeer tevreden;Snel geholpen",
    # row 5: 02:30 on 29 March does not exist in Amsterdam (the clocks went from 02:00 to 03:00)
    "2026-03-29 02:25:00;2026-03-29 02:30:00;0;2026-03-29 02:30:00;R_002;K-18;Chat;8;1;Tevreden;",
    # row 6: summer time (CEST, +02:00); the effort question left blank
    "2026-03-29 03:20:00;2026-03-29 03:30:00;0;2026-03-29 03:30:00;R_003;;Chat;3;;Ontevreden;",
    # row 7: R_001 again (a second export of the same response)
    "2026-03-28 10:10:00;2026-03-28 10:15:00;0;2026-03-28 10:15:00;R_001;K-17;Telefoon;10;1;Zeer tevreden;Dubbel",
    # row 8: 02:30 on 25 October happens twice (03:00 back to 02:00): the mapping says earlier (still +02:00)
    "2026-10-25 02:20:00;2026-10-25 02:30:00;0;2026-10-25 02:30:00;R_004;K-19;Telefoon;10;3;Tevreden;Top",
    # row 9: an NPS of 11 (out of range) and a label the mapping does not know; its effort answer counts
    "2026-04-01 11:55:00;2026-04-01 12:00:00;0;2026-04-01 12:00:00;R_005;K-20;Telefoon;11;7;Heel blij;",
    "",  # an empty line at the end, as spreadsheets write
]
MAPPING = """
preset: qualtrics
time:
  timezone: Europe/Amsterdam
  ambiguous: earlier
source: {value: qualtrics}
journey: {value: billing}
channel:
  column: Kanaal
  values: {Telefoon: phone, Chat: chat}
customer_id: {column: ExternalReference}
comment: {column: Q4_Toelichting}
questions:
  - {column: Q1_NPS, metric: NPS}
  - {column: Q2_CES, metric: CES, scale: [1, 7], reverse: true}
  - column: Q3_CSAT
    metric: CSAT
    scale: [1, 5]
    labels: {Zeer ontevreden: 1, Ontevreden: 2, Neutraal: 3, Tevreden: 4, Zeer tevreden: 5}
"""


def ms(*parts: int) -> int:
    return round(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def event(response: str, question: str, at: int, channel: str, metric: str, score: int, lo: int, hi: int,
          **more: str) -> dict:  # fmt: skip
    head = {"event_id": f"{response}:{question}", "occurred_at": at, "source": "qualtrics", "channel": channel}
    return {**head, "journey": "billing", **more, "metric": metric, "score": score, "scale_min": lo, "scale_max": hi}


# by hand: 10:15 CET is 09:15 UTC; 03:30 CEST is 01:30 UTC; 02:30 on 25 October, the earlier (CEST), is 00:30 UTC;
# 12:00 CEST is 10:00 UTC.  The effort question is reversed on 1-7: 2 -> 6, 7 -> 1.
EXPECTED = [
    event("R_001", "Q1_NPS", ms(2026, 3, 28, 9, 15), "phone", "NPS", 9, 0, 10, customer_id="K-17",
          comment="Snel geholpen"),
    event("R_001", "Q2_CES", ms(2026, 3, 28, 9, 15), "phone", "CES", 6, 1, 7, customer_id="K-17",
          comment="Snel geholpen"),
    event("R_001", "Q3_CSAT", ms(2026, 3, 28, 9, 15), "phone", "CSAT", 5, 1, 5, customer_id="K-17",
          comment="Snel geholpen"),
    event("R_003", "Q1_NPS", ms(2026, 3, 29, 1, 30), "chat", "NPS", 3, 0, 10),
    event("R_003", "Q3_CSAT", ms(2026, 3, 29, 1, 30), "chat", "CSAT", 2, 1, 5),
    event("R_004", "Q1_NPS", ms(2026, 10, 25, 0, 30), "phone", "NPS", 10, 0, 10, customer_id="K-19", comment="Top"),
    event("R_004", "Q2_CES", ms(2026, 10, 25, 0, 30), "phone", "CES", 5, 1, 7, customer_id="K-19", comment="Top"),
    event("R_004", "Q3_CSAT", ms(2026, 10, 25, 0, 30), "phone", "CSAT", 4, 1, 5, customer_id="K-19", comment="Top"),
    event("R_005", "Q2_CES", ms(2026, 4, 1, 10, 0), "phone", "CES", 1, 1, 7, customer_id="K-20"),
]  # fmt: skip
REFUSED = [
    (5, "RecordedDate", "nonexistent_time"),
    (7, "ResponseId", "duplicate_response"),
    (9, "Q1_NPS", "score_out_of_range"),
    (9, "Q3_CSAT", "unknown_label"),
]


def write_export(folder: Path) -> Path:
    path = folder / "qualtrics export.csv"
    path.write_bytes(("\r\n".join([*HEADER, *ROWS])).encode("utf-8-sig"))  # Excel's UTF-8 CSV: a BOM, CRLF
    return path


def write_mapping(folder: Path, text: str = MAPPING) -> Path:
    path = folder / "mapping.yaml"
    path.write_text(text)
    return path


def test_a_qualtrics_export_becomes_the_events_worked_out_by_hand(tmp_path: Path) -> None:
    converted = import_export(write_export(tmp_path), load_mapping(write_mapping(tmp_path)))
    assert converted.events == EXPECTED
    assert [(r.row, r.column, r.reason) for r in converted.refusals] == REFUSED
    assert converted.rows == 6 and converted.blank_answers == 1  # R_003's effort question
    assert "does not exist in Europe/Amsterdam" in converted.refusals[0].detail
    assert "also row 4" in converted.refusals[1].detail


def test_the_same_export_as_xlsx_gives_the_same_events(tmp_path: Path) -> None:
    from openpyxl import Workbook  # type: ignore[import-untyped]

    book = Workbook()
    sheet = book.active
    for line in [HEADER[0], "x;" * 10 + "x", "y;" * 10 + "y", *ROWS[:-1]]:
        cells: list[object] = list(line.split(";"))
        if cells[7].isdigit():  # numbers as numbers, the way a spreadsheet keeps them
            cells[7] = int(str(cells[7]))
        if str(cells[0]).startswith("2026-"):  # and times as date cells (no zone: the DST rules apply to them too)
            for at in (0, 1, 3):
                cells[at] = datetime.strptime(str(cells[at]), "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 - local, naive
        sheet.append([cell if cell != "" else None for cell in cells])
    path = tmp_path / "export.xlsx"
    book.save(path)
    converted = import_export(path, load_mapping(write_mapping(tmp_path)))
    assert converted.events == EXPECTED
    assert [(r.row, r.column, r.reason) for r in converted.refusals] == REFUSED


def test_ambiguous_and_nonexistent_times_are_refused_unless_the_mapping_resolves_them(tmp_path: Path) -> None:
    strict = MAPPING.replace("  ambiguous: earlier\n", "")
    converted = import_export(write_export(tmp_path), load_mapping(write_mapping(tmp_path, strict)))
    assert (8, "RecordedDate", "ambiguous_time") in [(r.row, r.column, r.reason) for r in converted.refusals]
    later = MAPPING.replace("ambiguous: earlier", "ambiguous: later\n  nonexistent: shift")
    converted = import_export(write_export(tmp_path), load_mapping(write_mapping(tmp_path, later)))
    at = {e["event_id"]: e["occurred_at"] for e in converted.events}
    assert at["R_004:Q1_NPS"] == ms(2026, 10, 25, 1, 30)  # the later 02:30 is +01:00
    assert at["R_002:Q1_NPS"] == ms(2026, 3, 29, 1, 30)  # 02:30 read with +01:00: 03:30 CEST


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("preset: qualtrik\n", "preset 'qualtrik' is not one of qualtrics, surveymonkey"),
        (
            MAPPING.replace("Europe/Amsterdam", "Europe/Amsterdm"),
            "timezone: 'Europe/Amsterdm' is not an IANA",
        ),
        (MAPPING.replace("source: {value: qualtrics}\n", ""), "source missing"),
        (MAPPING.replace("metric: NPS", "metric: NSP"), "questions.0.metric"),
        (MAPPING.replace("Q1_NPS, metric", "Q9, metric"), "the export has no column 'Q9'"),
    ],
)
def test_a_mapping_that_cannot_be_used_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ImportError_) as caught:
        import_export(write_export(tmp_path), load_mapping(write_mapping(tmp_path, text)))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_command_writes_events_and_refusals_and_exits_3(tmp_path: Path) -> None:
    export, mapping = write_export(tmp_path), write_mapping(tmp_path)
    out = tmp_path / "events.jsonl"
    done = CliRunner().invoke(app, ["import", str(export), "--map", str(mapping), "-o", str(out)])
    assert done.exit_code == 3, done.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == EXPECTED
    written = (tmp_path / "qualtrics export.csv.refusals.jsonl").read_text()
    refusals = [json.loads(line) for line in written.splitlines()]
    assert [(r["row"], r["column"], r["reason"]) for r in refusals] == REFUSED
    assert "6 responses of qualtrics export.csv -> 9 events" in done.output
    assert "refused 4 (duplicate_response 1, nonexistent_time 1, score_out_of_range 1, unknown_label 1)" in done.output
    # a clean export: exit 0, no refusals file left from before
    clean = tmp_path / "clean.csv"
    clean.write_text("\n".join([*HEADER, ROWS[0]]), encoding="cp1252")  # Excel's ANSI CSV, no BOM
    done = CliRunner().invoke(app, ["import", str(clean), "--map", str(mapping), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == EXPECTED[:3]
    assert not (tmp_path / "clean.csv.refusals.jsonl").exists()
