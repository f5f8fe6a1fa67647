"""py-spy profiles of a benchmark's worker, and what they say: where each process spends its samples.

``record(pid, path)`` samples a process and its children (``py-spy record --subprocesses``, raw stacks) until
``stop``; ``summary(path)`` prints, per process, the functions with the most samples on their stacks (inclusive)
and at their tops (self).  py-spy comes from PyPI (``pip install py-spy``); it is not a dependency of cxpulse.

Usage::

    .venv/bin/python -m benchmarks.profile PROFILE.txt [--top 25] [--match local_tables]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streams.broker import stop as stop_child

RATE = 100  # samples a second
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
console = Console(width=200)


def py_spy() -> str:
    """The py-spy beside this Python, else on PATH; SystemExit saying how to install it."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def record(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` and its children into ``path`` (raw stacks); ``stop`` ends it and writes the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", str(RATE)]
    command += ["--format", "raw", "--output", str(path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a recording (py-spy writes its file on SIGINT)."""
    stop_child(proc, how=signal.SIGINT)


def _name(frame: str) -> str:
    """``func (path:line)`` -> ``module.func`` (the path's last two parts), lines folded together."""
    found = FRAME.match(frame)
    if found is None:
        return frame
    parts = Path(found["file"]).with_suffix("").parts[-2:]
    return ".".join((*parts, found["func"]))


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """Raw stacks by process: (frames, root first; samples)."""
    stacks: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        text, _, count = line.rpartition(" ")
        if not text or not count.isdigit():
            continue
        frames = text.split(";")
        processes = [frame for frame in frames if frame.startswith("process ")]  # a child's under its parent's
        process = processes[-1] if processes else "process"
        rest = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
        stacks[_short(process)].append(([_name(frame) for frame in rest], int(count)))
    return stacks


def _short(process: str) -> str:
    """``process 123:"python -m streams.cli worker ..."`` -> ``123 worker ...`` (the command's tail)."""
    head, _, command = process.partition(":")
    words = command.strip('"').split()
    return f"{head.removeprefix('process ')} {' '.join(words[-3:])}"[:60]


def summary(path: Path, top: int = 25, match: str = "") -> None:
    """Print each process's top functions by inclusive and self samples (only names containing ``match``)."""
    for process, stacks in sorted(load(path).items(), key=lambda item: -sum(n for _, n in item[1])):
        total = sum(count for _, count in stacks)
        idle = sum(count for frames, count in stacks if not frames)
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for frames, count in stacks:
            for name in set(frames):
                inclusive[name] += count
            if frames:
                own[frames[-1]] += count
        table = Table(title=f"{process}: {total:,} samples ({total / RATE:.1f} s at {RATE}/s), {idle:,} idle")
        table.add_column("inclusive", justify="right")
        table.add_column("function")
        table.add_column("self", justify="right")
        table.add_column("function (self)")
        left = [(name, n) for name, n in inclusive.most_common() if match in name][:top]
        right = [(name, n) for name, n in own.most_common() if match in name][:top]
        for row in range(max(len(left), len(right))):
            a = left[row] if row < len(left) else ("", 0)
            b = right[row] if row < len(right) else ("", 0)
            table.add_row(
                f"{100 * a[1] / total:.1f}%" if a[0] else "", a[0], f"{100 * b[1] / total:.1f}%" if b[0] else "", b[0]
            )
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="a raw py-spy profile (benchmarks' --profile)")
    parser.add_argument("--top", type=int, default=25, help="functions per column")
    parser.add_argument("--match", default="", help="only functions whose module.name contains this")
    args = parser.parse_args()
    summary(args.profile, args.top, args.match)


if __name__ == "__main__":
    main()
