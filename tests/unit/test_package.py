"""cxpulse as a user's ``pip install .`` (and so the image of deploy/Dockerfile) installs it: every module and every
file it reads at run time is in the package, and it works from the installed tree alone, away from the clone.

Until 2026-12-07 pyproject.toml listed the three top-level packages only, so the wheel held ``streams/*.py`` but no
``streams.agents``, ``streams.worker``, ``streams.core`` or ``streams.commands`` (the image's ``cxpulse`` could
not start), and the store's migrations were read from the clone's ``deploy/`` (an installed sink found none and
made no tables).  The editable install of the test environment hides both: this test builds the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sinks.clickhouse import MIGRATIONS, migrations
from streams.config import REPO_ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("streams", "schemas", "sinks")
DATA = ("*.avsc", "*.yaml", "*.sql")  # what the code reads beside its modules

# run with ``python -S`` (no site: no editable finder) and only the installed tree and the third-party packages
# on the path, from a directory outside the clone
PROBE = """
import importlib, json, pkgutil, sys
import streams, schemas, sinks
from sinks.clickhouse import migrations
from streams.config import Settings
from streams.themes import theme_matcher
from schemas.codec import JOURNEY_INSTANCE
modules = []
for package in (streams, schemas, sinks):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)  # every module imports from the installed tree
            modules.append(info.name)
print(json.dumps({
    "roots": [p.__file__ for p in (streams, schemas, sinks)],
    "modules": sorted(modules),
    "migrations": [name for _, name, _ in migrations()],
    "themes": theme_matcher(Settings()) is not None,
}))
"""


def source_modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if len(parts) > 1 and parts[-1] != "__main__":
                found.append(".".join(parts))
    return sorted(found)


def test_an_installed_cxpulse_has_every_module_and_file_it_reads(tmp_path: Path) -> None:
    source = tmp_path / "src"  # what deploy/Dockerfile copies before its ``pip install .``, as it copies it
    for line in (REPO_ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *names, target = line.split()[1:]
            for name in names:
                copied = source / target / name if target.endswith("/") else source / target
                if (REPO_ROOT / name).is_dir():
                    shutil.copytree(REPO_ROOT / name, copied, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO_ROOT / name, copied)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "wheel"),
         str(source)],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    site = tmp_path / "site"
    wheel = next((tmp_path / "wheel").glob("cxpulse-*.whl"))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    for pattern in DATA:  # each data file of the clone is in the installed tree, at the same place
        for path in [p for package in PACKAGES for p in (REPO_ROOT / package).rglob(pattern)]:
            assert (site / path.relative_to(REPO_ROOT)).is_file(), f"{path.relative_to(REPO_ROOT)} is not installed"
    third_party = sysconfig.get_paths()["purelib"]
    run = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        env={"PYTHONPATH": f"{site}:{third_party}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(root.startswith(str(site)) for root in found["roots"])
    assert found["modules"] == source_modules()
    assert found["migrations"] == [name for _, name, _ in migrations()]
    assert len(found["migrations"]) == len(list(MIGRATIONS.glob("*.sql"))) > 0
    assert found["themes"]
