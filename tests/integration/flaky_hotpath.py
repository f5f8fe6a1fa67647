"""A hot-path slot with faults injected (see flaky_worker), each chosen by an environment variable:

- CXPULSE_TEST_HOTPATH_FAILURES=N: the first N calls of validate_batch raise (before the transaction begins);
- CXPULSE_TEST_HOTPATH_SEND_FAILURES=N: the first N calls of send_offsets_to_transaction fail, after the batch's
  dead letters, partials and seen ids were produced in the open transaction (it must be aborted: none visible);
- CXPULSE_TEST_HOTPATH_HANG=FILE: the first transaction's send_offsets_to_transaction never returns (librdkafka
  #5456, reproduced) in the first incarnation of the slot (FILE marks that it happened);
- CXPULSE_TEST_HOTPATH_STALL=FILE: the first batch blocks forever in Python, outside any Kafka call (a stall only
  the supervisor's watchdog can end), in the first incarnation (FILE marks it);
- CXPULSE_TEST_SEEN_FLUSH_IDS=N: the remembered ids become a run on disk every N ids (and at every housekeeping
  tick): a steady burst of local writes;
- CXPULSE_TEST_SEEN_CRASH=FILE: the slot kills itself with SIGKILL while it writes its third run, after the run's
  files are on disk and before the manifest names them (first incarnation only; FILE marks it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

import streams.worker.ingest as ingest
from streams.worker import hotpath, seen, transactor
from streams.worker.hotpath import main
from tests.support import first_time

FAILURES = int(os.environ.get("CXPULSE_TEST_HOTPATH_FAILURES", "0"))
HANG = os.environ.get("CXPULSE_TEST_HOTPATH_HANG", "")
SEND_FAILURES = int(os.environ.get("CXPULSE_TEST_HOTPATH_SEND_FAILURES", "0"))
_sends = [0]
STALL = os.environ.get("CXPULSE_TEST_HOTPATH_STALL", "")
SEEN_FLUSH_IDS = int(os.environ.get("CXPULSE_TEST_SEEN_FLUSH_IDS", "0"))
SEEN_CRASH = os.environ.get("CXPULSE_TEST_SEEN_CRASH", "")
_saved = [0]
_real = ingest.validate_batch
_calls = [0]


def _flaky(*args: Any, **kwargs: Any) -> Any:
    _calls[0] += 1
    if _calls[0] <= FAILURES:
        raise RuntimeError(f"injected failure {_calls[0]} of {FAILURES}")
    return _real(*args, **kwargs)


class _HangingProducer:
    """A Producer whose send_offsets_to_transaction never returns (once)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def send_offsets_to_transaction(self, *args: Any) -> None:
        if first_time(HANG):
            threading.Event().wait()  # forever, like librdkafka #5456
        _sends[0] += 1
        if _sends[0] <= SEND_FAILURES:
            error = KafkaError(KafkaError._TIMED_OUT, f"injected send failure {_sends[0]} of {SEND_FAILURES}")
            raise KafkaException(error)
        self._real.send_offsets_to_transaction(*args)


ingest.validate_batch = _flaky  # type: ignore[assignment]
if HANG or SEND_FAILURES:
    _new = transactor.Transactor.new_producer
    transactor.Transactor.new_producer = lambda self: _HangingProducer(_new(self))  # type: ignore[method-assign,assignment,return-value]
if STALL:
    _process = hotpath.HotPath.process

    def _stalling(self: hotpath.HotPath, messages: list[Any]) -> None:
        if first_time(STALL):
            self.progress.begin()
            threading.Event().wait()  # forever, in Python: no Kafka call, no guard
        _process(self, messages)

    hotpath.HotPath.process = _stalling  # type: ignore[method-assign]
if SEEN_FLUSH_IDS:
    seen.FLUSH_IDS = SEEN_FLUSH_IDS
    seen.FLUSH_SECONDS = 0.0
if SEEN_CRASH:
    _save = seen.Run.save

    def _crashing_save(self: seen.Run, directory: Path) -> dict[str, object]:
        entry = _save(self, directory)
        _saved[0] += 1
        if _saved[0] == 3 and first_time(SEEN_CRASH):
            os.kill(os.getpid(), signal.SIGKILL)  # the run is on disk, the manifest does not name it yet
        return entry

    seen.Run.save = _crashing_save  # type: ignore[method-assign]
sys.exit(main())
