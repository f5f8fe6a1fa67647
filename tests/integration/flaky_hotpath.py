"""A hot-path slot whose first CXPULSE_TEST_HOTPATH_FAILURES calls of validate_batch raise (see flaky_worker)."""

from __future__ import annotations

import os
import sys
from typing import Any

import streams.worker.ingest as ingest
from streams.worker.hotpath import main

FAILURES = int(os.environ.get("CXPULSE_TEST_HOTPATH_FAILURES", "0"))
_real = ingest.validate_batch
_calls = [0]


def _flaky(*args: Any, **kwargs: Any) -> Any:
    _calls[0] += 1
    if _calls[0] <= FAILURES:
        raise RuntimeError(f"injected failure {_calls[0]} of {FAILURES}")
    return _real(*args, **kwargs)


ingest.validate_batch = _flaky  # type: ignore[assignment]
sys.exit(main())
