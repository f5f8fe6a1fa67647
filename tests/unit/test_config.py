"""Settings and durations: bad configuration fails with the setting's name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from streams.cli import app
from streams.config import Settings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("5m", 300), ("1h", 3600), ("7d", 604800), ("250ms", 0.25), ("90", 90)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0s", "5 minutes"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("'", ".")):
        parse_duration(text)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXPULSE_KAFKA_BOOTSTRAP", "kafka:19092")
    monkeypatch.setenv("CXPULSE_WINDOWS_SECONDS", "[3600, 300, 300]")
    settings = Settings()
    assert settings.kafka_bootstrap == "kafka:19092"
    assert settings.windows_seconds == (300, 3600)


def test_invalid_setting_fails_at_start_up_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXPULSE_PARTITIONS", "0")
    with pytest.raises(ValidationError):
        Settings()
    result = CliRunner().invoke(app, ["topics"])
    assert result.exit_code == 2
    assert "CXPULSE_PARTITIONS" in result.stderr


def test_windows_must_be_whole_panes_and_fit_retention() -> None:
    with pytest.raises(ValidationError, match="not a whole number of panes"):
        Settings(pane_seconds=60, windows_seconds=(90,))
    with pytest.raises(ValidationError, match="CXPULSE_RETENTION_SECONDS"):
        Settings(windows_seconds=(86400,), retention_seconds=3600)


def test_cross_setting_error_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXPULSE_WINDOWS_SECONDS", "[90]")
    result = CliRunner().invoke(app, ["topics"])
    assert result.exit_code == 2
    assert "CXPULSE_WINDOWS_SECONDS: 90 s is not a whole number of panes" in result.stderr
    assert "CXPULSE_:" not in result.stderr


@pytest.mark.parametrize("wait", [None, "10", "300"])
def test_the_fetch_wait_reaches_the_hot_path_and_the_sink_consumers(
    wait: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CXPULSE_FETCH_WAIT_MS is what the broker holds the hot path's and the sink's fetches (1 s by default); the
    64 KB that end a fetch at once stay as they are."""
    from streams.processes import sink
    from streams.worker import hotpath

    if wait is not None:
        monkeypatch.setenv("CXPULSE_FETCH_WAIT_MS", wait)
    made: list[dict[str, object]] = []

    def capture(kafka: object, group: str, **config: object) -> None:
        made.append(config)

    monkeypatch.setattr(hotpath, "new_consumer", capture)
    monkeypatch.setattr(sink, "new_consumer", capture)
    settings = Settings()
    hotpath.slot_consumer(settings, "slot-0")
    sink.sink_consumer(settings)
    expected = 1000 if wait is None else int(wait)
    assert [(c["fetch.wait.max.ms"], c["fetch.min.bytes"]) for c in made] == [(expected, 65_536)] * 2


@pytest.mark.parametrize("wait", ["0", "60000"])
def test_a_fetch_wait_of_nothing_or_past_ten_seconds_is_refused_with_its_name(
    wait: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXPULSE_FETCH_WAIT_MS", wait)
    with pytest.raises(ValidationError, match="fetch_wait_ms"):
        Settings()
