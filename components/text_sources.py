"""More kinds of training text than fortune-file sentences: dialogue and numbers, dates and times as words.

The student's decoder learns the text domain as well as the voice; fortune cookies are one narrow style. Two
offline sources, each installed from PyPI (``requirements.txt``):

* ``dialogue``: the English conversations of ``chatterbot-corpus`` (BSD-3-Clause): questions, replies and
  help-desk instructions; the ``coding`` file (code and symbols) is left out. Lines without a final punctuation
  mark get one (``?`` after a question word, else ``.``), then the fortune sentences' own filter applies
  (:func:`components.sentences.is_usable_sentence`).
* ``numbers``: sentences built from a few templates (appointments, prices, flights, phone numbers, counts,
  dates), their numbers written as words by ``num2words`` (LGPL-2.1), every value drawn from a seeded RNG.

:func:`extra_sentences` gives a seeded, deduplicated list with no sentence whose normalised text is in
``exclude`` (the evaluation pools), so the test sets stay text-disjoint from training.
"""

from __future__ import annotations

import random
from pathlib import Path

from components.sentences import dedupe_sorted, is_usable_sentence

SOURCES = ("dialogue", "numbers")
DIALOGUE_SKIPPED_FILES = frozenset({"coding.yml"})
QUESTION_WORDS = frozenset({"who", "what", "when", "where", "why", "how", "which", "do", "does", "did", "is", "are",
                            "can", "could", "would", "will", "should", "have", "has", "was", "were", "may", "shall"})
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
PLACES = ("the main office", "the north entrance", "the second floor", "the warehouse", "the front desk",
          "the east wing", "the parking garage", "the train station", "the city library", "the clinic")
THINGS = ("boxes", "tickets", "chairs", "orders", "parcels", "seats", "rooms", "bottles", "copies", "licenses")
TEMPLATES = (
    "The appointment is on {weekday}, {month} the {ordinal}, at {time}.",
    "Your total comes to {number} dollars and {cents} cents.",
    "Flight {number} to the capital leaves from gate {small} at {time}.",
    "Please call me back at {digits} before {time}.",
    "There are {number} {things} left at {place}.",
    "We moved the meeting to {month} {ordinal}, {year}, at {place}.",
    "The package weighs {small} point {digit} kilograms and costs {number} dollars.",
    "I was born on the {ordinal} of {month}, {year}.",
    "Room {number} on the {floor} floor is free from {time} until {time2}.",
    "About {percent} percent of the {things} arrived on {weekday}.",
)


def _words(n: int, to: str = "cardinal") -> str:
    from num2words import num2words

    return num2words(n, to=to, lang="en").replace(",", "")


def _time(rng: random.Random) -> str:
    hour, minute = rng.randint(1, 12), rng.choice((0, 5, 10, 15, 20, 30, 40, 45, 50))
    suffix = rng.choice(("in the morning", "in the afternoon", "in the evening"))
    if minute == 0:
        return f"{_words(hour)} o'clock {suffix}"
    if minute < 10:
        return f"{_words(hour)} oh {_words(minute)} {suffix}"
    return f"{_words(hour)} {_words(minute)} {suffix}"


def number_sentence(rng: random.Random) -> str:
    """One template filled with values from ``rng``, every number in words."""
    values = {
        "weekday": rng.choice(WEEKDAYS), "month": rng.choice(MONTHS), "ordinal": _words(rng.randint(1, 28), "ordinal"),
        "time": _time(rng), "time2": _time(rng), "number": _words(rng.randint(2, 999)),
        "cents": _words(rng.randint(1, 99)), "small": _words(rng.randint(1, 40)), "digit": _words(rng.randint(1, 9)),
        "digits": " ".join(_words(rng.randint(0, 9)) for _ in range(7)).replace("zero", rng.choice(("zero", "oh"))),
        "things": rng.choice(THINGS), "place": rng.choice(PLACES), "year": _words(rng.randint(1950, 2030), "year"),
        "floor": _words(rng.randint(1, 20), "ordinal"), "percent": _words(rng.randint(2, 99)),
    }
    return rng.choice(TEMPLATES).format(**values).replace("-", " ")


def dialogue_lines() -> list[str]:
    """Every English conversation line of chatterbot-corpus (code file skipped), as written."""
    import chatterbot_corpus
    import yaml

    lines = []
    for path in sorted((Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml")):
        if path.name in DIALOGUE_SKIPPED_FILES:
            continue
        for conversation in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            lines += [str(line) for line in conversation if isinstance(line, str)]
    return lines


def punctuate(line: str) -> str:
    """The line with a final ``?`` (question word first) or ``.`` when it ends without one, first letter capital."""
    line = " ".join(line.split())
    if not line:
        return line
    line = line[0].upper() + line[1:]
    if line[-1] in ".!?":
        return line
    return line + ("?" if line.split()[0].lower() in QUESTION_WORDS else ".")


def _key(sentence: str) -> str:
    from components.text import normalize

    return normalize(sentence)


def extra_sentences(sources, count: int, min_words: int, max_words: int, seed: int, exclude: set[str]) -> list[str]:
    """``count`` sentences drawn from ``sources`` in turn (seeded shuffle; ``numbers`` makes as many as needed,
    ``dialogue`` repeats once it runs out), none whose normalised text is in ``exclude``."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    if "dialogue" in sources:
        lines = dedupe_sorted([punctuate(x) for x in dialogue_lines()])
        pools["dialogue"] = [s for s in lines if is_usable_sentence(s, min_words, max_words) and _key(s) not in exclude]
        rng.shuffle(pools["dialogue"])
    out: list[str] = []
    seen = set(exclude)
    for i in range(count * 4):
        if len(out) == count:
            break
        source = sources[i % len(sources)]
        if source == "numbers":
            sentence = number_sentence(rng)
            if _key(sentence) in seen or not min_words <= len(sentence.split()) <= max_words:
                continue
        elif pools.get(source):
            sentence = pools[source][(i // len(sources)) % len(pools[source])]
        else:
            continue
        seen.add(_key(sentence))
        out.append(sentence)
    return out
