"""A local single-node Apache Kafka (KRaft) run from the jars that Maven resolves (``deploy/kafka/pom.xml``).

Used by ``cxpulse broker``, ``cxpulse demo`` and the test session.  The broker runs as a child ``java``
process that is told by the kernel (``PR_SET_PDEATHSIG``) to stop when its parent dies, so a ``kill -9``
of the parent never leaves an orphan JVM behind.
"""

from __future__ import annotations

import base64
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import FrameType

from streams.config import REPO_ROOT
from streams.errors import BrokerError
from streams.kafka import admin_client

KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
DEFAULT_HEAP = "512m"  # JVM heap of the local broker
READY_TIMEOUT_SECONDS = 60.0  # a broker that is not ready by then is reported as failed
STOP_TIMEOUT_SECONDS = 20.0  # SIGTERM, then SIGKILL after this long
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class Listener:
    """A client listener beside the PLAINTEXT one (the tests' SASL_SSL listener, say)."""

    name: str  # listener name and security protocol, e.g. SASL_SSL
    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class BrokerSpec:
    """Where and how a local broker runs: one combined KRaft node, alone (the default) or one of a cluster
    (``node_id``, ``voters``, ``replicas``)."""

    port: int
    controller_port: int
    data_dir: Path
    lib_dir: Path
    heap: str = DEFAULT_HEAP
    partitions: int = 1
    offsets_partitions: int = 6  # partitions of __consumer_offsets and the transaction log (small = fast)
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters; empty: this node alone
    replicas: int = 1  # replication factor of internal and new topics (default.replication.factor)
    min_isr: int = 1
    listeners: tuple[Listener, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # more server properties
    cluster_id: str = ""  # empty: a new random one when the storage is formatted
    roles: str = "broker,controller"  # process.roles: "broker" or "controller" for a node of a split cluster

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def log_file(self) -> Path:
        return self.kafka_dir / "broker.log"


def ensure_jars(lib_dir: Path, echo: Callable[[str], None] = print) -> Path:
    """Return ``lib_dir`` holding the Kafka jars, resolving them with Maven first when they are missing."""
    if list(lib_dir.glob("kafka_2.13-*.jar")):
        return lib_dir
    pom = KAFKA_DEPLOY_DIR / "pom.xml"
    if not pom.is_file():
        raise BrokerError(
            f"the local Kafka needs the build files of a cxpulse source checkout ({pom} is missing: an installed "
            "package does not carry them); run `cxpulse broker` / `demo` from a clone, or point "
            "CXPULSE_KAFKA_BOOTSTRAP at a Kafka of your own"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(f"Kafka jars are missing in {lib_dir} and Maven (mvn) is not installed to fetch them")
    echo(f"resolving the Kafka jars from Maven Central into {lib_dir} (once) ...")
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-Dkafka.lib.dir={lib_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not list(lib_dir.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"mvn could not resolve the Kafka jars (exit {done.returncode}): {done.stdout[-2000:]}")
    return lib_dir


def kafka_version(lib_dir: Path) -> str:
    """The Kafka version of the resolved jars, read from the kafka_2.13 jar's name."""
    jars = sorted(lib_dir.glob("kafka_2.13-*.jar"))
    if not jars:
        raise BrokerError(f"no kafka_2.13 jar in {lib_dir}")
    return jars[-1].name.removeprefix("kafka_2.13-").removesuffix(".jar")


def write_server_properties(spec: BrokerSpec) -> Path:
    """Write ``server.properties`` for this spec and return its path."""
    spec.kafka_dir.mkdir(parents=True, exist_ok=True)
    template = Template((KAFKA_DEPLOY_DIR / "server.properties.template").read_text())
    extra_listeners = "".join(f",{lis.name}://{lis.host}:{lis.port}" for lis in spec.listeners)
    broker_listener = f"PLAINTEXT://127.0.0.1:{spec.port}{extra_listeners}"
    controller_listener = f"CONTROLLER://127.0.0.1:{spec.controller_port}"
    roles = set(spec.roles.split(","))
    listeners = [broker_listener] if "broker" in roles else []
    listeners += [controller_listener] if "controller" in roles else []
    lines = [f"listeners={','.join(listeners)}"]
    if "broker" in roles:  # a controller-only node has no broker listener to advertise or to talk to brokers on
        lines += [f"advertised.listeners={broker_listener}", "inter.broker.listener.name=PLAINTEXT"]
    text = template.substitute(
        roles=spec.roles,
        node_id=spec.node_id,
        voters=spec.voters or f"{spec.node_id}@127.0.0.1:{spec.controller_port}",
        listener_lines="\n".join(lines),
        protocols="".join(f",{lis.name}:{lis.name}" for lis in spec.listeners),
        log_dirs=spec.kafka_dir / "logs",
        partitions=spec.partitions,
        offsets_partitions=spec.offsets_partitions,
        replicas=spec.replicas,
        min_isr=spec.min_isr,
        extra="\n".join(f"{key}={value}" for key, value in spec.extra),
    )
    path = spec.kafka_dir / "server.properties"
    path.write_text(text)
    return path


def _java(spec: BrokerSpec, main_class: str, *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java is not installed: the local Kafka broker needs Java 17 or newer")
    return [
        java,
        f"-Xmx{spec.heap}",
        f"-Xms{spec.heap}",
        "-XX:+UseG1GC",
        "-XX:TieredStopAtLevel=1",  # C1 only: faster start-up, plenty for a local broker
        "-Xshare:auto",
        f"-Dlog4j2.configurationFile={KAFKA_DEPLOY_DIR / 'log4j2.properties'}",
        "-cp",
        str(spec.lib_dir / "*"),
        main_class,
        *args,
    ]


def format_storage(spec: BrokerSpec, properties: Path) -> bool:
    """Format the KRaft storage on first start; return True when it formatted, False when already done."""
    if (spec.kafka_dir / "logs" / "meta.properties").exists():
        return False
    cluster_id = spec.cluster_id or new_cluster_id()
    # "--cluster-id=ID", not "-t ID": a random id may start with "-" and read as an option
    cmd = _java(spec, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(properties))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"formatting KRaft storage failed (exit {done.returncode}): {done.stdout}{done.stderr}")
    return True


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool expects)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the parent process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(spec: BrokerSpec) -> subprocess.Popen[bytes]:
    """Format storage if needed and start the broker in the background; its output goes to the log file."""
    properties = write_server_properties(spec)
    format_storage(spec, properties)
    log = spec.log_file.open("ab")
    try:
        return subprocess.Popen(  # our own java command line
            _java(spec, "kafka.Kafka", str(properties)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no Python state touched
        )
    finally:
        log.close()


def wait_ready(spec: BrokerSpec, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_SECONDS) -> float:
    """Block until the broker answers a metadata request; return the seconds it took.

    Raises BrokerError with the tail of the broker log when the JVM exits or the timeout passes.
    """
    started = time.monotonic()
    admin = admin_client(spec.bootstrap)
    while True:
        if proc.poll() is not None:
            raise BrokerError(f"the Kafka broker exited with {proc.returncode}:\n{_tail(spec.log_file)}")
        try:
            metadata = admin.list_topics(timeout=1.0)
            if metadata.brokers:
                return time.monotonic() - started
        except Exception:  # noqa: S110, BLE001 - not up yet: librdkafka raises KafkaException until it is
            pass
        if time.monotonic() - started > timeout:
            raise BrokerError(f"the Kafka broker was not ready after {timeout:.0f} s:\n{_tail(spec.log_file)}")


def stop(
    proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS, how: signal.Signals = signal.SIGTERM
) -> int:
    """Stop a child (the broker, the demo's worker, a profiler: SIGINT): ``how`` (SIGTERM: a clean shutdown),
    SIGKILL if it is still there after timeout."""
    if proc.poll() is None:
        proc.send_signal(how)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no broker log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


# --- a broker in the foreground (cxpulse broker, cxpulse demo) ------------------------------------------


class Interrupted(Exception):  # noqa: N818 - names what happened, as KeyboardInterrupt does
    """Ctrl-C or SIGTERM arrived while the local broker was starting; it has been stopped."""


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Foreground:
    """Ctrl-C / SIGTERM handling for a foreground broker: the first signal asks Kafka to shut down cleanly
    (SIGTERM to the JVM, and to the processes registered with ``also_stop``), a second one kills it.  The
    handler only sends signals; the main thread waits."""

    def __init__(self, proc: subprocess.Popen[bytes], echo: Callable[[str], None]) -> None:
        self.proc = proc
        self.echo = echo
        self.others: list[subprocess.Popen[bytes]] = []  # stopped with the broker (the demo's worker)
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.proc.poll() is not None:
            return
        if self.requested:
            self.proc.kill()
            return
        self.requested = True
        self.echo(f"stopping ({signal.Signals(signum).name}; again to kill) ...")
        for other in self.others:
            if other.poll() is None:
                other.send_signal(signal.SIGTERM)
        self.proc.send_signal(signal.SIGTERM)

    def also_stop(self, proc: subprocess.Popen[bytes]) -> None:
        self.others.append(proc)

    def wait(self, log_file: Path) -> None:
        """Wait for the broker to exit; BrokerError unless it exited because it was asked to."""
        code = self.proc.wait()
        if not self.requested and code != 0:
            raise BrokerError(f"the Kafka broker exited with {code}; see {log_file}")


def start_foreground(
    data_dir: Path, lib_dir: Path, port: int, controller_port: int | None, heap: str, echo: Callable[[str], None]
) -> tuple[BrokerSpec, subprocess.Popen[bytes], Foreground, float]:
    """Check the ports, resolve the jars, start the broker and wait until it is ready: its spec, process, signal
    handling and start-up seconds.  BrokerError names the step that failed; Interrupted on Ctrl-C meanwhile."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"data folder {data_dir} (--data-dir / CXPULSE_DATA_DIR): {exc.strerror or exc}") from exc
    controller = controller_port if controller_port is not None else port + 1
    for name, value in (("--port", port), ("--controller-port", controller)):
        if not port_free(value):
            raise BrokerError(f"{name} {value}: the port is in use on 127.0.0.1 (another broker running?)")
    spec = BrokerSpec(port, controller, data_dir.resolve(), ensure_jars(lib_dir, echo=echo), heap=heap)
    proc = start(spec)
    foreground = Foreground(proc, echo)
    try:
        took = wait_ready(spec, proc)
    except BrokerError:
        stop(proc)
        if foreground.requested:
            raise Interrupted from None
        raise
    return spec, proc, foreground, took
