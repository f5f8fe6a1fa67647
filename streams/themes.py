"""The theme taxonomy a process uses: ``CXPULSE_THEMES_FILE`` (YAML, or JSON of the same shape), else the one
shipped with cxpulse (streams/themes.yaml), read once and compiled (streams.core.comments.ThemeMatcher).  A file
that cannot be used stops the command at start with one line naming the file, the theme and the pattern."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from streams.config import Settings
from streams.core.comments import Taxonomy, TaxonomyError, ThemeMatcher, taxonomy
from streams.errors import ConfigurationError

DEFAULT_THEMES = Path(__file__).with_name("themes.yaml")


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """The taxonomy in ``path`` (the shipped one when None); ConfigurationError in one line when unusable."""
    path = path or DEFAULT_THEMES
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"themes file {path}: cannot read it: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigurationError(f"themes file {path}: not YAML{where}: {problem}") from None
    try:
        return taxonomy(raw, f"themes file {path}")
    except TaxonomyError as exc:
        raise ConfigurationError(str(exc)) from None


@functools.lru_cache(maxsize=8)
def _compiled(path: Path | None, stamp: tuple[int, int]) -> ThemeMatcher:
    return ThemeMatcher(load_taxonomy(path))


def theme_matcher(settings: Settings) -> ThemeMatcher | None:
    """The compiled taxonomy of ``settings`` (None with comments off), read once per process and version of the
    file (its modification time and size)."""
    if settings.comments == "off":
        return None
    path = settings.themes_file
    try:
        status = (path or DEFAULT_THEMES).stat()
        stamp = (status.st_mtime_ns, status.st_size)
    except OSError:
        stamp = (0, 0)  # load_taxonomy says what is wrong with it
    return _compiled(path, stamp)
