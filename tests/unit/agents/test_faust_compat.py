"""streams/agents/faust_compat.py without a broker: what the worker's Faust apps are built with."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from streams.agents import faust_compat
from streams.agents.faust_app import faust_app
from streams.config import Settings


def test_the_table_manager_registers_the_changelogs_at_start_without_faust_s_one_second_sleep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, clickhouse_url="")
    app = faust_app(settings, "compat-test", "compat", Table=faust_compat.KeyPartitionedTable)
    app.Table("counts", default=int, partitions=2)
    manager: Any = app.tables
    assert isinstance(manager, faust_compat.PromptTableManager)
    calls: list[str] = []

    async def no_sleep(seconds: float) -> None:
        raise AssertionError(f"the table manager slept {seconds} s at start")

    async def update_channels() -> None:
        calls.append("channels")

    async def start_recovery() -> None:
        calls.append("recovery")

    monkeypatch.setattr(manager, "sleep", no_sleep)
    monkeypatch.setattr(manager, "_update_channels", update_channels)
    monkeypatch.setattr(manager.recovery, "start", start_recovery)
    asyncio.run(manager.on_start())
    assert calls == ["channels", "recovery"]
