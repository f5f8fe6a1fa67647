"""Settings of every cxpulse command: one frozen object read from ``CXPULSE_*`` environment variables.

Built once in the CLI (flags override the environment) and passed down; nothing deeper in the code reads
``os.environ``.  Example::

    settings = Settings()                                  # environment + defaults
    settings = Settings(kafka_bootstrap="kafka:9092")      # explicit override
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.effort import EffortConfig
from streams.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_KAFKA_PORT = 9092
DEFAULT_BOOTSTRAP = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
DEFAULT_METRICS_PORT = 9464
DEFAULT_DATA_DIR = Path(".cxpulse")  # relative to the working directory
DEFAULT_PANE_SECONDS = 60  # seconds; METRICS.md section 5
DEFAULT_WINDOWS = (300, 3600, 86400)  # seconds: 5 min, 1 h, 24 h
DEFAULT_RETENTION_SECONDS = 7 * 86400  # 7 days of pane state
DEFAULT_FUTURE_TOLERANCE_SECONDS = 300  # occurred_at may run 5 minutes ahead of the clock
DEFAULT_PARTITIONS = 6  # partitions of the topics cxpulse creates
DEFAULT_HOTPATH_PROCESSES = 1  # hot-path slots per worker (the Faust process is the other core's)


class Settings(BaseSettings):
    """Every setting of cxpulse, with the environment variable that sets it (prefix ``CXPULSE_``)."""

    model_config = SettingsConfigDict(env_prefix="CXPULSE_", frozen=True, extra="forbid")

    kafka_bootstrap: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers, host:port[,...]")
    clickhouse_url: str = Field(
        "chdb://.cxpulse/clickhouse",
        description="ClickHouse: chdb://PATH (embedded; default <data dir>/clickhouse) or http(s)://[user@]host:8123;"
        " empty = no ClickHouse sink",
    )
    clickhouse_password: SecretStr = Field(SecretStr(""), description="ClickHouse password (http DSNs)")
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
    followups_per_minute: int = Field(
        60, ge=0, description="detractor follow-ups a hot-path process sends a minute at most (0 = off)"
    )
    followup_webhook_url: str = Field(
        "", description="POST each detractor follow-up here (JSON) as well; empty = topic only"
    )
    followup_webhook_token: SecretStr = Field(SecretStr(""), description="bearer token for the follow-up webhook")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=1024, description="partitions of created topics")
    pane_seconds: int = Field(DEFAULT_PANE_SECONDS, ge=1, le=86400, description="pane length, seconds")
    windows_seconds: tuple[int, ...] = Field(DEFAULT_WINDOWS, description="rolling windows, seconds")
    retention_seconds: int = Field(DEFAULT_RETENTION_SECONDS, ge=1, description="pane state retention")
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
    worker_id: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]{0,100}$",
        description="stable name of this worker (its hot-path transactional ids); empty = host name + data dir",
    )
    hotpath_processes: int = Field(
        DEFAULT_HOTPATH_PROCESSES, ge=1, le=64, description="hot-path processes (slots) of one worker"
    )

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
        if self.retention_seconds < max(self.windows_seconds):
            raise ValueError("CXPULSE_RETENTION_SECONDS must cover the longest window")
        return self


def effort_config(settings: Settings) -> EffortConfig:
    """The effort-spike detector's parameters from the settings."""
    return EffortConfig(
        delta=settings.effort_delta,
        threshold=settings.effort_threshold,
        guard_ms=settings.effort_guard_seconds * 1000,
        baseline_ms=settings.effort_baseline_seconds * 1000,
        min_baseline=settings.effort_min_baseline,
    )


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the given (not None) overrides; ConfigurationError naming each
    offending variable when they are invalid."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            (f"CXPULSE_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
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
