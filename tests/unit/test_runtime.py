"""Every cxpulse process tunes the cyclic garbage collector the same way (streams/runtime.py) and times it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams import runtime

pytestmark = pytest.mark.unit


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()
    while runtime.time_collection in gc.callbacks:
        gc.callbacks.remove(runtime.time_collection)


def test_tuning_freezes_what_was_made_raises_the_young_threshold_and_times_collections(restored: None) -> None:
    runtime.tune_gc()
    runtime.tune_gc()  # idempotent: one clock
    assert gc.get_threshold() == (runtime.YOUNG_OBJECTS, runtime.OLDER_EVERY, runtime.OLDER_EVERY)
    assert gc.get_freeze_count() > 1000  # the imports: never walked again
    assert gc.callbacks.count(runtime.time_collection) == 1
    before = list(runtime.gc_seconds)
    cycles = []
    for _ in range(1000):
        cycle: list[object] = []
        cycle.append(cycle)
        cycles.append(cycle)
    del cycles, cycle
    assert gc.collect() >= 1000  # cycles are still found
    assert runtime.gc_seconds[2] > before[2]


def test_the_command_calls_it_before_any_command_runs(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import cli

    seen = []
    monkeypatch.setattr(cli, "app", lambda: seen.append(gc.get_threshold()))
    gc.set_threshold(700, 10, 10)
    cli.main()
    assert seen == [(runtime.YOUNG_OBJECTS, runtime.OLDER_EVERY, runtime.OLDER_EVERY)]


def test_a_hot_path_slot_and_a_faust_process_call_it_first(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.agents import faust_app, process
    from streams.errors import EXIT_PERMANENT, ConfigurationError
    from streams.worker import hotpath

    def refused() -> None:
        raise ConfigurationError("CXPULSE_X: refused for the test")

    monkeypatch.setattr(hotpath, "load_settings", refused)
    monkeypatch.setattr(process, "load_settings", refused)
    for run in (lambda: hotpath.main(["0", "0"]), lambda: faust_app.run_process("merge", ["0"], lambda s, m: None)):
        gc.set_threshold(700, 10, 10)
        assert run() == EXIT_PERMANENT
        assert gc.get_threshold()[0] == runtime.YOUNG_OBJECTS
