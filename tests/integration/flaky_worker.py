"""`cxpulse worker` with processing failures injected, for tests: the first N calls of validate_batch raise.

Run as ``python -m tests.integration.flaky_worker`` with CXPULSE_TEST_FAILURES=N and the usual CXPULSE_ settings.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import streams.worker as worker_module
from streams.cli import main

FAILURES = int(os.environ["CXPULSE_TEST_FAILURES"])
_real = worker_module.validate_batch
_calls = [0]


def _flaky(*args: Any, **kwargs: Any) -> Any:
    _calls[0] += 1
    if _calls[0] <= FAILURES:
        raise RuntimeError(f"injected failure {_calls[0]} of {FAILURES}")
    return _real(*args, **kwargs)


worker_module.validate_batch = _flaky  # type: ignore[assignment]
sys.argv = ["cxpulse", "worker"]
main()
