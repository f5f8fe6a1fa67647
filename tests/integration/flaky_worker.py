"""`cxpulse worker` with processing failures injected, for tests: its hot path is tests.integration.flaky_hotpath
and its Faust process tests.integration.flaky_merge.

Run as ``python -m tests.integration.flaky_worker`` with CXPULSE_TEST_HOTPATH_FAILURES=N,
CXPULSE_TEST_MERGE_FAILURES=M and the usual CXPULSE_ settings.
"""

from __future__ import annotations

import sys

from streams.cli import main
from streams.worker import supervisor

supervisor.HOTPATH_MODULE = "tests.integration.flaky_hotpath"
supervisor.PROCESSES_MODULE = "tests.integration.flaky_merge"
sys.argv = ["cxpulse", "worker"]
main()
