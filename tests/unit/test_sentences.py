"""Fast tests of the fortune-sentence pipeline (components.sentences) and the synth planning step."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.sentences import (
    NotEnoughSentencesError,
    assign_splits,
    dedupe_sorted,
    entry_sentences,
    fortune_files,
    is_usable_sentence,
    load_sentences,
    parse_strfile,
)

GOOD = [
    "A lifetime isn't nearly long enough to figure it out.",
    "Don't look back, something might be gaining on you.",
    "Mistrust first impulses; they are always right.",
    "A long-forgotten loved one will appear soon.",
    "Has the great art of politics no apparent utility?",
]
OFFENSIVE = "This offensive sentence must never be read by anyone at all."


def _write_fortunes(root: Path) -> Path:
    """A small fake /usr/share/games/fortunes with the Debian layout (index, symlink, off/)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wisdom").write_text(
        f"{GOOD[0]}\n%\n{GOOD[1]}\n\t\t-- S. Paige, c. 1951\n%\n"
        "A dream will always triumph over reality, once given the chance.\n"
        "\t\t-- Stanislaw Lem\n%\n"
        f"{GOOD[2]}  And in 1999 there were 42 of them here today.\n%\n",
        encoding="utf-8",
    )
    (root / "people").write_text(
        f"{GOOD[3]}\n%\n{GOOD[4].replace('politics', 'POLITICS')}\n%\n{GOOD[4]}\n%\n"
        # same sentence, other case: a duplicate
        f"{GOOD[0].lower().capitalize()}\n%\n"
        '"Dawn came too soon," she mourned to the people.\n%\n'
        "Q: How do you shoot a blue elephant with a gun?\n%\n"
        "Mr. Smith went to Washington on a long train trip.\n%\n"
        "Too short.\n%\n"
        "This one rambles on and on and on and on and on and on and on and on and on and on and end.\n%\n"
        "I don't need no drugs to calm me down at all...\n%\n",
        encoding="utf-8",
    )
    (root / "wisdom.dat").write_bytes(b"\x00\x00\x00\x02binary strfile index\xff")
    (root / "wisdom.u8").symlink_to("wisdom")
    (root / "off").mkdir()
    (root / "off" / "rude").write_text(f"{OFFENSIVE}\n%\n", encoding="utf-8")
    return root


def test_fortune_files_skip_index_symlinks_and_off(tmp_path: Path) -> None:
    root = _write_fortunes(tmp_path / "fortunes")
    assert [p.name for p in fortune_files(root)] == ["people", "wisdom"]
    with pytest.raises(ValueError, match="offensive"):
        fortune_files(root / "off")
    with pytest.raises(FileNotFoundError, match="fortunes"):
        fortune_files(tmp_path / "missing")


def test_parse_strfile_entries() -> None:
    assert parse_strfile("one\ntwo\n%\nthree\n%\n\n%\n") == ["one\ntwo", "three"]
    assert parse_strfile("") == []


def test_entry_sentences_keep_abbreviations_inside() -> None:
    assert entry_sentences("Mr. Smith met Dr. J. Jones. Then they left!") == [
        "Mr. Smith met Dr. J. Jones.",
        "Then they left!",
    ]


def test_entry_sentences_cut_attribution_and_split() -> None:
    entry = "First part of it.  Second\nline here!\nThird?\n\t\t-- Some Author\n\tmore attribution."
    assert entry_sentences(entry) == ["First part of it.", "Second line here!", "Third?"]


@pytest.mark.parametrize("sentence", GOOD)
def test_usable_sentences_pass(sentence: str) -> None:
    assert is_usable_sentence(sentence, 6, 18)


@pytest.mark.parametrize(
    "sentence",
    [
        "There were 42 of them here today, more or less.",  # digits
        '"Dawn came too soon," she mourned to the people.',  # quotes
        "She said 'hello there' to the nice old man.",  # single-quote quotation
        "It's no one-way street -- you know how you feel.",  # dash
        "Q: How do you shoot a blue elephant with a gun?",  # colon
        "Has the great art of POLITICS no apparent utility?",  # all-caps word
        "Mr. Smith went to Washington on a long train trip.",  # abbreviation
        "I don't need no drugs to calm me down at all...",  # ellipsis
        "and then we all went home for a long sleep.",  # lower-case start
        "A sentence without any final punctuation mark here",
        "Too short to use.",
        "This one rambles on and on and on and on and on and on and on and on and on and on and end.",
        "Some (bracketed) words are not wanted in here.",
        "Overstrike\bn text is not wanted in here at all.",
    ],
)
def test_unusable_sentences_fail(sentence: str) -> None:
    assert not is_usable_sentence(sentence, 6, 18)


def test_dedupe_is_case_insensitive_and_order_free() -> None:
    a = dedupe_sorted(["b second one.", "A first one.", "a FIRST one.", "B second one."])
    b = dedupe_sorted(list(reversed(["b second one.", "A first one.", "a FIRST one.", "B second one."])))
    assert a == b == ["A first one.", "B second one."]


def test_load_sentences_filters_dedupes_and_never_reads_off(tmp_path: Path) -> None:
    root = _write_fortunes(tmp_path / "fortunes")
    got = load_sentences(root, 6, 18)
    assert sorted(got, key=str.lower) == got
    assert set(got) == set(GOOD) | {"A dream will always triumph over reality, once given the chance."}
    assert OFFENSIVE not in got
    lem = "A dream will always triumph over reality, once given the chance."
    assert load_sentences(root, 11, 12) == [lem]
    assert load_sentences(root, 7, 7) == [GOOD[3], GOOD[2]]  # a hyphenated word counts once


def test_assign_splits_disjoint_deterministic_and_sized() -> None:
    sentences = [f"Sentence number {w} is here." for w in _words(300)]
    sizes = {"test": 20, "validation": 10, "train": 100}
    pools = assign_splits(sentences, sizes, seed=7)
    assert {k: len(v) for k, v in pools.items()} == sizes
    seen = [s.lower() for pool in pools.values() for s in pool]
    assert len(seen) == len(set(seen)) == 130
    assert pools == assign_splits(list(reversed(sentences)), sizes, seed=7)
    assert pools != assign_splits(sentences, sizes, seed=8)
    bigger = assign_splits(sentences, {**sizes, "train": 200}, seed=7)
    assert bigger["test"] == pools["test"] and bigger["validation"] == pools["validation"]
    assert set(pools["train"]) <= set(bigger["train"])


def test_assign_splits_dedupes_before_counting() -> None:
    pools = assign_splits(["One two three.", "ONE TWO THREE.", "Four five six."], {"a": 1, "b": 1}, seed=0)
    assert {s.lower() for s in pools["a"] + pools["b"]} == {"one two three.", "four five six."}


def test_assign_splits_too_few_is_a_clear_error() -> None:
    with pytest.raises(NotEnoughSentencesError, match=r"need 5 distinct sentences .* only 2"):
        assign_splits(["One two three.", "Four five six."], {"train": 4, "test": 1}, seed=0)
    assert issubclass(NotEnoughSentencesError, ValueError)  # the CLI prints ValueErrors as one line


def test_synthesize_fails_fast_when_too_few_sentences(tmp_path: Path, monkeypatch) -> None:
    from components.settings import SynthSettings
    from components.synth import synthesize

    monkeypatch.chdir(tmp_path)
    cfg = SynthSettings(
        sentence_source=_write_fortunes(tmp_path / "fortunes"),
        out_dir=tmp_path / "synth",
        n_train=10,
        n_validation=1,
        n_test=1,
        n_test_ood=0,
        n_test_longform=0,
    )
    with pytest.raises(NotEnoughSentencesError, match="need 12 distinct sentences.*only 6 are available"):
        synthesize(cfg)
    assert not (tmp_path / "synth").exists()


def test_real_fortunes_give_thousands_of_sentences() -> None:
    source = Path("/usr/share/games/fortunes")
    if not source.is_dir():
        pytest.skip("Debian package `fortunes` not installed")
    got = load_sentences(source, 6, 18)
    assert len(got) > 8000
    assert all(is_usable_sentence(s, 6, 18) for s in got[:500])


def test_synth_plan_is_deterministic_and_disjoint() -> None:
    from components.settings import SynthSettings
    from components.synth import SPLITS, plan_clips, pool_sizes

    sentences = [f"Sentence number {w} is here." for w in _words(200)]
    cfg = SynthSettings(n_train=20, n_validation=5, n_test=5, n_test_ood=7, n_test_longform=2)
    pools = assign_splits(sentences, pool_sizes(cfg), cfg.seed)
    jobs = plan_clips(cfg, pools)
    assert jobs == plan_clips(cfg, pools)
    clips = [c for j in jobs for c in j.clips]
    counts = {s: sum(c.split == s for c in clips) for s in SPLITS}
    assert counts == {"train": 20, "validation": 5, "test": 5, "test_ood": 7, "test_longform": 2}
    texts = [t for c in clips for t in c.texts]
    assert len(texts) == len(set(texts))
    ood = [c for c in clips if c.split == "test_ood"]
    assert [c.espeak_voice for c in ood[:6]] == [*cfg.espeak_voices, cfg.espeak_voices[0]]
    for c in clips:
        if c.engine == "piper":
            assert cfg.length_scale_min <= c.length_scale <= cfg.length_scale_max
            assert cfg.noise_scale_min <= c.noise_scale <= cfg.noise_scale_max
            assert cfg.snr_db_min <= c.snr_db <= cfg.snr_db_max


def _words(n: int) -> list[str]:
    """``n`` distinct letter-only tokens (aa, ab, ...)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [letters[i // 26 % 26] + letters[i % 26] + letters[i // 676] for i in range(n)]
