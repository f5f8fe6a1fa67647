"""Settings of every cxpulse command: one frozen object read from ``CXPULSE_*`` environment variables.

Built once in the CLI (flags override the environment) and passed down; nothing deeper in the code reads
``os.environ``.  Example::

    settings = Settings()                                  # environment + defaults
    settings = Settings(kafka_bootstrap="kafka:9092")      # explicit override
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from streams.core.effort import EffortConfig
from streams.core.journeys import DEFAULT_JOURNEY_GAP_SECONDS
from streams.core.privacy import MIN_KEY_BYTES
from streams.errors import ConfigurationError
from streams.kafka import KafkaCluster

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_KAFKA_PORT = 9092
DEFAULT_BOOTSTRAP = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
DEFAULT_METRICS_PORT = 9464
DEFAULT_DATA_DIR = Path(".cxpulse")  # relative to the working directory
DEFAULT_PANE_SECONDS = 60  # seconds; docs/contract.md section 5
DEFAULT_WINDOWS = (300, 3600, 86400)  # seconds: 5 min, 1 h, 24 h
DEFAULT_RETENTION_SECONDS = 7 * 86400  # 7 days of pane state
DEFAULT_FUTURE_TOLERANCE_SECONDS = 300  # occurred_at may run 5 minutes ahead of the clock
DEFAULT_PARTITIONS = 6  # partitions of the topics cxpulse creates
DEFAULT_HOTPATH_PROCESSES = 1  # hot-path slots per worker (the Faust process is the other core's)


class Settings(BaseSettings):
    """Every setting of cxpulse, with the environment variable that sets it (prefix ``CXPULSE_``)."""

    model_config = SettingsConfigDict(env_prefix="CXPULSE_", frozen=True, extra="forbid")

    kafka_bootstrap: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers, host:port[,...]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client of cxpulse connects: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_* protocols): SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"
    )
    kafka_username: str = Field("", description="SASL user name")
    kafka_password: SecretStr = Field(SecretStr(""), description="SASL password (or CXPULSE_KAFKA_PASSWORD_FILE)")
    kafka_password_file: Path | None = Field(
        None, description="file holding the SASL password (a mounted secret); its first line is the password"
    )
    kafka_ca_file: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the brokers' certificates; unset: the system's CAs"
    )
    kafka_cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    kafka_key_file: Path | None = Field(None, description="PEM private key of the client certificate")
    kafka_key_password: SecretStr = Field(SecretStr(""), description="password of an encrypted client key")
    kafka_verify_hostname: bool = Field(
        True, description="check that the broker's certificate names the host connected to (TLS protocols)"
    )
    replication_factor: int = Field(
        1, ge=1, le=32, description="replicas of every topic cxpulse creates (3 on a production cluster)"
    )
    changelog_segment_seconds: int = Field(
        3600,
        ge=1,
        description="the table changelogs cxpulse creates roll a segment this often (segment.ms): Kafka compacts "
        "all but the active segment, so a restore from them reads about one record per key plus this long of revisions",
    )
    clickhouse_url: str = Field(
        "chdb://.cxpulse/clickhouse",
        description="ClickHouse: chdb://PATH (embedded; default <data dir>/clickhouse) or http(s)://[user@]host:8123;"
        " empty = no ClickHouse sink",
    )
    clickhouse_password: SecretStr = Field(SecretStr(""), description="ClickHouse password (http DSNs)")
    clickhouse_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="a ClickHouse server that does not answer a read (report, drivers, journey) within this long is "
        "reported (connecting: at most 10 s)",
    )
    metrics_port: int = Field(
        DEFAULT_METRICS_PORT, ge=0, le=65535, description="Prometheus /metrics port of a worker (0 = off)"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address the /metrics endpoint listens on (0.0.0.0 in a container)"
    )
    http_port: int = Field(
        0, ge=0, le=65535, description="port of the worker's HTTP ingest (POST /v1/feedback); 0 = off"
    )
    http_host: str = Field("127.0.0.1", description="address the HTTP ingest listens on")
    http_token: SecretStr = Field(
        SecretStr(""), description="bearer token the HTTP ingest requires (empty: loopback only)"
    )
    http_max_bytes: int = Field(1_048_576, ge=1024, description="largest HTTP ingest request body, bytes")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="local state: broker data, worker tables, chdb")
    kafka_lib_dir: Path = Field(
        REPO_ROOT / "deploy" / "kafka" / "lib", description="folder of the Kafka jars resolved by Maven"
    )
    schema_registry_url: str = Field(
        "", description="Confluent Schema Registry URL; empty = the fixed local catalog of schema ids"
    )
    app_id: str = Field("cxpulse", description="Faust app id: consumer group and prefix of internal topics")
    feedback_topic: str = Field("cx.feedback", description="topic of incoming FeedbackEvents")
    dlq_topic: str = Field("cx.feedback.dlq", description="dead-letter topic")
    results_topic: str = Field("cx.metrics.panes", description="topic of WindowResults")
    alerts_topic: str = Field("cx.alerts", description="topic of effort-spike alerts")
    followups_topic: str = Field("cx.followups", description="topic of detractor follow-ups (JSON)")
    journeys_topic: str = Field("cx.journeys", description="topic of customer journey instances")
    journeys: bool = Field(True, description="follow customer journeys (contract section 8); false: not at all")
    journeys_nice: int = Field(
        10, ge=0, le=19, description="CPU priority of the journeys process (nice increment): KPIs and alerts first"
    )
    followups_per_minute: int = Field(
        60, ge=0, description="detractor follow-ups a hot-path process sends a minute at most (0 = off)"
    )
    followup_webhook_url: str = Field(
        "", description="POST each detractor follow-up here (JSON) as well; empty = topic only"
    )
    followup_webhook_token: SecretStr = Field(SecretStr(""), description="bearer token for the follow-up webhook")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=1024, description="partitions of created topics")
    pane_seconds: int = Field(DEFAULT_PANE_SECONDS, ge=1, le=86400, description="pane length, seconds")
    windows_seconds: Annotated[tuple[int, ...], NoDecode] = Field(
        DEFAULT_WINDOWS, description="rolling windows: seconds or durations, comma-separated (300,3600 or 5m,1h,24h)"
    )
    retention_seconds: int = Field(DEFAULT_RETENTION_SECONDS, ge=1, description="pane state retention")
    journey_gap_seconds: int = Field(
        DEFAULT_JOURNEY_GAP_SECONDS,
        ge=0,
        description="journey gap G: a customer's answers further apart than this start a new journey instance",
    )
    kpi_component_windows: Annotated[tuple[int, ...] | None, NoDecode] = Field(
        None,
        description="windows whose additive KPI components are exported (5m,24h; none); unset: every window",
    )
    label_cap: int = Field(500, ge=1, description="segments a worker exports to Prometheus; the rest as other/other")
    effort_delta: float = Field(
        0.10, gt=0, lt=1, description="effort-spike CUSUM design shift of the high-effort share"
    )
    effort_threshold: float = Field(
        10.0, gt=0, description="effort-spike CUSUM threshold H (fires at H, resolves at 0)"
    )
    effort_guard_seconds: int = Field(1800, ge=0, description="the baseline ends this long before the evaluated pane")
    effort_baseline_seconds: int = Field(86400, ge=1, description="length of the effort-spike baseline")
    effort_min_baseline: int = Field(200, ge=1, description="fewer CES answers in the baseline: the pane is skipped")
    effort_short_seconds: int = Field(
        300, ge=1, description="the short window reported with each evaluation: p_s, z and the root cause"
    )
    worker_id: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]{0,100}$",
        description="stable name of this worker (its hot-path transactional ids); empty = host name + data dir",
    )
    customer_id_key: SecretStr = Field(
        SecretStr(""),
        description="set (16+ characters): customer ids become keyed HMAC-SHA256 pseudonyms at ingest, before "
        "anything is stored or forwarded",
    )
    comments: Literal["redacted", "themes", "off"] = Field(
        "redacted",
        description="what becomes of a comment (docs/contract.md section 9): redacted (e-mail addresses, IBANs and "
        "numbers replaced; the text kept, its themes counted), themes (the text dropped after theme matching) or "
        "off (comments ignored)",
    )
    themes_file: Path | None = Field(
        None,
        description="the theme taxonomy (YAML or JSON: themes: {name: [pattern, ...]}); unset: the one shipped "
        "with cxpulse (13 contact-center themes, English and Dutch)",
    )
    stall_seconds: float = Field(
        60.0, gt=0, description="a process stalled this long (no progress while input waits) is not ready"
    )
    stall_restart_seconds: float = Field(
        300.0, gt=0, description="a process stalled this long is restarted by its worker (counted)"
    )
    hotpath_processes: int = Field(
        DEFAULT_HOTPATH_PROCESSES, ge=1, le=64, description="hot-path processes (slots) of one worker"
    )
    fetch_wait_ms: int = Field(
        1000,
        ge=10,  # 0: an empty fetch returns at once and the consumer asks again at once, a busy loop at the broker
        le=10_000,
        description="at low rates, how long the broker holds a fetch of the hot path and the sink so that a batch "
        "gathers what comes meanwhile (64 KB end it at once): CPU at a few hundred answers a second against "
        "event-to-result latency",
    )

    @property
    def kafka(self) -> KafkaCluster:
        """Where Kafka is and how to authenticate, for every Kafka client (streams.kafka)."""
        password = self.kafka_password.get_secret_value()
        if self.kafka_password_file is not None:
            password = _first_line(self.kafka_password_file)
        return KafkaCluster(
            bootstrap=self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_username,
            password=password,
            ca_file=self.kafka_ca_file,
            cert_file=self.kafka_cert_file,
            key_file=self.kafka_key_file,
            key_password=self.kafka_key_password.get_secret_value(),
            verify_hostname=self.kafka_verify_hostname,
        )

    @field_validator("kafka_password_file", "kafka_ca_file", "kafka_cert_file", "kafka_key_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "":
            return None
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        try:
            value.open("rb").close()
        except OSError as exc:
            raise ValueError(f"{value} cannot be read ({exc.strerror})") from None
        return value

    @field_validator("customer_id_key")
    @classmethod
    def _key_is_long_enough(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"the key must have at least {MIN_KEY_BYTES} bytes (or be empty: ids kept as they are)")
        return value

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            if not self.kafka_username:
                raise ValueError(f"CXPULSE_KAFKA_USERNAME is required with {self.kafka_security_protocol}")
            if not self.kafka_password.get_secret_value() and self.kafka_password_file is None:
                protocol = self.kafka_security_protocol
                raise ValueError(f"CXPULSE_KAFKA_PASSWORD or CXPULSE_KAFKA_PASSWORD_FILE is required with {protocol}")
        if (self.kafka_cert_file is None) != (self.kafka_key_file is None):
            raise ValueError("CXPULSE_KAFKA_CERT_FILE and CXPULSE_KAFKA_KEY_FILE go together (mutual TLS)")
        if not self.kafka_security_protocol.endswith("SSL") and (self.kafka_ca_file or self.kafka_cert_file):
            raise ValueError(
                f"CXPULSE_KAFKA_CA_FILE / CERT_FILE are set but CXPULSE_KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol} (use SSL or SASL_SSL)"
            )
        return self

    @field_validator("windows_seconds", mode="before")
    @classmethod
    def _windows_in_natural_forms(cls, value: Any) -> Any:
        """``300,3600``, ``5m,1h,24h``, a JSON list (``[300, 3600]``) or a sequence of numbers."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a JSON list of seconds") from None
        seconds = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            duration = parse_duration(part)
            if duration != int(duration):
                raise ValueError(f"{part!r} is not a whole number of seconds")
            seconds.append(int(duration))
        return seconds

    @field_validator("kpi_component_windows", mode="before")
    @classmethod
    def _component_windows(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("none", ""):
            return ()
        return cls._windows_in_natural_forms(value)

    @field_validator("clickhouse_url")
    @classmethod
    def _a_store_we_can_open(cls, value: str) -> str:
        if value and not value.startswith(("chdb://", "http://", "https://")):
            raise ValueError(
                f"{value!r}: use chdb://PATH (the embedded store), http(s)://[user@]host:8123 (a ClickHouse "
                "server), or empty (no store)"
            )
        return value

    @field_validator("windows_seconds")
    @classmethod
    def _windows_are_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("CXPULSE_WINDOWS_SECONDS must list positive numbers of seconds")
        return tuple(sorted(set(value)))

    @model_validator(mode="before")
    @classmethod
    def _store_beside_the_data(cls, data: Any) -> Any:
        """Unset, the embedded store lives in the data folder: chdb://<CXPULSE_DATA_DIR>/clickhouse."""
        if isinstance(data, dict) and "clickhouse_url" not in data:
            return {**data, "clickhouse_url": f"chdb://{Path(data.get('data_dir') or DEFAULT_DATA_DIR) / 'clickhouse'}"}
        return data

    @model_validator(mode="after")
    def _windows_fit_panes(self) -> Settings:
        for window in self.windows_seconds:
            if window % self.pane_seconds:
                raise ValueError(
                    f"CXPULSE_WINDOWS_SECONDS: {window} s is not a whole number of panes "
                    f"(CXPULSE_PANE_SECONDS={self.pane_seconds})"
                )
        unknown = set(self.kpi_component_windows or ()) - set(self.windows_seconds)
        if unknown:
            raise ValueError(
                f"CXPULSE_KPI_COMPONENT_WINDOWS: {sorted(unknown)} s not among CXPULSE_WINDOWS_SECONDS "
                f"{list(self.windows_seconds)}"
            )
        if self.retention_seconds < max(self.windows_seconds):
            raise ValueError("CXPULSE_RETENTION_SECONDS must cover the longest window")
        return self


def _first_line(path: Path) -> str:
    """The first line of a secret file (a mounted secret often ends in a newline)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"CXPULSE_KAFKA_PASSWORD_FILE: {path} cannot be read ({exc.strerror})") from None
    return text.splitlines()[0] if text else ""


def effort_config(settings: Settings) -> EffortConfig:
    """The effort-spike detector's parameters from the settings."""
    return EffortConfig(
        delta=settings.effort_delta,
        threshold=settings.effort_threshold,
        guard_ms=settings.effort_guard_seconds * 1000,
        baseline_ms=settings.effort_baseline_seconds * 1000,
        min_baseline=settings.effort_min_baseline,
        short_ms=settings.effort_short_seconds * 1000,
    )


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the given (not None) overrides; ConfigurationError naming each
    offending variable when they are invalid."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:  # a value the environment source could not even parse
        raise ConfigurationError(f"invalid configuration: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            (f"CXPULSE_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``60s``, ``5m``, ``1h``, ``24h``, ``7d``, ``250ms`` or a bare number of
    seconds; ValueError with the offending text otherwise."""
    value = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit):
            number = value[: -len(unit)]
            break
    else:
        number, unit = value, "s"
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (use e.g. 60s, 5m, 1h, 7d)") from None
    if seconds <= 0:
        raise ValueError(f"{text!r} must be a positive duration")
    return seconds
