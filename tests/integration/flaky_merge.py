"""The Faust processes, with the first CXPULSE_TEST_MERGE_FAILURES merge steps raising before they write (see
flaky_worker)."""

from __future__ import annotations

import os
import sys
from typing import Any

from streams.processes import main
from streams.worker.merge import MergeStep

FAILURES = int(os.environ.get("CXPULSE_TEST_MERGE_FAILURES", "0"))
_real = MergeStep.finish
_calls = [0]


def _flaky(self: MergeStep) -> Any:
    _calls[0] += 1
    if _calls[0] <= FAILURES:
        raise RuntimeError(f"injected failure {_calls[0]} of {FAILURES} in merge")
    return _real(self)


MergeStep.finish = _flaky  # type: ignore[method-assign]
sys.exit(main())
