"""Kafka clients (confluent-kafka) configured the cxpulse way, for a plain local broker or a production cluster
that requires TLS and SASL.

Every Kafka client of cxpulse (hot path, Faust processes, admin, produce, read, simulate, HTTP ingest) is made
here from one :class:`KafkaCluster`: the bootstrap servers and the security settings (``CXPULSE_KAFKA_*``), as
librdkafka properties for confluent-kafka and as credentials for Faust's aiokafka.  librdkafka's own log lines
go to Python logging (logger ``cxpulse.kafka``), where streams.outage turns an outage's flood of connection
errors into one line when it starts and one when it ends.

Example::

    cluster = settings.kafka                   # from CXPULSE_KAFKA_BOOTSTRAP, CXPULSE_KAFKA_SECURITY_PROTOCOL, ...
    out = producer(cluster, **{"linger.ms": 5})
    reach(cluster)                             # BrokerError naming the cause within a few seconds, or returns
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata  # type: ignore[attr-defined]  # no __all__

from streams.errors import CxPulseError, KafkaRefusedError, KafkaUnreachableError

LOG = logging.getLogger("cxpulse.kafka")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
REACH_TIMEOUT_SECONDS = 10.0  # a cluster that answers nothing is reported after this long
REFUSED_AFTER_SECONDS = 1.0  # every broker refusing connections this long: reported (nothing listens there)
# A loop that reads a partition to its end calls ``consume(num_messages=N, timeout=DRAIN_POLL_SECONDS)``: librdkafka
# waits for N messages or the whole timeout, even with the end-of-partition event queued (by design:
# confluentinc/confluent-kafka-python#407; measured here with 2.16.1: 35 messages and the EOF took 0.50 s with
# timeout 0.5, 0.05 s with 0.05).  A full batch still returns at once; a read's tail costs 50 ms, not the timeout.
DRAIN_POLL_SECONDS = 0.05
# librdkafka error codes that no retry will fix: the credentials, the certificates or the host name are wrong
_PERMANENT = {
    KafkaError._AUTHENTICATION,
    KafkaError._SSL,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
    KafkaError.ILLEGAL_SASL_STATE,
}


@dataclass(frozen=True)
class KafkaCluster:
    """Where Kafka is and how to authenticate to it.  ``str()`` is the bootstrap list (never a secret)."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str = field(default="", repr=False)
    verify_hostname: bool = True

    def __str__(self) -> str:
        return self.bootstrap

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def librdkafka(self) -> dict[str, Any]:
        """The librdkafka properties of this cluster (bootstrap and security)."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.uses_sasl:
            config.update(
                {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.username, "sasl.password": self.password}
            )
        if self.uses_tls:
            config["ssl.endpoint.identification.algorithm"] = "https" if self.verify_hostname else "none"
            if self.ca_file is not None:
                config["ssl.ca.location"] = str(self.ca_file)
            if self.cert_file is not None:
                config["ssl.certificate.location"] = str(self.cert_file)
            if self.key_file is not None:
                config["ssl.key.location"] = str(self.key_file)
            if self.key_password:
                config["ssl.key.password"] = self.key_password
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for Python clients (Faust's aiokafka), None without TLS."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.check_hostname = self.verify_hostname
        if self.cert_file is not None:
            context.load_cert_chain(
                str(self.cert_file),
                str(self.key_file) if self.key_file else None,
                password=self.key_password or None,
            )
        return context

    def faust_brokers(self) -> list[str]:
        """The bootstrap list as Faust's broker URLs."""
        return [f"kafka://{server.strip()}" for server in self.bootstrap.split(",") if server.strip()]

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for a Faust app (faust.SASLCredentials / SSLCredentials), None for PLAINTEXT."""
        import faust

        if self.uses_sasl:
            # the protocol follows from the context: SASL_SSL with one, SASL_PLAINTEXT without (faust/auth.py)
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context(),
                mechanism=self.sasl_mechanism,
            )
        context = self.ssl_context()
        return faust.SSLCredentials(context) if context is not None else None


Kafka = KafkaCluster | str  # a bare string is a PLAINTEXT bootstrap list (the local broker, tests)


def as_cluster(kafka: Kafka) -> KafkaCluster:
    return kafka if isinstance(kafka, KafkaCluster) else KafkaCluster(kafka)


def _base(kafka: Kafka, extra: dict[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {**as_cluster(kafka).librdkafka(), "logger": LOG, "log_level": 3}
    config.update(extra or {})
    return config


def admin_client(kafka: Kafka, **extra: Any) -> AdminClient:
    """An AdminClient for ``kafka``."""
    return AdminClient(_base(kafka, extra))


def producer(kafka: Kafka, **extra: Any) -> Producer:
    """An idempotent Producer for ``kafka`` (acks=all; retries never duplicate)."""
    return Producer(_base(kafka, {"enable.idempotence": True, "acks": "all", **extra}))


# a batch consumer's fetch (the hot path's, the sink's) is held at the broker until this much came, or
# CXPULSE_FETCH_WAIT_MS passed (streams/worker/hotpath.py says why)
FETCH_MIN_BYTES = 65_536
QUEUE_WAIT_SECONDS = 0.1  # a producer whose local queue is full serves its delivery reports this long, then retries


def produce_waiting(
    out: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    *,
    partition: int = -1,
    headers: Any = None,
    timestamp: int = 0,
    on_delivery: Any = None,
    wait_seconds: float = QUEUE_WAIT_SECONDS,
) -> None:
    """Queue one message on ``out``; while librdkafka's local queue is full (BufferError), serve its delivery
    reports for ``wait_seconds`` (deliveries drain the queue, or time out after message.timeout.ms while Kafka is
    away) and try again.  ``partition`` -1: the partitioner picks by key.  The one produce loop of cxpulse: the hot
    path, the Faust processes' results producer, produce, simulate and the HTTP ingest call it."""
    options: dict[str, Any] = {"partition": partition, "timestamp": timestamp}
    if headers is not None:
        options["headers"] = headers
    if on_delivery is not None:
        options["on_delivery"] = on_delivery
    while True:
        try:
            out.produce(topic, value, key, **options)
            return
        except BufferError:
            out.poll(wait_seconds)


def consumer(kafka: Kafka, group_id: str, **extra: Any) -> Consumer:
    """A Consumer in ``group_id`` that starts at the earliest offset and commits by hand."""
    settings = {"group.id": group_id, "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra}
    return Consumer(_base(kafka, settings))


def read_range(
    reader: Consumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    seconds: float,
    *,
    stopping: Callable[[], bool] = lambda: False,
    short: Callable[[int, int], None] | None = None,
    each_poll: Callable[[set[int]], None] = lambda pending: None,
    batch: int = 1000,
) -> Iterator[Message]:
    """The messages of ``topic``'s partitions from ``start`` to ``end`` (``ranges``: partition -> [start, end)), read
    with ``reader`` (its isolation level: a read_committed reader skips aborted messages), assigned for the read and
    unassigned after it, also when the caller stops early.  The one read-to-an-end loop of cxpulse: the hot path's
    seen-ids restore, the tables' local copies and the merge's read-back use it.

    A partition is done at its end: a message at ``end - 1`` or past it, an end-of-partition event at or past it, or
    its position there (the range ended in transaction markers).  An end-of-partition event below the end (a
    read_committed reader stops at the last stable offset: a transaction not finished yet) ends the partition too,
    unless ``short`` is given: it is told (partition, offset) and the read waits on.  ``each_poll`` sees the partitions
    not done before every poll (it may raise).  CxPulseError past ``seconds``, on ``stopping()``, or on an error."""
    pending = {partition: end for partition, (start, end) in ranges.items() if start < end}
    if not pending:
        return
    reader.assign([TopicPartition(topic, partition, ranges[partition][0]) for partition in pending])
    deadline = time.monotonic() + seconds
    try:
        while pending:
            if time.monotonic() > deadline or stopping():
                raise CxPulseError(f"reading {topic} {sorted(pending)}: their ends not reached within {seconds:.0f} s")
            each_poll(set(pending))
            for message in reader.consume(num_messages=batch, timeout=DRAIN_POLL_SECONDS):
                partition, offset = message.partition() or 0, message.offset() or 0
                end = pending.get(partition)
                if end is None:
                    continue  # done already: what follows its end is not read
                error = message.error()
                if error is None and offset < end:
                    yield message
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise CxPulseError(f"reading {topic}[{partition}]: {error.str()}")
                if error is None and offset >= end - 1 or error is not None and (offset >= end or short is None):
                    del pending[partition]
                elif error is not None and short is not None:
                    short(partition, offset)
            for tp in reader.position([TopicPartition(topic, p) for p in pending]) if pending else []:
                if tp.offset != OFFSET_END and tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]  # the rest of the range was transaction markers
    finally:
        reader.unassign()


def reach(kafka: Kafka, topic: str | None = None, timeout: float = REACH_TIMEOUT_SECONDS) -> ClusterMetadata:
    """The cluster's metadata (of ``topic`` only, when given), or BrokerError naming why Kafka cannot be used:
    a credential, certificate or host name problem as soon as the first connection says so, every broker
    refusing connections after ~2 s, anything else after ``timeout``."""
    errors: list[KafkaError] = []
    admin = admin_client(kafka, error_cb=errors.append, log_level=0)  # the errors say it, in one line below
    started = time.monotonic()
    last: str | None = None
    while True:
        try:
            return admin.list_topics(topic, timeout=0.5)
        except KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0)  # serves error_cb
        elapsed = time.monotonic() - started
        permanent = [e for e in errors if e.code() in _PERMANENT]
        if permanent:
            raise KafkaRefusedError(f"cannot use Kafka at {kafka}: {explain(as_cluster(kafka), permanent[-1])}")
        refused = [e for e in errors if e.code() == KafkaError._ALL_BROKERS_DOWN]
        if refused and elapsed >= REFUSED_AFTER_SECONDS:
            transport = [e for e in errors if e.code() == KafkaError._TRANSPORT]
            cause = describe(transport[-1]) if transport else "every broker refused the connection"
            raise KafkaUnreachableError(f"cannot reach Kafka at {kafka}: {cause}")
        if elapsed >= timeout:
            cause = describe(errors[-1]) if errors else (last or "no answer")
            raise KafkaUnreachableError(f"cannot reach Kafka at {kafka} within {timeout:.0f} s: {cause}")


def explain(cluster: KafkaCluster, error: KafkaError) -> str:
    """What a credential or certificate error means, naming the settings to look at."""
    if error.code() == KafkaError._SSL:
        detail = tls_verdict(cluster) or describe(error)
        return (
            f"TLS: the broker's certificate was refused: {detail} (CXPULSE_KAFKA_CA_FILE, "
            "CXPULSE_KAFKA_VERIFY_HOSTNAME, the host names in CXPULSE_KAFKA_BOOTSTRAP)"
        )
    if error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        text = describe(error).removeprefix("SASL authentication error: ")
        return (
            f"SASL authentication failed for user {cluster.username!r}: {text} (CXPULSE_KAFKA_USERNAME, "
            "CXPULSE_KAFKA_PASSWORD or _PASSWORD_FILE, CXPULSE_KAFKA_SASL_MECHANISM)"
        )
    return describe(error)


def tls_verdict(cluster: KafkaCluster) -> str | None:
    """Python's own verdict on the first bootstrap server's certificate (librdkafka says only "certificate verify
    failed"; this says why: an unknown issuer, a host name the certificate does not name, an expired one)."""
    context = cluster.ssl_context()
    server = cluster.bootstrap.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    if context is None or not port.isdigit():
        return None
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=3) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except (OSError, ssl.SSLError):
        return None


def describe(error: KafkaError) -> str:
    """One line for a librdkafka error, without its client-instance prefix."""
    text = error.str()
    # "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: ..." -> keep what follows the address
    head, sep, tail = text.partition(": ")
    return tail if sep and ("://" in head or head.count(":") >= 1 and "/" in head) else text
