"""Clean English sentences from Debian's ``fortunes`` package, and text-disjoint split pools.

Everything here is pure and deterministic (no randomness except the seeded shuffle in
:func:`assign_splits`), so it is cheap to unit-test.

The strfile text format: entries separated by lines holding only ``%``; an entry may end with an
attribution (a line starting with ``--``). The ``off/`` subfolder (offensive fortunes) is never read:
only regular files directly inside the source folder are listed, and a source folder named ``off`` is
refused.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

OFFENSIVE_DIRNAME = "off"
#: files of the Debian package that are not fortune text (strfile index, UTF-8 alias symlinks)
SKIPPED_SUFFIXES = frozenset({".dat", ".u8", ".pos", ".gz"})
#: fortune files that are mostly not English (Latin, French, German phrases)
NON_ENGLISH_FILES = frozenset({"translate-me"})
ENTRY_SEPARATOR = "%"

_ATTRIBUTION_RE = re.compile(r"^\s*(--|—|\u2015)")
# split after . ? ! followed by whitespace; abbreviations are not protected here, instead a sentence
# with a '.' anywhere but its end is rejected by :func:`is_usable_sentence`.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
# a piece ending like this is not a sentence end: merge it with the next one (it is then rejected)
_ABBREVIATION_END_RE = re.compile(
    r"(\b(Mr|Mrs|Ms|Dr|St|Sr|Jr|Prof|Mt|No|vs|etc|e\.g|i\.e|Inc|Ltd|Co|Gen|Col|Sgt|Rev)|\b[A-Z])\.$"
)
_ALLOWED_RE = re.compile(r"^[A-Za-z][A-Za-z ,;'.!?-]*[.!?]$")
_WORD_RE = re.compile(r"[A-Za-z'-]+")
_INNER_RE = re.compile(r"(?<=[A-Za-z])['-](?=[A-Za-z])")  # apostrophe or hyphen inside a word
_TYPOGRAPHIC = str.maketrans({"\u2019": "'", "\u2018": "'", "\t": " "})


class NotEnoughSentencesError(ValueError):
    """Fewer usable sentences than the requested split sizes need."""


def fortune_files(source: str | Path) -> list[Path]:
    """The fortune text files directly inside ``source``, sorted by name.

    Subfolders (notably ``off/``), symlinks (``*.u8`` aliases), strfile index files (``*.dat``) and
    :data:`NON_ENGLISH_FILES` are skipped, so offensive fortunes are never read.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(
            f"sentence source '{source}' is not a folder (install the Debian package `fortunes`)"
        )
    if source.name == OFFENSIVE_DIRNAME:
        raise ValueError(f"refusing to read offensive fortunes from '{source}'")
    files = [
        p
        for p in source.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in SKIPPED_SUFFIXES
        and not p.name.startswith(".")
        and p.name not in NON_ENGLISH_FILES
    ]
    return sorted(files, key=lambda p: p.name)


def parse_strfile(text: str) -> list[str]:
    """Split strfile text into entries (separated by lines holding only ``%``); blank entries dropped."""
    entries: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == ENTRY_SEPARATOR:
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return [e for e in entries if e.strip()]


def entry_sentences(entry: str) -> list[str]:
    """Sentences of one fortune entry: the attribution (from a ``-- Author`` line on) is cut off,
    lines are joined, whitespace collapsed, and the text split after ``.``, ``?`` or ``!`` (not after
    common abbreviations or initials, which stay inside the sentence)."""
    lines: list[str] = []
    for line in entry.translate(_TYPOGRAPHIC).splitlines():
        if _ATTRIBUTION_RE.match(line):
            break
        lines.append(line)
    text = " ".join(" ".join(lines).split())
    if not text:
        return []
    sentences: list[str] = []
    for piece in _SENTENCE_END_RE.split(text):
        if sentences and _ABBREVIATION_END_RE.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece:
            sentences.append(piece)
    return sentences


def is_usable_sentence(sentence: str, min_words: int, max_words: int) -> bool:
    """True for a clean, speakable sentence of ``min_words..max_words`` words.

    Only ASCII letters, spaces and ``, ; ' - . ! ?``; starts with a capital letter and ends with ``.``,
    ``!`` or ``?``; no other ``.``/``!``/``?`` inside (abbreviations, ellipses); apostrophes and hyphens
    only inside words (no quotation marks, no ``--`` dashes); no ALL-CAPS word of two or more letters;
    no digits, double quotes, colons, brackets or control characters (overstrike).
    """
    if not _ALLOWED_RE.match(sentence) or not sentence[0].isupper():
        return False
    body = sentence[:-1]
    if any(ch in body for ch in ".!?"):
        return False
    if sentence.count("'") + sentence.count("-") != len(_INNER_RE.findall(sentence)):
        return False
    if re.search(r"[,;]\s*[,;]|\s[,;]|[,;]$", body):
        return False
    words = _WORD_RE.findall(sentence)
    if not min_words <= len(words) <= max_words:
        return False
    return not any(len(w) >= 2 and w.replace("'", "").isupper() for w in words)


def _dedupe_key(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def dedupe_sorted(sentences: Sequence[str]) -> list[str]:
    """Case-insensitive dedupe; the result is sorted by the lower-cased text (ties: the text itself),
    and of each duplicate group the first in that order is kept, so input order never matters."""
    kept: dict[str, str] = {}
    for s in sorted(sentences, key=lambda s: (_dedupe_key(s), s)):
        kept.setdefault(_dedupe_key(s), s)
    return list(kept.values())


def load_sentences(source: str | Path, min_words: int, max_words: int) -> list[str]:
    """All usable, distinct sentences from the fortune files in ``source``, sorted deterministically."""
    found: list[str] = []
    for path in fortune_files(source):
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in parse_strfile(text):
            found.extend(s for s in entry_sentences(entry) if is_usable_sentence(s, min_words, max_words))
    return dedupe_sorted(found)


def assign_splits(sentences: Sequence[str], sizes: Mapping[str, int], seed: int) -> dict[str, list[str]]:
    """Text-disjoint sentence pools: a seeded shuffle, then consecutive slices in ``sizes`` order.

    ``sizes`` maps split name -> number of sentences that split needs. Sentences are deduplicated
    (case-insensitively) first, so no text can land in two pools. The same (sentences, sizes, seed)
    always gives the same pools; putting the evaluation splits first in ``sizes`` keeps them fixed when
    only the training size changes.

    Raises :class:`NotEnoughSentencesError` if the sizes add up to more than the sentences available.
    """
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes must be >= 0, got {dict(sizes)}")
    pool = dedupe_sorted(sentences)
    needed = sum(sizes.values())
    if needed > len(pool):
        detail = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise NotEnoughSentencesError(
            f"need {needed} distinct sentences ({detail}) but only {len(pool)} are available; "
            "lower the split sizes or widen min_words/max_words"
        )
    random.Random(seed).shuffle(pool)
    pools: dict[str, list[str]] = {}
    start = 0
    for name, n in sizes.items():
        pools[name] = pool[start : start + n]
        start += n
    return pools
