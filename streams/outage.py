"""Quiet outages: a lost Kafka connection is logged once when it goes down and once when it comes back.

Every Kafka client logs each failed attempt: librdkafka (through logger ``cxpulse.kafka``), aiokafka, Faust and
mode each write an ERROR or WARNING per retry and per client, about 8,400 lines for a few seconds of broker
restart.  :class:`OutageLog` is a logging filter on the process's handlers: the first connection failure
starts an outage (one WARNING naming it, once a probe of the bootstrap servers fails too); until every bootstrap
server accepts connections again, the Kafka clients' warnings and errors are counted instead of written; then
one line says how long it lasted and how many failed attempts it absorbed.  For ``SETTLE_SECONDS`` after that,
the clients' retries of a group coordinator that is not ready yet (a restarted broker accepts connections before
it has loaded its groups: aiokafka then writes three lines per heartbeat, ~30 a second, seen in the fault suite)
are counted too, and one line says how many there were.  ``active`` tells the process's own
code (a failing batch logs at DEBUG during an outage: it is counted in ``cxpulse_worker_batch_errors_total``
either way); ``seconds()`` how long Kafka has been away (readiness: streams.agents.health).

Example::

    outage = OutageLog.install(settings.kafka_bootstrap)   # once per process, after logging is set up
    if outage.active: ...
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable

LOG = logging.getLogger("cxpulse.outage")
# loggers of the Kafka clients (and of Faust, whose services log every failed request of theirs)
CLIENT_LOGGERS = ("cxpulse.kafka", "aiokafka", "faust", "mode", "kafka")
PROBE_SECONDS = 1.0  # while down: how often the bootstrap servers are tried
PROBE_TIMEOUT_SECONDS = 1.0
# the watcher wakes at once when an outage is suspected (the filter sets ``wake``); else this often, to give handlers
# added later the filter and end a settling.  It was 0.2 s, a poll: five wakes a second of each of the worker's
# five processes, 0.4% of a core of the quiet run's py-spy samples (issue 35)
WATCH_SECONDS = 1.0
SETTLE_SECONDS = 5.0  # after an outage: group-coordinator retries are counted, not written, this long
# what a failed connection attempt says, in librdkafka's, aiokafka's and Faust's words
_CONNECTION_FAILURE = re.compile(
    r"connection refused|connect to .* failed|connect call failed|unable connect|unable to connect|"
    r"brokers are down|all broker connections are down|disconnected|broker transport failure|"
    r"connection reset|connection closed|kafkaconnectionerror|nodenotready|no route to host|"
    r"name or service not known|failed to resolve|timed out",
    re.IGNORECASE,
)
# what a client retrying a group coordinator that is not ready says (aiokafka's heartbeat and coordinator lookups)
_COORDINATOR_RETRY = re.compile(
    r"coordinator .*not (started|valid|available)|marking (the )?coordinator dead|coordinator load in progress|"
    r"not_coordinator|coordinator_not_available",
    re.IGNORECASE,
)


def is_client_record(record: logging.LogRecord) -> bool:
    """True for a record of one of the Kafka clients (or Faust)."""
    name = record.name
    return any(name == logger or name.startswith(logger + ".") for logger in CLIENT_LOGGERS)


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """(host, port) of each bootstrap server."""
    out = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def tcp_probe(addresses: list[tuple[str, int]]) -> Callable[[], bool]:
    """A probe that holds when every address accepts a TCP connection."""

    def probe() -> bool:
        for address in addresses:
            try:
                socket.create_connection(address, timeout=PROBE_TIMEOUT_SECONDS).close()
            except OSError:
                return False
        return True

    return probe


class OutageLog(logging.Filter):
    """A logging filter that turns a Kafka outage into two lines (see the module docstring).

    The first connection failure makes an outage *suspected*: client records are held back from then on, and the
    watcher confirms it only when the brokers do not answer its own probe (a failed attempt of a client that
    reconnects at once, seen after every recovery, is no outage and writes nothing)."""

    def __init__(self, probe: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("cxpulse-outage")
        self.probe = probe
        self.clock = clock
        self.lock = threading.Lock()
        self.since: float | None = None  # monotonic start of the current (suspected or confirmed) outage
        self.confirmed = False  # the probe failed too: the outage was logged
        self.first = ""  # what the first failure said
        self.attempts = 0  # failed connection attempts the clients reported in it
        self.absorbed = 0  # client warnings and errors not written during it
        self.outages = 0  # how many were confirmed in this process
        self.settling_until: float | None = None  # after an outage: coordinator retries are counted until then
        self.coordinator_retries = 0  # ... how many
        self.wake = threading.Event()  # set when an outage becomes suspected: the watcher probes at once

    @property
    def active(self) -> bool:
        return self.since is not None

    def seconds(self) -> float:
        """How long the current confirmed outage has lasted (0 when there is none)."""
        since = self.since
        return 0.0 if since is None or not self.confirmed else self.clock() - since

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == LOG.name or record.levelno < logging.WARNING or not is_client_record(record):
            return True
        message = record.getMessage()
        failure = bool(_CONNECTION_FAILURE.search(message))
        with self.lock:
            if self.since is None:
                if not failure:
                    if self.settling_until is not None and _COORDINATOR_RETRY.search(message):
                        self.coordinator_retries += 1
                        return False
                    return True  # a client's warning outside an outage is written as it is
                self.since, self.confirmed, self.attempts, self.absorbed = self.clock(), False, 0, 0
                self.first = f"{record.name}: {message.strip()[:300]}"
                self.wake.set()
            self.attempts += failure
            self.absorbed += 1
        return False

    def check(self) -> None:
        """Probe the brokers while an outage is suspected or confirmed: confirm it (one line) when they do not
        answer; end it (one line, if it was confirmed) when they do; after it, one line for the coordinator retries
        held back."""
        self._settle()
        if self.since is None:
            return
        up = self.probe()
        with self.lock:
            if self.since is None:
                return
            if not up:
                if self.confirmed:
                    return
                self.confirmed = True
                self.outages += 1
                message, ended = self.first, None
            else:
                ended = (self.clock() - self.since, self.attempts, self.absorbed, self.confirmed)
                self.since, self.confirmed = None, False
                if ended[3]:  # (a settling that an outage interrupted keeps its count)
                    self.settling_until = self.clock() + SETTLE_SECONDS
        if ended is None:
            LOG.warning(
                "Kafka connection lost (%s); the clients retry quietly, the next line says when it is back", message
            )
        elif ended[3]:
            LOG.warning(
                "Kafka connection back after %.1f s (%d failed connection attempts, %d client warnings and errors "
                "not written)",
                *ended[:3],
            )

    def _settle(self) -> None:
        """The settling after an outage is over: one line for the coordinator retries it held back, if any."""
        with self.lock:
            if self.settling_until is None or self.clock() < self.settling_until:
                return
            retries, self.settling_until, self.coordinator_retries = self.coordinator_retries, None, 0
        if retries:
            LOG.warning(
                "Kafka's group coordinators took their groups back: %d client retries in the %.0f s after the outage "
                "not written",
                retries,
                SETTLE_SECONDS,
            )

    def attach(self) -> None:
        """Filter every handler of the root logger (idempotent: handlers set up later are filtered the next
        time)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)

    def _watch(self) -> None:
        while True:
            self.wake.clear()  # an outage suspected from here on ends the rest below at once
            self.attach()
            self.check()
            self.rest()

    def rest(self) -> None:
        """The watcher's pause: PROBE_SECONDS while Kafka is away, else until an outage is suspected, a settling
        ends, or WATCH_SECONDS passed."""
        settling = self.settling_until
        if self.since is not None:
            pause = PROBE_SECONDS
        elif settling is not None:
            pause = max(0.0, min(WATCH_SECONDS, settling - self.clock()))
        else:
            pause = WATCH_SECONDS
        self.wake.wait(pause)

    @classmethod
    def install(cls, bootstrap: str) -> OutageLog:
        """The process's outage log for ``bootstrap``: attached to the root handlers now and (by a daemon thread
        that also probes the brokers while they are away) to any handler added later."""
        outage = cls(tcp_probe(bootstrap_addresses(bootstrap)))
        outage.attach()
        threading.Thread(target=outage._watch, name="cxpulse-outage", daemon=True).start()
        return outage
