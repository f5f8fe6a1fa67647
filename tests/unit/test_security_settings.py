"""Kafka security settings, least-privilege ACLs and customer-id pseudonyms, without a broker."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from streams.acls import acls_for, kafka_acls_commands
from streams.config import Settings, load_settings
from streams.core.privacy import pseudonym, pseudonymise
from streams.errors import ConfigurationError
from streams.kafka import KafkaCluster

SECRET = "s3cr3t-pa55w0rd"


def test_plaintext_by_default() -> None:
    assert Settings().kafka.librdkafka() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert Settings().kafka.faust_credentials() is None


def test_sasl_ssl_reaches_librdkafka_and_faust(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read by the settings")
    settings = Settings(
        kafka_bootstrap="k1:9093,k2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_username="cx",
        kafka_password=SECRET,
        kafka_verify_hostname=False,
    )
    config = settings.kafka.librdkafka()
    assert config["sasl.mechanism"] == "SCRAM-SHA-256" and config["sasl.password"] == SECRET
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert settings.kafka.faust_brokers() == ["kafka://k1:9093", "kafka://k2:9093"]
    credentials = settings.kafka.faust_credentials()
    assert credentials.mechanism.value == "SCRAM-SHA-256" and credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext) and not credentials.ssl_context.check_hostname


def test_the_password_file_wins_and_its_newline_is_not_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_username="cx", kafka_password="old", kafka_password_file=secret
    )
    assert settings.kafka.password == SECRET


def test_a_secret_never_shows_in_reprs_or_errors(tmp_path: Path) -> None:
    cluster = KafkaCluster("k:1", "SASL_SSL", "PLAIN", "cx", SECRET)
    assert SECRET not in repr(cluster) and SECRET not in str(cluster)
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_username="cx", kafka_password=SECRET)
    assert SECRET not in repr(settings)
    with pytest.raises(ConfigurationError) as error:
        load_settings(kafka_security_protocol="SASL_SSL", kafka_password=SECRET)
    assert "CXPULSE_KAFKA_USERNAME is required" in str(error.value) and SECRET not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_username": "cx"}, "CXPULSE_KAFKA_PASSWORD or"),
        ({"kafka_security_protocol": "TLS"}, "CXPULSE_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "CXPULSE_KAFKA_SASL_MECHANISM"),
        ({"kafka_ca_file": "/no/such/ca.pem"}, "CXPULSE_KAFKA_CA_FILE: /no/such/ca.pem is not a file"),
        ({"customer_id_key": "short"}, "at least 16 bytes"),
    ],
)
def test_bad_security_settings_name_the_variable(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(**overrides)


def test_a_ca_file_without_tls_is_a_mistake_named(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigurationError, match="use SSL or SASL_SSL"):
        load_settings(kafka_ca_file=str(ca))


def test_acls_name_the_app_prefix_and_nothing_wider() -> None:
    settings = Settings(app_id="shop")
    worker = acls_for(settings, "worker")
    assert {(a.kind, a.name, a.pattern) for a in worker if a.pattern == "prefixed"} == {
        ("topic", "shop-", "prefixed"),
        ("group", "shop-", "prefixed"),
        ("transactional-id", "shop-hotpath-", "prefixed"),
    }
    assert all(a.kind != "cluster" for a in worker)  # no cluster-wide right
    assert [a.operations for a in acls_for(settings, "http")] == [("Write", "Describe")]
    assert all(
        "Create" not in a.operations for a in acls_for(settings, "worker", precreated=True) if a.pattern == "literal"
    )
    commands = kafka_acls_commands("User:w", acls_for(settings, "sink"), "k:9093", "admin.properties")
    assert commands[0] == (
        "kafka-acls.sh --bootstrap-server k:9093 --command-config admin.properties --add --allow-principal User:w "
        "--operation Read --operation Describe --topic cx.metrics.panes"
    )
    sink_topics = {a.name: a.operations for a in acls_for(settings, "sink") if a.kind == "topic"}
    assert sink_topics[settings.journeys_topic] == ("Read", "Describe")  # journey instances into ClickHouse
    quiet = settings.model_copy(update={"journeys": False})
    assert settings.journeys_topic not in {a.name for a in acls_for(quiet, "sink")}
    with pytest.raises(ValueError, match="unknown role"):
        acls_for(settings, "admin")


def test_pseudonyms_are_keyed_stable_and_leave_records_without_ids_alone() -> None:
    key = b"0123456789abcdef"
    assert pseudonym(key, "c-1") == pseudonym(key, "c-1") != pseudonym(b"fedcba9876543210", "c-1")
    assert len(pseudonym(key, "c-1")) == 64 and "c-1" not in pseudonym(key, "c-1")
    records = [{"customer_id": "c-1"}, {"customer_id": None}, {"event_id": "e"}, {"customer_id": ""}]
    pseudonymise(key, records)
    assert records == [
        {"customer_id": pseudonym(key, "c-1")},
        {"customer_id": None},
        {"event_id": "e"},
        {"customer_id": ""},
    ]
