"""What reading comments costs (docs/contract.md section 9): redaction, words and themes of the shipped taxonomy,
alone on one core, as the hot path's route step calls them (streams.core.comments.read_comment).

The comments are the realistic English and Dutch ones of tests/unit/test_themes.py, each with a word of its own
of 20,000 (so the matcher's word cache sees new words, as it does in production), one in ten with an address and
a phone number to redact.  Prints comments per second, median of ``--runs``.  Usage::

    .venv/bin/python -m benchmarks.comments [--comments 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from streams.core.comments import ThemeMatcher, read_comment
from streams.themes import load_taxonomy
from tests.unit.test_themes import CORPUS


def comments(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = [text for text, _ in CORPUS]
    out = []
    for i in range(count):
        text = rng.choice(texts)
        if rng.random() < 0.1:
            text += f" mail me at user{i}@example.nl or call 06-{10_000_000 + i}"
        out.append(f"{text} ({rng.choice(('zaak', 'case', 'ref'))} {letters(i % 20_000)})")
    return out


def letters(n: int) -> str:
    """A word of its own for ``n`` (letters only: most comments have no digit)."""
    word = ""
    while True:
        n, rest = divmod(n, 26)
        word += chr(ord("a") + rest)
        if not n:
            return word


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    texts = comments(args.comments)
    rates = []
    for _ in range(args.runs):
        matcher = ThemeMatcher(load_taxonomy())  # a fresh word cache every run, as a process starts with
        started = time.perf_counter()
        mentioned = sum(len(read_comment(text, matcher, "redacted").themes) > 1 for text in texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    print(
        f"{len(texts):,} comments, {mentioned / len(texts):.0%} mention a theme: "
        f"{statistics.median(rates):,.0f} comments/s on one core (median of {args.runs}; "
        f"runs {', '.join(f'{r:,.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
