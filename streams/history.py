"""Survey-platform exports as contract events (``cxpulse import``): one response a row, one column a question.

A mapping file (YAML; docs/usage.md has the reference and a complete example) says where everything is:

- the layout: ``header_rows`` (the first holds the column names; Qualtrics writes three), ``delimiter`` and
  ``encoding`` (found by themselves unless given: a BOM, UTF-8, else Windows-1252 as Excel writes it);
- ``response_id`` (the column), ``time`` (column, ``timezone`` an IANA name, ``format`` for strptime unless ISO,
  and what to do with a local time that does not exist or exists twice at a DST change: ``nonexistent: refuse |
  shift`` (read with the offset before the change: 02:30 becomes 03:30, as a clock that had not gone forward yet
  showed it), ``ambiguous: refuse | earlier | later``);
- ``source``, ``channel``, ``journey``, ``touchpoint``, ``customer_id``, ``interaction_id``, ``agent_id``,
  ``team``, ``comment``: each ``{value: X}`` (a constant) or ``{column: C, values: {label: value}}``;
- ``questions``: each column feeding a metric, with its ``scale`` [min, max], ``reverse`` (an effort question
  where the lowest answer is the easiest) and ``labels`` (``Zeer tevreden: 5``).

One response becomes one event per answered question (a blank cell: no event), ``event_id`` = response id and
question column, so importing the same export twice sends the same events (the pipeline counts each id once).  A
row that cannot be read is refused, each problem one :class:`Refusal` with the row number as a spreadsheet shows it,
the column and a machine-readable reason; events are checked with the contract's validation (streams/core/validate.py)
as a worker checks them.  Presets fill the layout of common platforms (``preset: qualtrics``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.core.validate import validate_batch
from streams.errors import CxPulseError

CONTEXT_FIELDS = ("source", "channel", "journey", "touchpoint", "customer_id", "interaction_id", "agent_id", "team",
                  "comment")  # fmt: skip
REQUIRED_CONTEXT = ("source", "channel", "journey")
METRICS = ("NPS", "CES", "CSAT", "NLS", "CAS")

# the layouts of common platforms' exports (the mapping's own keys override them)
PRESETS: dict[str, dict[str, Any]] = {
    # Qualtrics "Export data" as CSV or Excel: column names, question texts, import ids; times in the survey's zone
    "qualtrics": {
        "header_rows": 3,
        "response_id": "ResponseId",
        "time": {"column": "RecordedDate", "format": "%Y-%m-%d %H:%M:%S"},
    },
    # SurveyMonkey "All responses data" (expanded): column names, answer options
    "surveymonkey": {
        "header_rows": 2,
        "response_id": "Respondent ID",
        "time": {"column": "End Date", "format": "%m/%d/%Y %I:%M:%S %p"},
    },
}


class ImportError_(CxPulseError):  # noqa: N801, N818 - not the builtin ImportError
    """The mapping or the export cannot be used at all (one line saying why)."""


class Field_(BaseModel):  # noqa: N801
    """A context field: a constant, or a column with optional value map."""

    model_config = ConfigDict(extra="forbid")
    value: str | None = None
    column: str | None = None
    values: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def one_source(self) -> Field_:
        if (self.value is None) == (self.column is None):
            raise ValueError("give either value: (a constant) or column: (with values: to map its labels)")
        return self


class TimeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str
    timezone: str = "UTC"
    format: str | None = None  # strptime; None: ISO-8601 (a value with an offset keeps it)
    nonexistent: Literal["refuse", "shift"] = "refuse"
    ambiguous: Literal["refuse", "earlier", "later"] = "refuse"

    @field_validator("timezone")
    @classmethod
    def known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Amsterdam)") from exc
        return value


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str
    metric: Literal["NPS", "CES", "CSAT", "NLS", "CAS"]
    scale: tuple[int, int] | None = None  # default: the contract's for the metric
    reverse: bool = False  # the lowest answer means the highest score (an effort question where 1 is easy)
    labels: dict[str, int] = Field(default_factory=dict)  # answer text -> score (before reversal)


class Mapping_(BaseModel):  # noqa: N801
    model_config = ConfigDict(extra="forbid")
    preset: str | None = None
    header_rows: int = Field(default=1, ge=1)
    delimiter: str | None = None
    encoding: str | None = None
    sheet: str | None = None  # .xlsx: the sheet (default: the first)
    response_id: str
    time: TimeSpec
    questions: list[Question] = Field(min_length=1)
    source: Field_ | None = None
    channel: Field_ | None = None
    journey: Field_ | None = None
    touchpoint: Field_ | None = None
    customer_id: Field_ | None = None
    interaction_id: Field_ | None = None
    agent_id: Field_ | None = None
    team: Field_ | None = None
    comment: Field_ | None = None

    @model_validator(mode="after")
    def required_context(self) -> Mapping_:
        missing = [name for name in REQUIRED_CONTEXT if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing: each event needs them (value: or column:)")
        return self


DEFAULT_SCALES = {"NPS": (0, 10), "NLS": (0, 10), "CES": (1, 7), "CSAT": (1, 5), "CAS": (1, 5)}


def load_mapping(path: Path) -> Mapping_:
    """The mapping file, presets applied; ImportError_ naming the file and the first problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImportError_(f"mapping {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ImportError_(f"mapping {path} is not YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ImportError_(f"mapping {path}: expected keys (response_id:, time:, questions:, ...)")
    preset = raw.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ImportError_(f"mapping {path}: preset {preset!r} is not one of {', '.join(sorted(PRESETS))}")
        base = PRESETS[preset]
        time_spec = {**base.get("time", {}), **(raw.get("time") or {})}
        raw = {**base, **raw, "time": time_spec}
    try:
        return Mapping_.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ImportError_(f"mapping {path}: {where}: {message}") from exc


class Refusal(NamedTuple):
    """A problem with one row: where (the row as a spreadsheet numbers it, the column) and why."""

    row: int
    column: str
    reason: str
    detail: str

    def json(self) -> dict[str, Any]:
        return self._asdict()


@dataclass
class Converted:
    """What an export became: the events in row order, the refusals, and counts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    rows: int = 0
    blank_answers: int = 0


# --- reading the export ---------------------------------------------------------------------------------------------


def read_rows(path: Path, mapping: Mapping_) -> tuple[list[str], Iterator[tuple[int, list[Any]]]]:
    """The column names and the data rows (row number as a spreadsheet shows it, cells) of a CSV or .xlsx export."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        return _xlsx_rows(path, mapping)
    return _csv_rows(path, mapping)


def _csv_rows(path: Path, mapping: Mapping_) -> tuple[list[str], Iterator[tuple[int, list[Any]]]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportError_(f"{path}: {exc.strerror or exc}") from exc
    text = _decode(data, mapping.encoding, path)
    delimiter = mapping.delimiter or _sniff(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = list(reader)
    if len(rows) < mapping.header_rows:
        raise ImportError_(f"{path}: {len(rows)} rows, fewer than the mapping's header_rows ({mapping.header_rows})")
    names = [name.strip() for name in rows[0]]
    body = ((number, row) for number, row in enumerate(rows[mapping.header_rows :], mapping.header_rows + 1))
    return names, (item for item in body if any(cell.strip() for cell in item[1]))


def _decode(data: bytes, encoding: str | None, path: Path) -> str:
    if encoding:
        try:
            return data.decode(encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise ImportError_(f"{path} is not {encoding}: {exc}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")  # Excel's "Unicode text"
    try:
        return data.decode("utf-8-sig")  # UTF-8, with or without the BOM Excel writes
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # Excel's "CSV" on Windows in western Europe


def _sniff(text: str) -> str:
    """The delimiter of the header line: the one of , ; tab | it has most of (Excel in Dutch writes ;)."""
    head = text.split("\n", 1)[0]
    counts = {delimiter: head.count(delimiter) for delimiter in (",", ";", "\t", "|")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def _xlsx_rows(path: Path, mapping: Mapping_) -> tuple[list[str], Iterator[tuple[int, list[Any]]]]:
    try:
        from openpyxl import load_workbook  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - a dependency of cxpulse
        raise ImportError_("reading .xlsx needs openpyxl: pip install openpyxl") from exc
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a file that is not a workbook
        raise ImportError_(f"{path} is not an .xlsx workbook: {exc}") from exc
    if mapping.sheet is not None and mapping.sheet not in book.sheetnames:
        raise ImportError_(f"{path}: no sheet {mapping.sheet!r}; its sheets: {', '.join(book.sheetnames)}")
    sheet = book[mapping.sheet] if mapping.sheet is not None else book.worksheets[0]
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    if len(rows) < mapping.header_rows:
        raise ImportError_(f"{path}: {len(rows)} rows, fewer than the mapping's header_rows ({mapping.header_rows})")
    names = ["" if name is None else str(name).strip() for name in rows[0]]
    body = ((number, row) for number, row in enumerate(rows[mapping.header_rows :], mapping.header_rows + 1))
    return names, (item for item in body if any(_text(cell) for cell in item[1]))


def _text(cell: Any) -> str:
    return "" if cell is None else str(cell).strip()


# --- converting -----------------------------------------------------------------------------------------------------


def local_time(value: Any, spec: TimeSpec) -> tuple[int | None, str, str]:
    """Epoch ms of a cell of the time column, else None with a reason and detail (DST: docs/usage.md)."""
    zone = ZoneInfo(spec.timezone)
    if isinstance(value, datetime):
        moment = value
    else:
        text = _text(value)
        if not text:
            return None, "missing_time", "the time is blank"
        try:
            # a local time of the mapping's zone (a value with an offset keeps its own)
            moment = datetime.strptime(text, spec.format) if spec.format else datetime.fromisoformat(text)  # noqa: DTZ007
        except ValueError:
            wanted = f"format {spec.format!r}" if spec.format else "ISO-8601"
            return None, "bad_time", f"{text!r} is not a time in {wanted}"
    if moment.tzinfo is not None:
        return round(moment.timestamp() * 1000), "", ""
    early, late = moment.replace(tzinfo=zone, fold=0), moment.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return round(early.timestamp() * 1000), "", ""
    back = early.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back == moment:  # it exists twice (the clocks went back)
        if spec.ambiguous == "refuse":
            return (
                None,
                "ambiguous_time",
                (
                    f"{moment.isoformat(sep=' ')} happens twice in {spec.timezone} (the clocks went back); say "
                    "ambiguous: earlier or later in the mapping"
                ),
            )
        chosen = early if spec.ambiguous == "earlier" else late
        return round(chosen.timestamp() * 1000), "", ""
    if spec.nonexistent == "refuse":  # it does not exist (the clocks went forward)
        return (
            None,
            "nonexistent_time",
            (
                f"{moment.isoformat(sep=' ')} does not exist in {spec.timezone} (the clocks went forward); say "
                "nonexistent: shift in the mapping to read it with the offset before the change"
            ),
        )
    return round(early.timestamp() * 1000), "", ""  # shift: read with the offset before the change (02:30 -> 03:30)


def convert(names: Sequence[str], rows: Iterator[tuple[int, list[Any]]], mapping: Mapping_) -> Converted:
    """Every row as events (one per answered question) or refusals; the contract's validation included."""
    index = {name: at for at, name in enumerate(names) if name}
    wanted = [mapping.response_id, mapping.time.column, *(q.column for q in mapping.questions)]
    wanted += [spec.column for name in CONTEXT_FIELDS if (spec := getattr(mapping, name)) and spec.column]
    missing = [column for column in wanted if column not in index]
    if missing:
        raise ImportError_(
            f"the export has no column {', '.join(repr(c) for c in missing)}; its columns: "
            + ", ".join(repr(n) for n in names[:30])
        )
    out = Converted()
    first_row: dict[str, int] = {}
    for number, cells in rows:
        out.rows += 1

        def cell(column: str, cells: list[Any] = cells) -> Any:
            at = index[column]
            return cells[at] if at < len(cells) else None

        response = _text(cell(mapping.response_id))
        if not response:
            out.refusals.append(Refusal(number, mapping.response_id, "missing_response_id", "the response id is blank"))
            continue
        if response in first_row:
            also = f"response {response} is also row {first_row[response]} (that one counts)"
            out.refusals.append(Refusal(number, mapping.response_id, "duplicate_response", also))
            continue
        first_row[response] = number
        occurred_at, reason, detail = local_time(cell(mapping.time.column), mapping.time)
        if occurred_at is None:
            out.refusals.append(Refusal(number, mapping.time.column, reason, detail))
            continue
        context, problems = _context(mapping, cell, number)
        if problems:
            out.refusals.extend(problems)
            continue
        for question in mapping.questions:
            raw = cell(question.column)
            if not _text(raw):
                out.blank_answers += 1
                continue
            score, problem = _score(raw, question, number)
            if problem is not None:
                out.refusals.append(problem)
                continue
            lo, hi = question.scale or DEFAULT_SCALES[question.metric]
            event = {
                "event_id": f"{response}:{question.column}",
                "occurred_at": occurred_at,
                **context,
                "metric": question.metric,
                "score": score,
                "scale_min": lo,
                "scale_max": hi,
            }
            _, rejected = validate_batch([event])
            if rejected:
                out.refusals.append(Refusal(number, question.column, rejected[0].reason, rejected[0].detail))
                continue
            out.events.append(event)
    return out


def _context(mapping: Mapping_, cell: Any, number: int) -> tuple[dict[str, Any], list[Refusal]]:
    context: dict[str, Any] = {}
    problems = []
    for name in CONTEXT_FIELDS:
        spec: Field_ | None = getattr(mapping, name)
        if spec is None:
            continue
        if spec.value is not None:
            context[name] = spec.value
            continue
        assert spec.column is not None  # noqa: S101 - one_source checked it
        text = _text(cell(spec.column))
        if spec.values and text:
            if text not in spec.values:
                known = ", ".join(repr(label) for label in spec.values)
                problems.append(Refusal(number, spec.column, "unknown_value", f"{text!r} is none of {known}"))
                continue
            text = spec.values[text]
        if text:
            context[name] = text
        elif name in REQUIRED_CONTEXT:
            problems.append(Refusal(number, spec.column, "missing_field", f"{name} is blank"))
    return context, problems


def _score(raw: Any, question: Question, number: int) -> tuple[int | None, Refusal | None]:
    text = _text(raw)
    if question.labels:
        if text in question.labels:
            value = question.labels[text]
        else:
            try:
                value = _integer(raw)
            except ValueError:
                known = ", ".join(repr(label) for label in question.labels)
                return None, Refusal(number, question.column, "unknown_label", f"{text!r} is none of {known}")
    else:
        try:
            value = _integer(raw)
        except ValueError:
            return None, Refusal(number, question.column, "bad_score", f"{text!r} is not a whole number")
    if question.reverse:
        lo, hi = question.scale or DEFAULT_SCALES[question.metric]
        value = lo + hi - value
    return value, None


def _integer(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    number = float(_text(raw).replace(",", "."))  # "7", "7.0", "7,0" (a Dutch spreadsheet's decimal comma)
    if not number.is_integer():
        raise ValueError(raw)
    return int(number)


def import_export(path: Path, mapping: Mapping_) -> Converted:
    names, rows = read_rows(path, mapping)
    return convert(names, rows, mapping)


def by_reason(refusals: Sequence[Refusal]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for refusal in refusals:
        counts[refusal.reason] = counts.get(refusal.reason, 0) + 1
    return dict(sorted(counts.items()))
