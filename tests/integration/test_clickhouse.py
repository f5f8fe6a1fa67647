"""ClickHouse through clickhouse-connect on the embedded store (chdb): schema migrations, idempotent inserts, and
`report` / `drivers` against numbers computed independently here.

chdb hosts one engine path per process, so the tests of this module share one store and empty its tables first.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import LocalCatalog, parse_timestamp_ms
from sinks import clickhouse as store
from sinks import store_access as readers
from sinks.store_access import ClientReader, ClientWriter
from streams.commands import queries as rp
from streams.config import Settings
from streams.core.synth import realistic_events
from streams.core.windows import iso_utc, result_record, rolling_window, rollup, state_of
from streams.replay import replay_file
from streams.themes import theme_matcher

P = 60_000
NOW = 1_767_300_030_000  # the "now" of the reports: a pane boundary is 1_767_300_000_000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    folder = tmp_path_factory.mktemp("chdb") / "store"
    connection = store.connect(Settings(clickhouse_url=f"chdb://{folder}"))
    yield connection


@pytest.fixture()
def db(client: object) -> object:
    store.migrate(client)  # type: ignore[arg-type]
    for table in ("pane_results", "answers", "journey_instances"):
        client.command(f"TRUNCATE TABLE IF EXISTS cxpulse.{table}")  # type: ignore[attr-defined]
    return client


def events(count: int, seed: int = 3, hours: float = 3.0) -> list[dict]:
    start = NOW - int(hours * 3600_000)
    return list(
        realistic_events(
            count, seed=seed, start_ms=start, per_second=count / (hours * 3600), invalid_share=0, duplicate_share=0
        )
    )


def replayed(tmp_path: Path, batch: list[dict]):  # a Replay
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in batch))
    return replay_file(path, P, lambda dead: None)


def test_migrations_apply_once_and_are_recorded(db: object, tmp_path: Path) -> None:
    assert store.migrate(db) == []  # type: ignore[arg-type]  # applied by the fixture already
    versions = db.query("SELECT version, name FROM cxpulse.schema_version").result_rows  # type: ignore[attr-defined]
    assert sorted(versions) == [
        (1, "001_initial.sql"),
        (2, "002_journeys.sql"),
        (3, "003_comments.sql"),
        (4, "004_commented.sql"),
    ]
    extra = tmp_path / "migrations"
    extra.mkdir()
    for path in (store.MIGRATIONS).glob("*.sql"):
        (extra / path.name).write_text(path.read_text())
    (extra / "099_probe.sql").write_text(
        "-- a later change\nCREATE TABLE IF NOT EXISTS cxpulse.probe (x UInt8) ENGINE = Memory\n"
    )
    assert store.migrate(db, extra) == ["099_probe.sql"]  # type: ignore[arg-type]
    assert store.migrate(db, extra) == []  # type: ignore[arg-type]
    db.command("DROP TABLE cxpulse.probe")  # type: ignore[attr-defined]
    db.command("ALTER TABLE cxpulse.schema_version DELETE WHERE version = 99")  # type: ignore[attr-defined]


def test_pane_rows_report_as_replay_and_nothing_doubles(db: object, tmp_path: Path) -> None:
    replay = replayed(tmp_path, events(3000))
    results = replay.results()
    rows = [store.pane_row(result_record(r)) for r in results]
    store.insert(db, "pane_results", rows, store.PANE_COLUMNS, store.token("t", 0, 0, 1))  # type: ignore[arg-type]
    store.insert(db, "pane_results", rows, store.PANE_COLUMNS, store.token("t", 0, 0, 1))  # type: ignore[arg-type]
    count = db.query("SELECT count() FROM cxpulse.pane_results").result_rows[0][0]  # type: ignore[attr-defined]
    assert count == len(rows)  # the retried insert was deduplicated
    # a re-delivery with another token (a restarted sink): still one row per group once read
    store.insert(db, "pane_results", rows[:50], store.PANE_COLUMNS, store.token("t", 0, 0, 2))  # type: ignore[arg-type]
    reader = ClientReader(db)
    panes = rp.report(
        reader, pane_ms=P, window_ms=None, by=["channel", "journey"], metrics=[], now_ms=NOW, since_ms=None
    )
    assert len(panes) == len(results)
    by_key = {(r.window_start, r.dimensions["channel"], r.dimensions["journey"], r.metric): r for r in panes}
    for result in results:
        row = by_key[(result.window_start, result.channel, result.journey, result.metric)]
        assert row.state.n == result.n and row.state.detractors == result.detractors
        assert row.state.sum_x == pytest.approx(result.sum_x, abs=1e-9)
    # rolling windows and rollups: replay's own functions on replay's panes
    for window_ms in (300_000, 3600_000):
        expected = rolling_window(replay.panes, NOW, window_ms, P)
        got = rp.report(reader, pane_ms=P, window_ms=window_ms, by=["channel", "journey"], metrics=[], now_ms=NOW,
                        since_ms=None)  # fmt: skip
        assert {(r.dimensions["channel"], r.dimensions["journey"], r.metric): r.state for r in got} == expected
        assert all(r.window_end == NOW - NOW % P and r.window_start == r.window_end - window_ms for r in got)
        by_channel = rp.report(reader, pane_ms=P, window_ms=window_ms, by=["channel"], metrics=["NPS"], now_ms=NOW,
                               since_ms=None)  # fmt: skip
        rolled = {k: v for k, v in rollup(expected, by_channel=True, by_journey=False).items() if k[2] == "NPS"}
        assert {(r.dimensions["channel"], r.dimensions["journey"], r.metric): r.state for r in by_channel} == rolled
    # a revision (higher version) replaces
    first = results[0]
    revised = store.pane_row({**result_record(first), "n": first.n + 1, "version": first.version + 5})
    store.insert(db, "pane_results", [revised], store.PANE_COLUMNS, store.token("t", 0, 9, 9))  # type: ignore[arg-type]
    again = rp.report(reader, pane_ms=P, window_ms=None, by=["channel", "journey"], metrics=[first.metric],
                      now_ms=NOW, since_ms=first.window_start)  # fmt: skip
    match = [r for r in again if r.window_start == first.window_start and r.dimensions["channel"] == first.channel
             and r.dimensions["journey"] == first.journey]  # fmt: skip
    assert [r.state.n for r in match] == [first.n + 1] and match[0].version == first.version + 5


def raw(batch: list[dict]) -> list[bytes]:
    return [json.dumps(e).encode() for e in batch]


def test_answers_by_touchpoint_and_hourly_windows_match_a_count_by_hand(db: object) -> None:
    batch = events(4000, seed=8)
    rows = store.answer_rows(raw(batch), LocalCatalog())
    store.insert(db, "answers", rows, store.ANSWER_COLUMNS, store.token("a", 0, 0, 1))  # type: ignore[arg-type]
    store.insert(db, "answers", rows[:100], store.ANSWER_COLUMNS, store.token("a", 0, 0, 2))  # type: ignore[arg-type]
    reader = ClientReader(db)
    got = rp.report(reader, pane_ms=P, window_ms=3600_000, by=["touchpoint"], metrics=["NPS"], now_ms=NOW,
                    since_ms=NOW - 3 * 3600_000)  # fmt: skip
    end = NOW - NOW % P
    counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in batch:
        if e["metric"] != "NPS" or not (end - 3 * 3600_000 <= e["occurred_at"] - e["occurred_at"] % P < end):
            continue
        hour = (end - 1 - (e["occurred_at"] - e["occurred_at"] % P)) // 3600_000
        c = counts[(hour, e["touchpoint"])]
        c[0] += 1
        c[1] += e["score"] >= 9
        c[2] += e["score"] <= 6
    assert len(got) == len(counts) > 10
    for row in got:
        hour = (end - row.window_end) // 3600_000
        n, promoters, detractors = counts[(hour, row.dimensions["touchpoint"])]
        assert (row.state.n, row.state.promoters, row.state.detractors) == (n, promoters, detractors)
        assert row.dimensions["channel"] == "*" and row.window_end - row.window_start == 3600_000


def test_answers_go_in_column_by_column_as_they_were_counted(db: object) -> None:
    """The sink's columnar insert: every field back as it went in, the time to the millisecond (epoch ms are the
    ticks of DateTime64(3)), the labels normalised, and rows equal to the columns turned around."""
    batch = events(500, seed=5)
    batch[0] = {**batch[0], "channel": " Live Chat ", "occurred_at": NOW - 1, "interaction_id": "i-1"}
    columns = store.answer_columns(raw(batch), LocalCatalog())
    assert [list(row) for row in zip(*columns, strict=True)] == store.answer_rows(raw(batch), LocalCatalog())
    store.insert_columns(db, "answers", columns, store.ANSWER_COLUMNS, store.token("c", 0, 0, 1))  # type: ignore[arg-type]
    store.insert_columns(db, "answers", columns, store.ANSWER_COLUMNS, store.token("c", 0, 0, 1))  # type: ignore[arg-type]
    got = {
        row[0]: row[1:]
        for row in db.query(  # type: ignore[attr-defined]
            "SELECT event_id, toUnixTimestamp64Milli(occurred_at), channel, journey, metric, score, interaction_id,"
            " reason_codes, high_effort FROM cxpulse.answers"
        ).result_rows
    }
    assert len(got) == len(batch)
    for e in batch:
        ms, channel, journey, metric, score, interaction, codes, high_effort = got[e["event_id"]]
        assert (ms, journey, metric, score) == (e["occurred_at"], e["journey"].strip().lower(), e["metric"], e["score"])
        assert channel == ("live_chat" if e is batch[0] else e["channel"])
        assert interaction == (e.get("interaction_id") or "") and codes == list(e.get("reason_codes") or [])
        lo = 1 if e.get("scale_min") is None else e["scale_min"]  # CES defaults to 1-7 (docs/contract.md)
        hi = 7 if e.get("scale_max") is None else e["scale_max"]
        assert high_effort == int(e["metric"] == "CES" and 2 * (e["score"] - lo) < hi - lo)


def test_answers_by_reason_code_count_an_answer_under_each_of_its_codes(db: object) -> None:
    """`report --by reason_code` failed for every window (Unknown expression identifier reason)."""
    base = {"source": "s", "channel": "chat", "journey": "billing", "metric": "NPS"}
    batch = [
        {**base, "event_id": "a", "occurred_at": NOW - 10 * P, "score": 3, "reason_codes": ["hold_time", "price"]},
        {**base, "event_id": "b", "occurred_at": NOW - 10 * P, "score": 10, "reason_codes": ["price"]},
        {**base, "event_id": "c", "occurred_at": NOW - 10 * P, "score": 8},
    ]
    store.insert(db, "answers", store.answer_rows(raw(batch), LocalCatalog()), store.ANSWER_COLUMNS, "r")  # type: ignore[arg-type]
    reader = ClientReader(db)
    for window_ms in (None, 3600_000):
        got = rp.report(reader, pane_ms=P, window_ms=window_ms, by=["reason_code"], metrics=[], now_ms=NOW,
                        since_ms=NOW - 3600_000)  # fmt: skip
        by_code = {
            row.dimensions["reason_code"]: (row.state.n, row.state.promoters, row.state.detractors) for row in got
        }
        assert by_code == {"hold_time": (1, 0, 1), "price": (2, 1, 1), "none": (1, 0, 0)}


def test_pane_reports_show_the_pane_the_results_were_written_with(db: object, tmp_path: Path) -> None:
    """The demo writes 5-second panes; a report with the default setting (60 s) labelled them one-minute windows."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events(300, hours=0.1)))
    results = replay_file(path, 5_000, lambda dead: None).results()
    rows = [store.pane_row(result_record(r)) for r in results]
    store.insert(db, "pane_results", rows, store.PANE_COLUMNS, store.token("p5", 0, 0, 1))  # type: ignore[arg-type]
    got = rp.report(ClientReader(db), pane_ms=P, window_ms=None, by=["channel", "journey"], metrics=[],
                    now_ms=NOW, since_ms=None)  # fmt: skip
    assert len(got) == len(results) > 10
    assert {row.window_end - row.window_start for row in got} == {5_000}


def test_drivers_decompose_the_change_exactly_and_name_the_touchpoint(db: object) -> None:
    """chat/billing NPS: in the previous hour 40% promoters and 20% detractors everywhere; in the last hour the
    bot turns 70% detractors.  The bot's term carries the drop; the terms add up to the change."""
    rng = random.Random(4)
    end = NOW - NOW % P
    batch = []
    for hour, bad in ((1, False), (0, True)):
        for i in range(600):
            touchpoint = rng.choice(("bot", "live_agent", "faq"))
            u = rng.random()
            detractor = u < (0.7 if bad and touchpoint == "bot" else 0.2)
            score = 3 if detractor else (10 if u > 0.6 else 8)
            batch.append({"event_id": f"h{hour}-{i}", "occurred_at": end - hour * 3600_000 - 1000 - i * 5000,
                          "source": "sim", "channel": "chat", "journey": "billing", "metric": "NPS", "score": score,
                          "touchpoint": touchpoint, "reason_codes": ["hold_time"] if detractor else []})  # fmt: skip
    rows = store.answer_rows(raw(batch), LocalCatalog())
    store.insert(db, "answers", rows, store.ANSWER_COLUMNS, store.token("d", 0, 0, 1))  # type: ignore[arg-type]
    found = rp.drivers(ClientReader(db), metric="NPS", channel="chat", journey="billing", window_ms=3600_000,
                       pane_ms=P, now_ms=NOW, versus="previous", dimensions=["touchpoint", "reason_code"])  # fmt: skip

    def nps(answers: list[dict]) -> float:
        return 100 * (sum(a["score"] >= 9 for a in answers) - sum(a["score"] <= 6 for a in answers)) / len(answers)

    now = [a for a in batch if a["occurred_at"] >= end - 3600_000]
    before = [a for a in batch if a["occurred_at"] < end - 3600_000]
    assert found.kpi_now == pytest.approx(nps(now)) and found.kpi_before == pytest.approx(nps(before))
    assert (found.n_now, found.n_before) == (len(now), len(before))
    touchpoints = [d for d in found.drivers if d.dimension == "touchpoint"]
    assert sum(d.contribution for d in touchpoints) == pytest.approx(found.change)
    assert touchpoints[0].name == "bot" and touchpoints[0].contribution < 0.7 * found.change
    bot_now = [a for a in now if a["touchpoint"] == "bot"]
    assert touchpoints[0].n_now == len(bot_now) and touchpoints[0].kpi_now == pytest.approx(nps(bot_now))
    assert touchpoints[0].interval is not None and 0 < touchpoints[0].interval < 20
    reasons = [d for d in found.drivers if d.dimension == "reason_code"]
    assert sum(d.contribution for d in reasons) == pytest.approx(found.change)
    assert {d.name for d in reasons} == {"hold_time", "none"}


# --- themes: what customers say (contract section 9), from the stored answers ------------------------------------

SAYINGS = [
    "Waited 40 minutes on hold, then transferred twice",
    "De chatbot begreep me niet, ik wilde een medewerker",
    "Friendly agent, solved it in one call",
    "Mail me at jan@example.nl or call 0612345678",  # redacted; a word ("mail"): counts under "(any)"
    "...",  # no word: no comment
    "Factuur klopt niet, te veel betaald",
]


def test_theme_results_from_the_store_equal_replay_and_drivers_split_by_theme(
    db: object, tmp_path: Path, monkeypatch
) -> None:
    """The answers keep their themes and whether they had a comment; `report --by ...,theme` per pane equals
    replay's theme results (every group, "(any)" with it), and `drivers --by theme` splits the change exactly."""
    from typer.testing import CliRunner

    from streams.cli import app
    from streams.core.comments import ThemeMatcher
    from streams.themes import load_taxonomy

    rng = random.Random(9)
    batch = [{**e, "comment": rng.choice(SAYINGS) if rng.random() < 0.6 else None} for e in events(3000, seed=11)]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in batch))
    stored: dict[str, dict] = {}
    matcher = ThemeMatcher(load_taxonomy(None))
    replay = replay_file(
        path, P, lambda dead: None, matcher=matcher, on_answer=lambda a: stored.setdefault(a["event_id"], a)
    )
    themes = [
        (["(any)"] if stored[e["event_id"]]["commented"] else []) + stored[e["event_id"]]["themes"] for e in batch
    ]
    columns = store.answer_columns(raw(batch), LocalCatalog(), themes)
    store.insert_columns(db, "answers", columns, store.ANSWER_COLUMNS, store.token("t", 0, 0, 1))  # type: ignore[arg-type]
    reader = ClientReader(db)
    got = rp.report(reader, pane_ms=P, window_ms=None, by=["channel", "journey", "theme"], metrics=[], now_ms=NOW,
                    since_ms=None)  # fmt: skip
    want = {
        (r["window_start"], r["channel"], r["journey"], r["metric"], r["theme"]): state_of(r)
        for r in replay.theme_results()
    }
    assert {"(any)", "waiting", "bot_self_service", "billing_errors"} <= {key[-1] for key in want}
    assert {
        (iso_utc(row.window_start), row.dimensions["channel"], row.dimensions["journey"], row.metric,
         row.dimensions["theme"]): row.state
        for row in got
    } == want  # fmt: skip
    end = NOW - NOW % P  # rolling windows end at the pane boundary
    commented = sum(1 for e in batch if e["comment"] not in (None, "...") and e["occurred_at"] < end)
    rolled = rp.report(reader, pane_ms=P, window_ms=4 * 3600_000, by=["theme"], metrics=[], now_ms=NOW, since_ms=None)
    assert sum(row.state.n for row in rolled if row.dimensions["theme"] == "(any)") == commented
    found = rp.drivers(reader, metric="NPS", channel="*", journey="*", window_ms=3600_000, pane_ms=P, now_ms=NOW,
                       versus="previous", dimensions=["theme"])  # fmt: skip
    assert found.change is not None and sum(d.contribution for d in found.drivers) == pytest.approx(found.change)
    assert "none" in {d.name for d in found.drivers} and "(any)" not in {d.name for d in found.drivers}
    # the table: per theme the share of the commented answers and the KPI of those who mention it against the rest
    monkeypatch.setattr(readers, "open_reader", lambda settings: reader)
    monkeypatch.setattr(readers, "describe_store", lambda settings: "store: test")
    monkeypatch.setenv("COLUMNS", "250")
    table = CliRunner().invoke(app, ["report", "--window", "4h", "--by", "theme", "--metric", "NPS", "--min-n", "1",
                                     "--until", str(NOW)])  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "mentioned by" in table.output and "KPI not mentioning" in table.output
    waiting = next(row for row in rolled if row.dimensions["theme"] == "waiting" and row.metric == "NPS")
    everyone = next(row for row in rolled if row.dimensions["theme"] == "(any)" and row.metric == "NPS")
    assert f"{100 * waiting.state.n / everyone.state.n:.1f}% of {everyone.state.n}" in table.output


def test_the_words_of_a_spike_read_from_the_store_equal_replays(db: object, tmp_path: Path) -> None:
    """The detector's reads (sinks/effort_terms.py) against the answers as the sink stores them: not before the store
    holds the short window's CES answers (unless forced), then the same words as replay's, from the same code."""
    from sinks.effort_terms import Ask, read_terms
    from streams.core.comments import ThemeMatcher
    from streams.core.effort import EffortConfig
    from streams.core.terms import spike_terms
    from streams.themes import load_taxonomy

    rng = random.Random(5)
    config = EffortConfig(guard_ms=10 * 60_000, baseline_ms=2 * 3600_000, short_ms=30 * 60_000)
    pane = NOW - NOW % P - P  # the last closed pane fired
    batch = []
    for e in events(6000, seed=12):
        comment = rng.choice(SAYINGS) if rng.random() < 0.6 else None
        if e["occurred_at"] >= pane + P - config.short_ms and rng.random() < 0.5:  # the app breaks
            comment = "De app crasht steeds bij het inloggen"
        batch.append({**e, "channel": "app", "journey": "billing", "comment": comment})  # one segment
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in batch))
    stored: dict[str, dict] = {}
    replay = replay_file(path, P, lambda dead: None, matcher=ThemeMatcher(load_taxonomy(None)),
                         on_answer=lambda a: stored.setdefault(a["event_id"], a))  # fmt: skip
    themes = [
        (["(any)"] if stored[e["event_id"]]["commented"] else []) + stored[e["event_id"]]["themes"] for e in batch
    ]
    columns = store.answer_columns(raw(batch), LocalCatalog(), themes)
    store.insert_columns(db, "answers", columns, store.ANSWER_COLUMNS, store.token("t", 0, 0, 1))  # type: ignore[arg-type]
    reader = ClientReader(db)
    where = max(replay.said, key=lambda w: len(replay.said[w]))  # the segment with the most high-effort comments
    n_short = sum(
        1
        for e in batch
        if e["metric"] == "CES" and (e["channel"], e["journey"]) == where
        and pane + P - config.short_ms <= e["occurred_at"] < pane + P
    )  # fmt: skip
    assert read_terms(reader, Ask(*where, pane, n_short + 1, 0.0), config, P, force=False) is None  # not all in yet
    found = read_terms(reader, Ask(*where, pane, n_short, 0.0), config, P, force=False)
    assert found is not None and found.stored == n_short
    want = spike_terms(replay.said[where], config, pane, P)
    assert found.terms == want and {"app", "crasht"} <= {t.term for t in want}, (found, want)
    forced = read_terms(reader, Ask(*where, pane, n_short + 1, 0.0), config, P, force=True)
    assert forced is not None and forced.terms == want


def test_a_backfill_writes_the_history_as_replay_leaves_the_streams_panes_and_twice_changes_nothing(
    db: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cxpulse backfill` (streams/backfill.py) over five days of answers with a 3-day retention: what lies before
    the cutoff is in the store as replay of those answers alone computes it (panes, answers with their themes,
    journey instances as of the cutoff), the rest is left out; a pane the stream had written keeps its row and its
    answers are not added; a second run adds no row at all.  Inserts of 500 rows: the answers go to the store in
    several chunks while replay reads, over several days (the stream's pane groups are looked up day by day)."""
    import streams.backfill
    from streams.backfill import BackfillStats, backfill_history, cutoff_of

    monkeypatch.setattr(streams.backfill, "CHUNK_ROWS", 500)

    settings = Settings(clickhouse_url="", pane_seconds=60, retention_seconds=3 * 86400)
    cutoff = cutoff_of(settings, NOW)
    rng = random.Random(4)
    batch = [
        {**e, "comment": rng.choice(SAYINGS) if rng.random() < 0.3 else None} for e in events(4000, seed=8, hours=120)
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in batch))
    older = [e for e in batch if e["occurred_at"] < cutoff]
    assert 0 < len(older) < len(batch)
    (tmp_path / "older.jsonl").write_text("".join(json.dumps(e) + "\n" for e in older))
    told: list[dict[str, Any]] = []  # each counted answer as `cxpulse replay --answers` writes it
    alone = replay_file(
        tmp_path / "older.jsonl", P, lambda dead: None, journey_gap_ms=settings.journey_gap_seconds * 1000,
        matcher=theme_matcher(settings), on_answer=told.append,
    )  # fmt: skip
    expected = {(r.window_start, r.channel, r.journey, r.metric): r for r in alone.results()}
    # the stream had written one of those panes (a higher version, its own count)
    mine = next(iter(expected.values()))
    stream_row = store.pane_row(result_record(mine._replace(version=7, n=1)))
    store.insert(db, "pane_results", [stream_row], store.PANE_COLUMNS, store.token("stream", 1))  # type: ignore[arg-type]

    shown: list[tuple[int, int]] = []

    def run() -> BackfillStats:
        stats = BackfillStats(cutoff_ms=cutoff)
        backfill_history(Counting(db), path, settings, stats, None, lambda done, total: shown.append((done, total)))
        return stats

    sizes: list[tuple[str, int]] = []  # each insert's table and rows

    class Counting(ClientWriter):
        def insert(self, table: str, data: Any, columns: Any, dedup: str) -> None:
            sizes.append((table, len(data[0])))
            super().insert(table, data, columns, dedup)

    stats = run()
    # the progress after replay: after every insert, rows written (or left to the stream) of all, up to all of them
    total = stats.panes + stats.stream_panes + stats.answers + stats.stream_answers + stats.journeys
    assert shown[-1] == (total, total) and all(a[0] < b[0] for a, b in zip(shown, shown[1:], strict=False))
    answer_inserts = [rows for table, rows in sizes if table == "answers"]
    assert len(answer_inserts) > 2 and max(answer_inserts) <= 500 and sum(answer_inserts) == stats.answers
    assert stats.newer == len(batch) - len(older) and stats.stream_panes == 1 and stats.panes == len(expected) - 1
    reader = ClientReader(db)
    got = {
        (row.window_start, row.dimensions["channel"], row.dimensions["journey"], row.metric): (row.state, row.version)
        for row in rp.report(reader, pane_ms=P, window_ms=None, by=["channel", "journey"], metrics=[], now_ms=NOW,
                             since_ms=None)
    }  # fmt: skip
    mine_key = (mine.window_start, mine.channel, mine.journey, mine.metric)
    assert got.pop(mine_key)[1] == 7  # the stream's pane, untouched
    assert got == {key: (state_of(result_record(r)), 0) for key, r in expected.items() if key != mine_key}
    stored = db.query("SELECT count(), sum(commented) FROM cxpulse.answers FINAL").result_rows[0]  # type: ignore[attr-defined]
    in_mine = sum(
        1 for e in older
        if (e["occurred_at"] - e["occurred_at"] % P, e["channel"], e["journey"], e["metric"]) == mine_key
    )  # fmt: skip
    assert stored[0] == sum(r.n for r in expected.values()) - in_mine == stats.answers
    assert stats.stream_answers == in_mine > 0
    # each stored answer, field by field, as replay's --answers has it (the themes read from the default taxonomy)
    fields = ("event_id", "source", "channel", "journey", "touchpoint", "metric", "score", "scale_min", "scale_max",
              "customer_id", "interaction_id", "agent_id", "team", "reason_codes", "comment", "themes", "commented",
              "promoter", "passive", "detractor", "positive", "high_effort")  # fmt: skip
    listed = ", ".join(fields)
    rows = db.query(  # type: ignore[attr-defined]
        f"SELECT toUnixTimestamp64Milli(occurred_at), {listed} FROM cxpulse.answers FINAL ORDER BY event_id"  # noqa: S608
    ).result_rows
    want = sorted(
        (parse_timestamp_ms(a["occurred_at"]), *(a[f] if a[f] is not None else "" for f in fields))
        for a in told
        if (parse_timestamp_ms(a["occurred_at"]) // P * P, a["channel"], a["journey"], a["metric"]) != mine_key
    )
    got_rows = sorted((row[0], *(int(v) if isinstance(v, bool) else v for v in row[1:])) for row in rows)
    assert [tuple(r) for r in got_rows] == [tuple(int(v) if isinstance(v, bool) else v for v in w) for w in want]
    assert any(row[16] for row in got_rows) and any(row[15] for row in got_rows)  # themes and comments were there
    journeys = alone.journey_instances(now_ms=cutoff)
    assert stats.journeys == len(journeys) > 0
    assert db.command("SELECT count() FROM cxpulse.journey_instances FINAL") == len(journeys)  # type: ignore[attr-defined]
    counts = (
        "SELECT (SELECT count() FROM cxpulse.pane_results), (SELECT count() FROM cxpulse.answers), "
        "(SELECT count() FROM cxpulse.journey_instances)"
    )
    before = db.query(counts).result_rows  # type: ignore[attr-defined]
    run()  # the same history again: no row more, none changed
    assert db.query(counts).result_rows == before  # type: ignore[attr-defined]


# --- journeys: the instances table, report --journeys, one customer's journeys ---------------------------------


def test_journey_instances_report_and_one_customer_match_replay(db: object, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from streams.cli import app
    from streams.core.journey_kpis import counts_of, journey_kpis
    from streams.core.journeys import Revision, instance_record
    from streams.core.validate import validate_batch
    from tests.support import G, generated

    batch = generated(5, 900)
    path = tmp_path / "journeys.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in batch))
    replay = replay_file(path, P, lambda dead: None, journey_gap_ms=G)
    instances = replay.journey_instances()
    assert len(instances) > 100 and any(i.closed for i in instances) and any(not i.closed for i in instances)
    # every counted answer (valid, first copy) into cxpulse.answers, as the sink writes them
    seen: set[str] = set()
    counted = []
    for item in batch:
        if validate_batch([item])[0] and item["event_id"] not in seen:
            seen.add(item["event_id"])
            counted.append(item)
    answers = store.answer_rows(raw(counted), LocalCatalog())
    store.insert(db, "answers", answers, store.ANSWER_COLUMNS, store.token("j", 0, 0, 1))  # type: ignore[arg-type]
    # the revisions a stream writes: an earlier version of each instance (fewer answers, open), the instance, and
    # an instance later replaced (deleted); the newest non-deleted revision of each key is what counts
    early = [store.journey_row(instance_record(Revision(i._replace(answers=1, closed=False, contacts=9), 1, False)))
             for i in instances]  # fmt: skip
    final = [store.journey_row(instance_record(Revision(i, 2, False))) for i in instances]
    ghost = instances[0]._replace(start=instances[0].start - 1, closed=True)
    gone = [store.journey_row(instance_record(Revision(ghost, v, v == 3))) for v in (1, 3)]
    for n, rows in enumerate((early, gone[:1], final, gone[1:])):
        store.insert(db, "journey_instances", rows, store.JOURNEY_COLUMNS, store.token("ji", n))  # type: ignore[arg-type]
    reader = ClientReader(db)
    # report --journeys: the counters of the closed instances by the rolling window that holds their end
    now = max(i.end for i in instances) + 2 * G
    end = now - now % P
    day = 24 * 3600_000
    since = min(i.end for i in instances)
    for by in (["journey"], ["channel"], ["journey", "channel"]):
        got = rp.journey_report(reader, pane_ms=P, window_ms=day, by=by, now_ms=now, since_ms=since)
        want: dict[tuple, object] = {}
        for i in instances:
            if i.closed:
                dims = tuple(i.journey if d == "journey" else i.first_channel for d in by)
                key = (end - (end - 1 - i.end) // day * day, *dims)
                want[key] = want[key] + counts_of(i) if key in want else counts_of(i)  # type: ignore[operator]
        assert {(r.window_end, *(r.dimensions[d] for d in by)): r.counts for r in got} == want
        assert all(r.window_start == r.window_end - day for r in got) and len(got) > 3
    total = rp.journey_report(reader, pane_ms=P, window_ms=100 * day, by=["journey"], now_ms=now, since_ms=None)
    billing = [r.counts for r in total if r.dimensions["journey"] == "billing"][0]
    assert billing.journeys == sum(1 for i in instances if i.closed and i.journey == "billing")
    # one customer's journeys: the live instances, each with its answers in the contract's order
    by_customer: dict[str, list] = defaultdict(list)
    for i in instances:
        by_customer[i.customer_id].append(i)
    customer, theirs = max(by_customer.items(), key=lambda kv: (len(kv[1]), kv[0]))
    found = rp.customer_journeys(reader, [customer, "someone-else"])
    assert [(j.instance["journey"], j.instance["start"]) for j in found if j.instance] == sorted(
        ((i.journey, i.start) for i in theirs), key=lambda js: (js[1], js[0])
    )
    assert len(theirs) >= 2 and all(j.instance is not None for j in found)
    for journey in found:
        i = next(x for x in theirs if (x.journey, x.start) == (journey.instance["journey"], journey.instance["start"]))
        assert {k: journey.instance[k] for k in ("end", "answers", "contacts", "closed", "version")} == {
            "end": i.end, "answers": i.answers, "contacts": i.contacts, "closed": i.closed, "version": 2
        }  # fmt: skip
        want_answers = [a for a in replay.journeys.answers((customer, i.journey)) if i.start <= a.occurred_at <= i.end]
        assert [a.answer for a in journey.answers] == want_answers
    # the CLI: a table of the customer's way, jsonl, and exit 1 for a customer the store does not know
    monkeypatch.setattr(readers, "open_reader", lambda settings: reader)
    monkeypatch.setattr(readers, "describe_store", lambda settings: "store: test")
    runner = CliRunner()
    shown = runner.invoke(app, ["journey", customer])
    assert shown.exit_code == 0, shown.output
    assert "cumulative x" in shown.output and theirs[0].journey in shown.output
    lines = runner.invoke(app, ["journey", customer, "--format", "jsonl"]).output.splitlines()
    objects = [json.loads(line) for line in lines if line.startswith("{")]
    assert [len(o["answers_in_order"]) for o in objects] == [len(j.answers) for j in found]
    missing = runner.invoke(app, ["journey", "nobody"])
    assert missing.exit_code == 1 and "no answers of customer 'nobody'" in missing.output
    until = ["--until", str(now)]  # the report's "now" (epoch ms)
    kpis = runner.invoke(app, ["report", "--journeys", "--window", "2400h", "--format", "jsonl", *until])
    assert kpis.exit_code == 0, kpis.output
    rows = [json.loads(line) for line in kpis.output.splitlines() if line.startswith("{")]
    assert {r["journey"]: total_counts(r) for r in rows} == {r.dimensions["journey"]: r.counts for r in total}
    assert all(r["channel"] == "*" and r["journey_nps"] == journey_kpis(total_counts(r))["journey_nps"] for r in rows)
    table = runner.invoke(app, ["report", "--journeys", "--window", "2400h", "--by", "channel", "--min-n", "1", *until])
    assert table.exit_code == 0 and "one-stop %" in table.output and "email" in table.output, table.output
    refused = runner.invoke(app, ["report", "--journeys", "--window", "pane"])
    assert refused.exit_code == 2 and "--window pane is not for --journeys" in refused.output


def total_counts(record: dict):  # JourneyCounts of a report --journeys JSON line
    from streams.core.journey_kpis import JourneyCounts

    return JourneyCounts(*(record[name] for name in JourneyCounts._fields))


def test_the_sinks_inserts_do_not_import_pandas(tmp_path: Path) -> None:
    """A process that writes the store as the sink does (store.connect, migrations, insert_columns) and reads it
    back never imports pandas: clickhouse-connect's first insert imported it only to ask whether the data was a
    DataFrame (48-67 MB of the sink's RSS).  A fresh interpreter: this one may hold pandas from other tests."""
    import subprocess
    import sys

    script = """
import sys
from sinks import clickhouse as store
from streams.config import Settings
client = store.connect(Settings(clickhouse_url="chdb://" + sys.argv[1]))
store.migrate(client)
client.command("CREATE TABLE cxpulse.probe (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
store.insert_columns(client, "probe", [[1, 2], ["x", "y"]], ["a", "b"], "probe-1")
rows = client.query("SELECT a, b FROM cxpulse.probe ORDER BY a").result_rows
print(rows, "pandas" in sys.modules)
"""
    command = [sys.executable, "-c", script, str(tmp_path / "store")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[(1, 'x'), (2, 'y')] False"
