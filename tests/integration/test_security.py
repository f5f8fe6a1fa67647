"""Production Kafka: a broker with a SASL_SSL listener (a CA and certificates made by the test, SCRAM users created
through Kafka's AlterUserScramCredentials API, what `kafka-configs --alter --add-config 'SCRAM-SHA-512=[...]'`
calls) and Kafka's StandardAuthorizer.  The whole pipeline runs through it under exactly the ACLs that `cxpulse
acls` prints; a wrong password, an unknown CA, a wrong host name and a principal without ACLs each end in one
line and exit 1 within 15 s; no password reaches a log or the process list."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from streams import acls as cx_acls
from streams.broker import Listener
from streams.config import Settings
from streams.kafka import admin_client
from streams.replay import replay_file
from tests.cluster import LocalCluster
from tests.support import cxpulse_command, free_ports, stop_process
from tests.tls import Pki, make_pki
from tests.workers import (
    assert_dead_letters_once,
    converge,
    expected_results,
    make_pipeline,
    mixed_events,
    scrape,
    split,
    start_worker,
    stop_worker,
    wait_for,
)

FAIL_WITHIN_SECONDS = 15.0
SCRAM = "SCRAM-SHA-512"


@dataclass
class Secure:
    cluster: LocalCluster
    pki: Pki
    plain: str  # PLAINTEXT listener: the test's own admin (super user), never cxpulse's
    sasl: str  # SASL_SSL listener: what cxpulse connects to
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("secure")
    pki = make_pki(root / "pki")
    sasl_port = free_ports(1)[0]
    scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    cluster = LocalCluster(
        root / "kafka",
        1,
        listeners=(Listener("SASL_SSL", sasl_port),),
        extra=(
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512,SCRAM-SHA-256"),
            ("listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config", scram_login),
            ("listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config", scram_login),
            ("listener.name.sasl_ssl.ssl.keystore.type", "PEM"),
            ("listener.name.sasl_ssl.ssl.keystore.location", str(pki.broker_keystore)),
            ("authorizer.class.name", "org.apache.kafka.metadata.authorizer.StandardAuthorizer"),
            # the PLAINTEXT listener (inter-broker, controller, the test's admin) is the super user
            ("super.users", "User:ANONYMOUS"),
        ),
    )
    cluster.start()
    passwords = {user: secrets.token_urlsafe(16) for user in ("cxworker", "cxsink", "cxfeeder", "nobody")}
    admin = admin_client(cluster.bootstrap)
    upserts = [
        UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode())
        for user, password in passwords.items()
    ]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30)
    try:
        yield Secure(cluster, pki, cluster.bootstrap, f"127.0.0.1:{sasl_port}", passwords)
    finally:
        cluster.stop_all()


_KINDS = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional-id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER,
}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}


def grant(secure: Secure, principal: str, acls: list[cx_acls.Acl]) -> None:
    """Create exactly ``acls`` for ``principal`` (what the printed kafka-acls commands do)."""
    bindings = [
        AclBinding(
            _KINDS[acl.kind],
            acl.name,
            _PATTERNS[acl.pattern],
            principal,
            "*",
            AclOperation[operation.upper()],
            AclPermissionType.ALLOW,
        )
        for acl in acls
        for operation in acl.operations
    ]
    admin = admin_client(secure.plain)  # held until the futures resolve
    for future in admin.create_acls(bindings).values():
        future.result(timeout=30)


def sasl_env(secure: Secure, user: str, **overrides: str) -> dict[str, str]:
    return {
        "CXPULSE_KAFKA_BOOTSTRAP": secure.sasl,
        "CXPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CXPULSE_KAFKA_SASL_MECHANISM": SCRAM,
        "CXPULSE_KAFKA_USERNAME": user,
        "CXPULSE_KAFKA_PASSWORD": secure.passwords[user],
        "CXPULSE_KAFKA_CA_FILE": str(secure.pki.ca_file),
        **overrides,
    }


def printed_acls(env: dict[str, str], principal: str, *options: str) -> list[cx_acls.Acl]:
    """What `cxpulse acls PRINCIPAL [options]` prints, read back from its kafka-acls.sh lines: the grants an operator
    applies by running them."""
    done = subprocess.run(
        cxpulse_command("acls", principal, *options), env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = []
    for line in done.stdout.splitlines():
        if not line.startswith("kafka-acls.sh"):
            continue
        words = line.split()
        operations = tuple(words[i + 1] for i, word in enumerate(words) if word == "--operation")
        kind = next(k for k, option in (("topic", "--topic"), ("group", "--group"), ("transactional-id",
                    "--transactional-id")) if option in words)  # fmt: skip
        name = words[words.index(f"--{kind}") + 1]
        pattern = "prefixed" if "--resource-pattern-type" in words else "literal"
        assert words[words.index("--allow-principal") + 1] == principal
        out.append(cx_acls.Acl(kind, name, pattern, operations, ""))  # type: ignore[arg-type]
    assert out
    return out


FLOW_SECONDS = 64.0  # events flow at least a minute under the grants
ROUNDS = 8


@pytest.mark.parametrize("shape", ["default worker", "worker and lone sink"])
def test_the_pipeline_runs_under_exactly_the_acls_cxpulse_prints(secure: Secure, tmp_path: Path, shape: str) -> None:
    """On a fresh app id whose topics the worker creates itself, each process under exactly the grants `cxpulse acls`
    prints for its role and nothing more, events sent over a minute by a produce-only principal:

    - a default worker: journeys on and the embedded store, so its own sink reads the journey instances back (it
      died here ~40 s in: its role's grants did not let it read them);
    - the same worker and `cxpulse sink` beside it (scale-out: the two sinks share the group `<app>-sink` and its
      partitions), each on a store of its own here (the embedded one: in production both write one server).

    Results equal replay, the stores hold every counted answer once between them, no log says anything of
    authorization and no process restarted."""
    store = f"chdb://{tmp_path / 'store'}"
    lone_sink = shape == "worker and lone sink"
    pipeline = make_pipeline(secure.plain, tmp_path, create_topics=False, clickhouse_url=store)
    settings = pipeline.settings
    env = {**pipeline.env, "CXPULSE_KAFKA_BOOTSTRAP": secure.sasl}
    grant(secure, "User:cxworker", printed_acls(env, "User:cxworker", "--role", "worker"))
    grant(secure, "User:cxfeeder", printed_acls(env, "User:cxfeeder", "--role", "http"))
    if lone_sink:
        grant(
            secure,
            "User:cxsink",
            printed_acls({**env, "CXPULSE_CLICKHOUSE_URL": store}, "User:cxsink", "--role", "sink"),
        )
    source = tmp_path / "events.jsonl"
    mixed_events(source, 3000)
    expected, invalid = expected_results(source, settings.pane_seconds)
    counted = replay_file(source, settings.pane_seconds * 1000, lambda dead: None).stats.counted
    secret = tmp_path / "kafka-password"
    secret.write_text(secure.passwords["cxworker"] + "\n")  # a mounted secret ends in a newline
    secret.chmod(0o600)
    port, log = free_ports(1)[0], tmp_path / "worker.log"
    worker_env = sasl_env(secure, "cxworker", CXPULSE_KAFKA_PASSWORD_FILE=str(secret))
    del worker_env["CXPULSE_KAFKA_PASSWORD"]
    worker = start_worker(pipeline, log, metrics_port=port, **worker_env)
    storing, store_log = (free_ports(1)[0], tmp_path / "sink.log") if lone_sink else (port, log)
    sink = None
    if lone_sink:
        sink = start_worker(
            pipeline,
            store_log,
            data_dir=tmp_path / "sink-data",
            metrics_port=storing,
            command=cxpulse_command("sink"),
            **sasl_env(secure, "cxsink"),
            CXPULSE_CLICKHOUSE_URL=f"chdb://{tmp_path / 'sink-store'}",
        )
    sent: list[subprocess.CompletedProcess[str]] = []
    try:
        wait_for(lambda: scrape(port, starting=True).get("cxpulse_worker_ready") == 1, "the worker ready", log)
        command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _process_tree(worker.pid)]
        # the events come in through `cxpulse produce`, as a principal that may only write them, over a minute
        started = time.monotonic()
        for round_, chunk in enumerate(split(source, ROUNDS)):
            sent.append(
                subprocess.run(
                    cxpulse_command("produce", str(chunk), "--topic", settings.feedback_topic),
                    env={**pipeline.env, **sasl_env(secure, "cxfeeder")},
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=120,
                )
            )
            assert sent[-1].returncode == 0, sent[-1].stderr
            pause = started + FLOW_SECONDS * (round_ + 1) / ROUNDS - time.monotonic()
            time.sleep(max(0.0, pause))  # pacing the load over a minute, not a synchronisation
        converge(settings, expected, log)
        assert_dead_letters_once(settings, invalid)
        rows = 'cxpulse_sink_rows_total{table="answers"}'

        def stored() -> list[float]:
            return [scrape(page).get(rows, 0) for page in sorted({port, storing})]

        wait_for(lambda: sum(stored()) >= counted, "every counted answer stored", store_log)
        assert sum(stored()) == counted and all(stored()), stored()  # with two sinks, each has a share
        for page in {port, storing}:
            restarts = {k: v for k, v in scrape(page).items() if "process_restarts_total" in k and v}
            assert not restarts, restarts
        assert worker.poll() is None, log.read_text()[-3000:]
        assert sink is None or sink.poll() is None, store_log.read_text()[-3000:]
        stop_worker(worker, log)
        if sink is not None:
            stop_worker(sink, store_log)
    finally:
        stop_process(worker)
        if sink is not None:
            stop_process(sink)
    text = log.read_text() + (store_log.read_text() if lone_sink else "")
    text += "".join(done.stdout + done.stderr for done in sent)
    for password in secure.passwords.values():
        assert password not in text
        assert not any(password.encode() in line for line in command_lines)
    assert "not authorized" not in text.lower() and "authorization" not in text.lower(), text[-3000:]


def _process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            todo.extend(int(child) for child in children.read_text().split())
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "sasl authentication failed for user 'cxworker'"),
        ("unknown CA", "certificate verify failed: self-signed certificate in certificate chain"),
        ("wrong host name", "mismatch"),
        ("no ACLs", "not authorized"),
    ],
)
def test_a_bad_credential_is_one_line_and_exit_1_within_15_s(
    secure: Secure, tmp_path: Path, case: str, expected: str
) -> None:
    pipeline = make_pipeline(secure.plain, tmp_path)
    env = sasl_env(secure, "cxworker")
    if case == "wrong password":
        env["CXPULSE_KAFKA_PASSWORD"] = "not-" + secure.passwords["cxworker"]
    elif case == "unknown CA":
        env["CXPULSE_KAFKA_CA_FILE"] = str(secure.pki.other_ca_file)
    elif case == "wrong host name":  # the certificate names 127.0.0.1 only
        env["CXPULSE_KAFKA_BOOTSTRAP"] = secure.sasl.replace("127.0.0.1", "localhost")
    else:
        env = sasl_env(secure, "nobody")
    started = time.monotonic()
    done = subprocess.run(
        cxpulse_command("worker"),
        env={**pipeline.env, **env, "CXPULSE_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    took = time.monotonic() - started
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1, lines
    assert took < FAIL_WITHIN_SECONDS, (took, lines)
    assert len(lines) == 1, lines
    assert expected in lines[0].lower(), lines
    assert all(password not in lines[0] for password in secure.passwords.values())


def test_cxpulse_acls_prints_the_commands_the_tests_apply(tmp_path: Path) -> None:
    settings = Settings(app_id="shop", data_dir=tmp_path)
    done = subprocess.run(
        cxpulse_command("acls", "User:cxworker", "--role", "worker", "--app-id", "shop"),
        env={**os.environ, "CXPULSE_KAFKA_BOOTSTRAP": "kafka:9093"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = [line for line in done.stdout.splitlines() if line.startswith("kafka-acls.sh")]
    assert printed == cx_acls.kafka_acls_commands("User:cxworker", cx_acls.acls_for(settings, "worker"), "kafka:9093")
    assert any("--transactional-id shop-hotpath- --resource-pattern-type prefixed" in line for line in printed)


@pytest.mark.parametrize(
    "command",
    [["produce", "EVENTS"], ["read", "results"], ["topics"], ["simulate", "--duration", "5s"]],
    ids=lambda c: c[0],
)
def test_a_principal_without_acls_is_told_so_by_every_command(
    secure: Secure, tmp_path: Path, command: list[str]
) -> None:
    """A principal the authorizer knows but that has no grants, on topics that exist: one line that says it is not
    authorized and points at `cxpulse acls`, exit 1 (produce said the topic did not exist)."""
    pipeline = make_pipeline(secure.plain, tmp_path)  # the topics exist, made by an administrator
    source = tmp_path / "events.jsonl"
    mixed_events(source, 10)
    args = [str(source) if arg == "EVENTS" else arg for arg in command]
    done = subprocess.run(
        cxpulse_command(*args),
        env={**pipeline.env, **sasl_env(secure, "nobody")},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, lines
    assert len(lines) == 1 and "not authorized" in lines[0] and "cxpulse acls" in lines[0], lines
