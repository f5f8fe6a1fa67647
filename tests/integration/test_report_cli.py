"""`cxpulse report` and `cxpulse drivers` as a user runs them, on an embedded store that a helper process fills
with a simulated day (chdb opens one store per process: the filling and every command run apart from the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import cxpulse_command

FILL = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from schemas.codec import LocalCatalog
    from sinks import clickhouse as store
    from streams.config import Settings
    from streams.replay import replay_file
    from streams.simulate import Simulator
    from streams.core.windows import result_record

    folder = Path(sys.argv[1])
    now = int(time.time() * 1000)
    events = [e for batch in Simulator(seed=5, rate=0.05, start_ms=now - 8 * 86_400_000).run(8 * 86_400_000 - 60_000)
              for e in batch]
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\\n" for e in events))
    client = store.connect(Settings(clickhouse_url=f"chdb://{folder / 'store'}"))
    store.migrate(client)
    rows = [store.pane_row(result_record(r)) for r in replay_file(path, 60_000, lambda d: None).results()]
    store.insert(client, "pane_results", rows, store.PANE_COLUMNS, "panes")
    answers = store.answer_rows([json.dumps(e).encode() for e in events], LocalCatalog())
    store.insert(client, "answers", answers, store.ANSWER_COLUMNS, "answers")
    """
)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("report")
    done = subprocess.run(
        [sys.executable, "-c", FILL, str(folder)], capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield {
        **os.environ,
        "CXPULSE_CLICKHOUSE_URL": f"chdb://{folder / 'store'}",
        "CXPULSE_DATA_DIR": str(folder),
        "COLUMNS": "250",
    }


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cxpulse_command(*args), env=env, capture_output=True, text=True, check=False, timeout=300, cwd=cwd
    )


def test_the_store_read_is_named_first_and_a_folder_without_one_is_refused(
    filled: dict[str, str], tmp_path: Path
) -> None:
    done = cli(filled, "report", "--window", "24h")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == f"store: {Path(filled['CXPULSE_CLICKHOUSE_URL'][7:]).resolve()} (embedded)"
    elsewhere = {k: v for k, v in filled.items() if k not in ("CXPULSE_CLICKHOUSE_URL", "CXPULSE_DATA_DIR")}
    for command in ("report", "drivers"):
        done = cli(elsewhere, command, cwd=tmp_path)
        assert done.returncode == 1, done.stdout
        assert f"no cxpulse store at {tmp_path.resolve() / '.cxpulse' / 'clickhouse'}" in done.stderr
        assert not (tmp_path / ".cxpulse").exists()  # nothing created


def test_an_unknown_metric_or_channel_says_what_exists(filled: dict[str, str]) -> None:
    done = cli(filled, "report", "--metric", "XYZ")
    assert done.returncode == 2 and "--metric XYZ: one of NPS, CES, CSAT, NLS, CAS" in done.stderr
    done = cli(filled, "drivers", "--channel", "chatt")
    assert done.returncode == 1
    assert "no channel 'chatt' in the store; its channels: " in done.stderr and "chat," in done.stderr


def test_drivers_top_limits_every_format(filled: dict[str, str]) -> None:
    done = cli(filled, "drivers", "--channel", "chat", "--window", "7d", "--top", "2", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    per_dimension = {d: sum(r["dimension"] == d for r in rows) for d in ("touchpoint", "reason_code", "agent", "team")}
    assert rows and max(per_dimension.values()) == 2


def test_an_answer_without_an_agent_is_grouped_as_none(filled: dict[str, str]) -> None:
    done = cli(filled, "report", "--window", "7d", "--by", "agent", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    agents = {json.loads(line)["agent"] for line in done.stdout.splitlines()}
    assert "none" in agents and "" not in agents


def test_a_table_leaves_out_groups_too_small_for_a_kpi_and_dates_a_long_window(filled: dict[str, str]) -> None:
    done = cli(filled, "report", "--window", "7d", "--by", "agent")
    assert done.returncode == 0, done.stderr
    assert "insufficient data" not in done.stdout
    assert "with fewer than 30 answers not shown (too few for a KPI; --min-n 1 shows every group)" in done.stderr
    spans = [line for line in done.stdout.splitlines() if "→" in line]
    assert spans and all(line.split("→")[1].split()[0].count("-") == 2 for line in spans)  # the end has its date
    everything = cli(filled, "report", "--window", "7d", "--by", "agent", "--min-n", "1")
    assert everything.stdout.count("→") > done.stdout.count("→")
