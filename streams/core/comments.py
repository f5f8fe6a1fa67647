"""What customers say (docs/contract.md section 9): a comment redacted, cut into tokens, and read as themes.

- :func:`redact` replaces e-mail addresses, IBANs and runs of six or more digits by ``[email]``, ``[iban]`` and
  ``[number]``, in that order, each regex applied to the result of the one before.
- :func:`tokens` turns a redacted comment into its tokens: placeholders left out, Unicode NFKD, combining marks
  removed, case-folded, maximal runs of letters and digits.
- :class:`Taxonomy` is a checked map of theme names to patterns (:func:`taxonomy` builds one from a file's
  mapping and says in one line what is wrong); :class:`ThemeMatcher` compiles it once and gives the themes a
  comment mentions: each distinct token is looked up once (a dict of exact words, a dict of prefixes by length),
  and a pattern of several words is followed only from the tokens that match its first word, so the cost of a
  comment grows with its tokens, not with the taxonomy's patterns.
- :func:`read_comment` is all of it for one answer, by mode: ``redacted`` (the default: redacted text and
  themes), ``themes`` (themes only, the text dropped) or ``off``; :func:`with_comments` for a batch of valid
  answers, as the hot path's route step and replay call it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Final, Literal, NamedTuple, cast

from streams.core.validate import LABEL_PATTERN, Feedback, normalise_label

ANY: Final = "(any)"  # the theme every commented answer mentions: the denominator of a theme's share
MAX_THEMES: Final = 64
CommentMode = Literal["redacted", "themes", "off"]
COMMENT_MODES: Final[tuple[CommentMode, ...]] = ("redacted", "themes", "off")

REDACTIONS: Final = (
    (re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+", re.IGNORECASE), "[email]"),
    (re.compile(r"\b[a-z]{2}\d{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?\b", re.IGNORECASE), "[iban]"),
    (re.compile(r"\+?\d(?:[ ./()-]?\d){5,}", re.IGNORECASE), "[number]"),
)
PLACEHOLDERS: Final = re.compile(r"\[(?:email|iban|number)\]")
TOKEN: Final = re.compile(r"[^\W_]+")  # a maximal run of Unicode letters or digits (categories L and N): checked
PATTERN_WORD: Final = re.compile(r"[^\W_]+\*?")  # a pattern's word, with the * that makes it a prefix
_MAX_TOKEN_CACHE: Final = 200_000  # distinct tokens remembered by a matcher; bounded against floods of new words


_DIGIT: Final = re.compile(r"\d")


def redact(comment: str) -> str:
    """The comment with e-mail addresses, IBANs and runs of six or more digits replaced (section 9's order).  A rule
    whose every match needs a character the comment lacks (an @, a digit) is not run: most comments have neither."""
    (email, to_email), (iban, to_iban), (number, to_number) = REDACTIONS
    if "@" in comment:
        comment = email.sub(to_email, comment)
    if _DIGIT.search(comment):
        comment = number.sub(to_number, iban.sub(to_iban, comment))
    return comment


def fold(text: str) -> str:
    """NFKD, combining marks (Mn) removed, case-folded: how comments and patterns are compared."""
    decomposed = unicodedata.normalize("NFKD", text)
    if not decomposed.isascii():
        decomposed = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return decomposed.casefold()


def tokens(redacted: str) -> list[str]:
    """The tokens of a redacted comment (its placeholders are not words of the customer's).  Folded text that is
    ASCII (nearly every Dutch or English comment, diacritics gone) is cut with a byte table: 1.3 us for a comment of
    70 characters against the regex's 2.8 (the same tokens: ASCII letters and digits are its L and N)."""
    if "[" in redacted:
        redacted = PLACEHOLDERS.sub(" ", redacted)
    folded = fold(redacted)
    if folded.isascii():
        return folded.encode().translate(_ASCII_WORDS).decode().split()
    return TOKEN.findall(folded)


_ASCII_WORDS: Final = bytes(c if c < 128 and chr(c).isalnum() else 32 for c in range(256))  # the rest: a space


class Word(NamedTuple):
    """A word of a pattern: the text a token must equal, or start with when ``prefix``."""

    text: str
    prefix: bool


class Taxonomy(NamedTuple):
    """Theme name -> its patterns, each a tuple of words; ``source`` names where it came from (for messages)."""

    themes: Mapping[str, tuple[tuple[Word, ...], ...]]
    source: str


class TaxonomyError(ValueError):
    """A taxonomy that cannot be used, in one line naming the file, the theme and the pattern."""


def pattern_words(pattern: str) -> tuple[Word, ...]:
    """A pattern split and normalised as a comment is (``on-hold`` is two words); ``wacht*`` is a prefix."""
    folded = fold(pattern)
    words = PATTERN_WORD.findall(folded)
    if "*" in PATTERN_WORD.sub("", folded) or re.search(r"\*[^\W_]", folded):
        raise ValueError("a * must end a word (wait* matches waiting)")
    if not words:
        raise ValueError("it has no word (letters or digits)")
    return tuple(Word(w.rstrip("*"), w.endswith("*")) for w in words)


def taxonomy(raw: object, source: str) -> Taxonomy:
    """A taxonomy from a file's parsed content (``themes: {name: [pattern, ...]}``); TaxonomyError otherwise."""
    themes = raw.get("themes") if isinstance(raw, Mapping) else None
    if not isinstance(themes, Mapping) or not themes:
        raise TaxonomyError(f"{source}: expected 'themes:' mapping each theme name to a list of patterns")
    if len(themes) > MAX_THEMES:
        raise TaxonomyError(f"{source}: {len(themes)} themes, at most {MAX_THEMES}")
    out: dict[str, tuple[tuple[Word, ...], ...]] = {}
    for name, patterns in themes.items():
        label = normalise_label(str(name))
        if not LABEL_PATTERN.fullmatch(label):
            raise TaxonomyError(f"{source}: theme {name!r}: not a label (letters, digits, _ . -; at most 64)")
        if label in out:
            raise TaxonomyError(f"{source}: theme {name!r}: given twice")
        if isinstance(patterns, str) or not isinstance(patterns, Iterable) or not patterns:
            raise TaxonomyError(f"{source}: theme {name!r}: expected a list of patterns")
        parsed = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TaxonomyError(f"{source}: theme {name!r}, pattern {pattern!r}: not text")
            try:
                parsed.append(pattern_words(pattern))
            except ValueError as exc:
                raise TaxonomyError(f"{source}: theme {name!r}, pattern {pattern!r}: {exc}") from None
        out[label] = tuple(parsed)
    return Taxonomy(out, source)


class ThemeMatcher:
    """A taxonomy compiled for matching: :meth:`themes` of a token list, computed once per answer."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.names = tuple(sorted(taxonomy.themes))
        self.exact: dict[str, set[int]] = {}  # word -> ids of the pattern words it is
        self.prefix: dict[int, dict[str, set[int]]] = {}  # length -> prefix -> ids of the prefix words
        ids: dict[Word, int] = {}
        self.single: dict[int, set[str]] = {}  # word id -> themes with that one-word pattern
        self.longer: dict[int, list[tuple[tuple[int, ...], str]]] = {}  # first word id -> (the rest, theme)
        for theme, patterns in taxonomy.themes.items():
            for words in patterns:
                chain = tuple(self._id(word, ids) for word in words)
                if len(chain) == 1:
                    self.single.setdefault(chain[0], set()).add(theme)
                else:
                    self.longer.setdefault(chain[0], []).append((chain[1:], theme))
        self._cache: dict[str, _Token] = {}

    def _id(self, word: Word, ids: dict[Word, int]) -> int:
        if word not in ids:
            ids[word] = len(ids)
            if word.prefix:
                self.prefix.setdefault(len(word.text), {}).setdefault(word.text, set()).add(ids[word])
            else:
                self.exact.setdefault(word.text, set()).add(ids[word])
        return ids[word]

    def word_ids(self, token: str) -> frozenset[int]:
        """The pattern words ``token`` matches (cached per distinct token)."""
        return self._token(token).ids

    def _token(self, token: str) -> _Token:
        """What ``token`` is to the taxonomy, computed once per distinct token: the pattern words it matches, the
        themes of the one-word patterns among them, and the longer patterns that start with one of them."""
        found = self._cache.get(token)
        if found is None:
            hits = set(self.exact.get(token, ()))
            for length, prefixes in self.prefix.items():
                if length <= len(token):
                    hits.update(prefixes.get(token[:length], ()))
            found = NOT_IN_A_PATTERN
            if hits:
                singles = frozenset(theme for word in hits for theme in self.single.get(word, ()))
                found = _Token(frozenset(hits), singles, tuple(p for word in hits for p in self.longer.get(word, ())))
            if len(self._cache) >= _MAX_TOKEN_CACHE:
                self._cache.clear()
            self._cache[token] = found
        return found

    def themes(self, words: list[str]) -> frozenset[str]:
        """The themes a comment of these tokens mentions (without ANY).  Per token one dict lookup (map, in C); the
        loop only looks at tokens in some pattern (the 2026-12-05 profile: 6.7% of the hot path with comments on
        60% of the answers, the loop over each token's pattern words most of it)."""
        cached = list(map(self._cache.get, words))
        if None in cached:
            cached = [self._token(token) if here is None else here for here, token in zip(cached, words, strict=True)]
        matched = cast(list[_Token], cached)  # no None left
        found: set[str] = set()
        last = len(matched) - 1
        for at, here in enumerate(matched):
            if here is NOT_IN_A_PATTERN:  # most words of a comment are in no pattern
                continue
            if here.singles:
                found |= here.singles
            if here.longer and at < last:  # a longer pattern: its second word first (it rarely follows)
                following = matched[at + 1].ids
                for rest, theme in here.longer:
                    if rest[0] in following and theme not in found and _follows(matched, at + 2, rest[1:]):
                        found.add(theme)
        return frozenset(found) if found else NO_THEMES


class _Token(NamedTuple):
    """A distinct token as the matcher sees it."""

    ids: frozenset[int]  # the pattern words it matches
    singles: frozenset[str]  # the themes of the one-word patterns it matches
    longer: tuple[tuple[tuple[int, ...], str], ...]  # (the rest, theme) of the longer patterns it starts


NO_THEMES: Final[frozenset[str]] = frozenset()
NOT_IN_A_PATTERN: Final = _Token(frozenset(), NO_THEMES, ())


def _follows(matched: list[_Token], at: int, rest: tuple[int, ...]) -> bool:
    if at + len(rest) > len(matched):
        return False
    return all(word in matched[at + i].ids for i, word in enumerate(rest))


class Comment(NamedTuple):
    """What an answer's comment becomes: the text to keep (None: none kept) and the themes it mentions, ANY first
    when it has a token (an empty tuple: no comment, as section 9 counts it)."""

    text: str | None
    themes: tuple[str, ...]


NO_COMMENT: Final = Comment(None, ())


def read_comment(comment: object, matcher: ThemeMatcher | None, mode: CommentMode) -> Comment:
    """An answer's comment under ``mode``: redacted text (``redacted``; None under ``themes`` and ``off``) and
    its themes (none under ``off``, or without a matcher)."""
    if mode == "off" or not isinstance(comment, str) or not comment:
        return NO_COMMENT
    redacted = redact(comment)
    words = tokens(redacted)
    kept = redacted if mode == "redacted" else None
    if not words:
        return Comment(kept, ())
    if matcher is None:
        return Comment(kept, (ANY,))
    return Comment(kept, (ANY, *sorted(matcher.themes(words))))


def with_comments(
    events: Sequence[Feedback],
    records: Sequence[MutableMapping[str, Any]],
    matcher: ThemeMatcher | None,
    mode: CommentMode,
) -> tuple[list[Feedback], list[int]]:
    """Valid answers (``events[i]`` validated from ``records[i]``) with the themes of their comments, each record's
    ``comment`` replaced by what ``mode`` keeps of it; also the indexes of the records so changed (their bytes as
    they came hold the comment as written: whoever passes those bytes on must encode the record again)."""
    out = list(events)
    changed = []
    for i, record in enumerate(records):
        comment = record.get("comment")
        if comment is None:
            continue
        read = read_comment(comment, matcher, mode)
        if read.text != comment:
            record["comment"] = read.text
            changed.append(i)
        if read.themes:  # themes is the last field: _make of a tuple is 3x faster than _replace (py-spy, bench)
            out[i] = Feedback._make((*events[i][:-1], read.themes))
    return out, changed
