"""Honest health: ready means making progress, and every blocking Kafka call has a bound.

- :class:`Progress`: when a process last made progress (committed a batch, or found nothing waiting), and for
  how long it has been stalled (no progress while input waits or a batch is in flight).  A process is not
  ready once it has been stalled ``CXPULSE_STALL_SECONDS``; the supervisor restarts it once it has been
  stalled ``CXPULSE_STALL_RESTART_SECONDS`` (streams.worker.supervisor).
- :class:`CallGuard`: a call into librdkafka cannot be interrupted, and some never return (librdkafka #5456:
  ``send_offsets_to_transaction`` never checks its coordinator-request timeout; #5511: it hangs while a
  decommissioned broker stays cached as group coordinator).  The guard's thread ends the process when a
  guarded call overruns its bound; the supervisor restarts it, Kafka aborts its open transaction, and the batch
  is read again by the next incarnation: nothing counts twice, nothing is lost.
- :func:`serve`: ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (making progress; 503 with the
  reasons otherwise) on one port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import ThreadingWSGIServer

LOG = logging.getLogger("cxpulse.health")
EXIT_WEDGED = 3  # exit code of a process that ended itself because a Kafka call never returned (restarted)
GUARD_CHECK_SECONDS = 0.5


class Progress:
    """When a process last made progress, and whether something is waiting for it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = clock()  # last progress (a batch done, or nothing waiting)
        self.busy_since: float | None = None  # a batch in flight since
        self.lags: dict[str, int] = {}  # per input (observe): messages waiting at the last look
        self.positions: dict[str, int] = {}  # per input (observe): how far it was applied at the last look
        self.waiting: Callable[[], bool] = lambda: any(lag > 0 for lag in self.lags.values())

    def observe(self, source: str, position: int, lag: int) -> None:
        """A periodic look at one input of the process (a topic, a partition): how far it has been applied and
        how much waits.  A position that moved is progress."""
        previous = self.positions.get(source)
        if previous is not None and position > previous:
            self.done()
        self.positions[source] = position
        self.lags[source] = lag
        self.idle()

    def forget(self, source: str) -> None:
        """An input no longer held (revoked)."""
        self.positions.pop(source, None)
        self.lags.pop(source, None)

    def begin(self) -> None:
        """A batch is in flight."""
        if self.busy_since is None:
            self.busy_since = self.clock()

    def done(self) -> None:
        """A batch was committed (or acked)."""
        self.at = self.clock()
        self.busy_since = None

    def advanced(self) -> None:
        """Part of a batch in flight is done (its input applied, its output flushed): a batch of a backlog can
        take minutes in a process that runs niced on busy cores, and is progress all the while."""
        self.at = self.clock()

    def failed(self) -> None:
        """A batch failed: nothing is in flight, but the input still waits (no progress)."""
        self.busy_since = None

    def idle(self) -> None:
        """Nothing is waiting: an idle process is not stalled."""
        if self.busy_since is None and not self.waiting():
            self.at = self.clock()

    def stalled(self) -> float:
        """Seconds without progress while input waits or a batch is in flight (0 otherwise)."""
        if self.busy_since is None and not self.waiting():
            return 0.0
        return max(0.0, self.clock() - self.at)


class ProcessHealth:
    """A process's readiness: its own condition (``base``, e.g. partitions held and state restored), progress
    (not stalled for ``bound`` seconds) and Kafka (not away for ``bound`` seconds, streams.outage)."""

    def __init__(self, bound: float, outage: Any = None) -> None:
        self.bound = bound
        self.progress = Progress()
        self.outage = outage

    def ready(self, base: bool) -> bool:
        away = self.outage.seconds() if self.outage is not None else 0.0
        return base and self.progress.stalled() < self.bound and away < self.bound


class FailureStreak:
    """A recurring operation (a timer's Kafka call, say) that fails during an outage: one line when it starts
    failing, one when it works again, not one per try."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failures = 0
        self.since = 0.0

    def failed(self, exc: BaseException) -> None:
        if self.failures == 0:
            self.since = time.monotonic()
            self.log.warning("%s failed (%s); retried quietly until it works again", self.what, _reason(exc))
        self.failures += 1

    def succeeded(self) -> None:
        if self.failures:
            self.log.warning(
                "%s works again after %d failed tries in %.1f s",
                self.what,
                self.failures,
                time.monotonic() - self.since,
            )
            self.failures = 0


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class CallGuard:
    """Bounds blocking calls from outside: ``with guard("commit_transaction", 20):`` ends the process (exit
    EXIT_WEDGED) if the block has not finished 20 s later."""

    def __init__(self, name: str, exit: Callable[[int], Any] = os._exit) -> None:  # noqa: A002 - the os name
        self.name = name
        self._exit = exit
        self._call: str | None = None
        self._deadline = 0.0
        self._started = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def __call__(self, call: str, bound: float) -> Iterator[None]:
        now = time.monotonic()
        with self._lock:
            outer = self._call
            if outer is None:
                self._call, self._started, self._deadline = call, now, now + bound
        try:
            yield
        finally:
            if outer is None:
                with self._lock:
                    self._call = None

    def overrun(self, now: float) -> str | None:
        """The guarded call that has overrun its bound at ``now``, if any."""
        with self._lock:
            if self._call is not None and now > self._deadline:
                return f"{self._call} has not returned for {now - self._started:.0f} s"
        return None

    def start(self) -> None:
        """Watch the guarded calls on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"{self.name}-guard", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(GUARD_CHECK_SECONDS)
            problem = self.overrun(time.monotonic())
            if problem is not None:
                LOG.critical(
                    "%s: %s (a known librdkafka hang: confluentinc/librdkafka#5456, #5511); exiting so that the "
                    "worker restarts this process: Kafka aborts its open transaction and the batch is read again",
                    self.name,
                    problem,
                )
                logging.shutdown()
                self._exit(EXIT_WEDGED)
                return


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """No access log: Prometheus scrapes every few seconds."""


def health_app(
    page: Callable[[], bytes],
    readiness: Callable[[], tuple[bool, dict[str, Any]]],
    progress: Callable[[], bytes] | None = None,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app: ``/healthz``, ``/readyz``, ``/progress`` (a part of the page: ``progress``, when given) and
    everything else the metrics ``page`` (Prometheus text format)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"alive\n"]
        if path == "/readyz":
            ready, detail = readiness()
            body = json.dumps({"ready": ready, **detail}, sort_keys=True).encode() + b"\n"
            start_response("200 OK" if ready else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [body]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [progress() if path == "/progress" and progress is not None else page()]

    return app


def serve(
    port: int,
    host: str,
    page: Callable[[], bytes],
    readiness: Callable[[], tuple[bool, dict[str, Any]]],
    progress: Callable[[], bytes] | None = None,
) -> None:
    """Serve ``/metrics`` (``page``), ``/healthz``, ``/readyz`` and ``/progress`` on a daemon thread (OSError when
    the port is taken)."""
    app = health_app(page, readiness, progress)
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="cxpulse-http", daemon=True).start()
