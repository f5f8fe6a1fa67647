"""Each process of a worker imports only its own side (streams/processes/): the sink never imports Faust, aiokafka
or the agents, the Faust processes never clickhouse-connect (issue 35, item 5: memory and start-up of every
process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("faust", "aiokafka", "clickhouse_connect", "chdb", "streams.agents.base", "streams.worker.journey_agent")
# runs ``python -m streams.processes NAME`` as the supervisor does, and says at its exit what it had imported
PROBE = (
    "import atexit, json, runpy, sys\n"
    f"atexit.register(lambda: print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr))\n"
    "runpy.run_module('streams.processes', run_name='__main__', alter_sys=True)\n"
)


def imported(name: str, tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    """Run the process ``name`` with settings it refuses at start (so it exits there, having imported what it
    runs); its exit code and which of HEAVY it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, name, "0", "warn"],
        env={**os.environ, "CXPULSE_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stderr.strip().splitlines()[-1])


def test_the_sink_process_runs_without_faust_or_the_agents(tmp_path: Path) -> None:
    code, heavy = imported("sink", tmp_path, CXPULSE_CLICKHOUSE_URL="")  # no store: it stops at its start
    assert code == 2
    assert heavy == []  # clickhouse-connect too: it comes with the first connect


@pytest.mark.parametrize("name", ["merge", "journeys"])
def test_the_faust_processes_run_without_clickhouse_connect(name: str, tmp_path: Path) -> None:
    code, heavy = imported(name, tmp_path, CXPULSE_PARTITIONS="0")  # refused settings: it stops at its start
    assert code == 2
    assert heavy == ["faust", "aiokafka", "streams.agents.base", "streams.worker.journey_agent"]
