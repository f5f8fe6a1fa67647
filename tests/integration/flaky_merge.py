"""The Faust processes with faults injected (see flaky_worker), each chosen by an environment variable:

- CXPULSE_TEST_MERGE_FAILURES=M: the first M merge steps raise before they write;
- CXPULSE_TEST_TABLES_CRASH=FILE: the merge process writes its local copies every 0.2 s (a steady burst of
  RocksDB writes) and kills itself with SIGKILL inside a checkpoint, once it wrote the panes' copies
  ``CRASH_AFTER_WRITES`` times before: after one partition's batch is in RocksDB and before another panes
  partition of the same checkpoint is (first incarnation only; FILE marks it).  A crash at a fixed count of
  writes never came when the merge took the test's first half in fewer checkpoints (seen in CI, 2026-12-03).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from streams.agents.local_tables import LocalTables
from streams.processes import agents, main
from streams.worker.merge import MergeStep
from tests.support import first_time

FAILURES = int(os.environ.get("CXPULSE_TEST_MERGE_FAILURES", "0"))
TABLES_CRASH = os.environ.get("CXPULSE_TEST_TABLES_CRASH", "")
_real = MergeStep.finish
_calls = [0]
_writes = [0]  # writes to the panes' copies made by checkpoints
_left = [0]  # panes partitions the checkpoint under way has still to write
CRASH_AFTER_WRITES = 2


def _flaky(self: MergeStep) -> Any:
    _calls[0] += 1
    if _calls[0] <= FAILURES:
        raise RuntimeError(f"injected failure {_calls[0]} of {FAILURES} in merge")
    return _real(self)


MergeStep.finish = _flaky  # type: ignore[method-assign]
if TABLES_CRASH and sys.argv[1:2] == ["merge"]:
    _write = LocalTables._write
    _checkpoint = LocalTables.checkpoint
    agents.CHECKPOINT_SECONDS = 0.2

    def _counting_checkpoint(self: LocalTables) -> int:
        _left[0] = sum(1 for topic, _ in self._pending if topic.endswith("-panes-changelog"))
        try:
            return _checkpoint(self)
        finally:
            _left[0] = 0

    def _crashing_write(self: LocalTables, topic: str, partition: int, *args: Any) -> None:
        _write(self, topic, partition, *args)
        if topic.endswith("-panes-changelog") and _left[0] > 0:
            _writes[0] += 1
            _left[0] -= 1
            if _writes[0] > CRASH_AFTER_WRITES and _left[0] > 0 and first_time(TABLES_CRASH):
                os.kill(os.getpid(), signal.SIGKILL)  # this partition's copy moved on, another not yet

    LocalTables.checkpoint = _counting_checkpoint  # type: ignore[method-assign]
    LocalTables._write = _crashing_write  # type: ignore[method-assign]
sys.exit(main())
