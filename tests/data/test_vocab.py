"""The vocabulary-pruned output layer (components/vocab.py) and its export kind ``torch_vocab``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.export import build_forms, load_form, make_export
from components.settings import EvalSettings
from components.speed import SAMPLE_RATE_HZ, measure_speed
from components.vocab import BYTE_TOKENS, VOCAB_FILE, PrunedHead, kept_token_ids, read_vocab_file

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Nothing is certain but death and taxes."]


def test_pruned_head_keeps_the_kept_logits_exactly_and_masks_the_rest():
    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    keep = [3, 7, 11, 42]
    head = PrunedHead(weight, keep)
    hidden = torch.randn(2, 5, 8)
    logits = head(hidden)
    full = hidden @ weight.T
    assert logits.shape == (2, 5, 50)
    torch.testing.assert_close(logits[..., keep], full[..., keep])
    others = [i for i in range(50) if i not in keep]
    assert torch.isinf(logits[..., others]).all() and (logits[..., others] < 0).all()
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        PrunedHead(weight, [49, 50])


def test_kept_ids_cover_the_label_tokens_single_bytes_and_every_special_token(tiny_whisper_dir):
    from transformers import WhisperProcessor

    tok = WhisperProcessor.from_pretrained(tiny_whisper_dir).tokenizer
    vocab = len(tok)
    keep = set(kept_token_ids(tok, TEXTS, vocab))
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert set(range(BYTE_TOKENS)) <= keep and set(range(eot, vocab)) <= keep
    for text in TEXTS:
        assert set(tok.encode(" " + text, add_special_tokens=False)) <= keep
    unrelated = tok.encode(" photosynthesis", add_special_tokens=False)
    assert not set(unrelated) <= keep  # a word of neither text is not kept whole
    assert len(keep) < 0.05 * vocab


def test_torch_vocab_export_decodes_like_the_full_model_with_the_pruned_tokens_suppressed(tmp_path, tiny_whisper_dir):
    base = load_form(tiny_whisper_dir, "student")
    form = make_export(base, "torch_vocab", tmp_path, vocab_texts=TEXTS)
    assert form.kind == "torch_vocab" and form.name == "student_torch_vocab"
    keep = read_vocab_file(form.path)
    assert (form.path / VOCAB_FILE).is_file() and form.info["kept_tokens"] == len(keep)
    assert form.params == base.params

    rng = np.random.default_rng(1)
    audios = [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE_HZ))).astype(np.float32) for s in (1.0, 2.0)]
    pruned = form.generate(audios, batch_size=2, max_new_tokens=12)
    full = base.generate(audios, batch_size=2, max_new_tokens=12)
    assert all(set(ids) <= set(keep) for ids, _ in pruned)
    assert any(not set(ids) <= set(keep) for ids, _ in full)  # the random model does emit pruned tokens

    # independent oracle: transformers' own SuppressTokens processor on the full model
    fe = base.processor.feature_extractor
    feats = fe(audios, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
    suppressed = sorted(set(range(base.model.config.vocab_size)) - set(keep))
    with torch.inference_mode():
        ref = base.model.generate(feats, max_new_tokens=12, num_beams=1, do_sample=False, suppress_tokens=suppressed)
        got = form.model.generate(feats, max_new_tokens=12, num_beams=1, do_sample=False)
    assert torch.equal(ref, got)


def test_torch_vocab_without_label_texts_is_a_recorded_export_failure(tmp_path, tiny_whisper_dir):
    cfg = EvalSettings(exports=("torch_vocab",), teacher_exports=(), exports_dir=tmp_path / "exports")
    forms, status = build_forms(cfg, {"teacher": tiny_whisper_dir, "student": tiny_whisper_dir})
    assert [f.name for f in forms] == ["teacher", "student"]
    assert status["student_torch_vocab"].startswith("failed: ValueError: torch_vocab needs the training label texts")
    assert not list((tmp_path / "exports").glob("student-torch_vocab*"))  # nothing half-written left behind


def test_a_torch_vocab_student_is_compared_with_the_float32_teacher_as_the_same_runtime(tmp_path, tiny_whisper_dir):
    cfg = EvalSettings(exports=("torch_vocab",), teacher_exports=(), exports_dir=tmp_path / "exports",
                       max_new_tokens=4, speed_rounds=1, speed_batch_size=2, speed_isolation="none")
    forms, status = build_forms(cfg, {"teacher": tiny_whisper_dir, "student": tiny_whisper_dir}, TEXTS)
    assert status == {"student_torch_vocab": "ok"}
    rng = np.random.default_rng(2)
    audios = [(0.1 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32) for _ in range(2)]
    speed = measure_speed(forms, audios, cfg)
    same = speed["speedup_same_runtime"]
    assert same["student"]["versus"] == "teacher"
    assert same["student_torch_vocab"]["versus"] == "teacher"
    assert same["student_torch_vocab"]["natural_b1"] == speed["speedup"]["student_torch_vocab"]["natural_b1"]


def test_ct2_pruned_vocabulary_decodes_like_the_full_ct2_model_with_the_pruned_tokens_suppressed(
        tmp_path, tiny_whisper_dir):
    pytest.importorskip("ctranslate2")
    from components.ct2_export import export_ct2
    from components.vocab import export_ct2_vocab

    out = export_ct2_vocab(tiny_whisper_dir, tmp_path / "ct2_vocab", TEXTS, quantization=None)  # float32: exact
    pruned = load_form(out, "student_ct2", fallback_dir=tiny_whisper_dir)
    full = load_form(export_ct2(tiny_whisper_dir, tmp_path / "ct2_full"), "full", fallback_dir=tiny_whisper_dir)
    keep = read_vocab_file(out)
    assert pruned.kind == "ct2_float32_vocab" and pruned.info["kept_tokens"] == len(keep)
    assert pruned.params < load_form(tiny_whisper_dir).params  # only the kept embedding rows
    gen = full.engine.generation_config
    gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | (set(range(pruned.info["vocab_size"])) - set(keep)))
    rng = np.random.default_rng(3)
    audios = [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE_HZ))).astype(np.float32) for s in (1.0, 1.5, 2.0)]
    got = pruned.generate(audios, batch_size=3, max_new_tokens=10)
    want = full.generate(audios, batch_size=3, max_new_tokens=10)
    assert got == want and any(ids for ids, _ in got)
    assert all(set(ids) <= set(keep) for ids, _ in got)


def test_ct2_int8_vocab_export_is_compared_with_the_teacher_ct2_int8(tmp_path, tiny_whisper_dir):
    pytest.importorskip("ctranslate2")
    cfg = EvalSettings(exports=("ct2_int8_vocab",), teacher_exports=("ct2_int8",), exports_dir=tmp_path / "exports",
                       max_new_tokens=4, speed_rounds=1, speed_batch_size=2, speed_isolation="none")
    forms, status = build_forms(cfg, {"teacher": tiny_whisper_dir, "student": tiny_whisper_dir}, TEXTS)
    assert status == {"teacher_ct2_int8": "ok", "student_ct2_int8_vocab": "ok"}
    assert {f.name: f.kind for f in forms}["student_ct2_int8_vocab"] == "ct2_int8_vocab"
    rng = np.random.default_rng(4)
    audios = [(0.1 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32) for _ in range(2)]
    same = measure_speed(forms, audios, cfg)["speedup_same_runtime"]
    assert same["student_ct2_int8_vocab"]["versus"] == "teacher_ct2_int8"


# ---------------------------------------------------------------------------------------------
# training to spell with a smaller vocabulary (train.student.vocab_top_ranks)


def test_restricted_tokenizer_spells_any_text_with_low_ids_only(tiny_whisper_dir):
    from transformers import WhisperTokenizerFast

    from components.train.data import IGNORE_INDEX
    from components.vocab import kept_vocabulary, restricted_tokenizer, top_rank_ids

    tok = WhisperTokenizerFast.from_pretrained(tiny_whisper_dir)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    texts = [*TEXTS, " Photosynthesis in Reykjavík, naïvely: 3.14 × 10⁹!", " stump"]
    labels = [tok.encode(" " + t.strip(), add_special_tokens=False) for t in texts]
    cut = restricted_tokenizer(tok, 1000)
    kv = kept_vocabulary(tok, len(tok), 1000)
    assert kv.keep == top_rank_ids(tok, len(tok), 1000) and set(range(1000)) | {eot} <= set(kv.keep)
    assert sorted(kv.pieces) == list(range(1000, eot))
    for text, ids in zip(texts, labels, strict=True):
        for spelled in (kv.spell(ids), cut.encode(" " + text.strip(), add_special_tokens=False).ids):
            assert all(i < 1000 for i in spelled) and len(spelled) >= len(ids)
            assert tok.decode(spelled) == tok.decode(ids)  # the same text, other pieces
    assert kept_vocabulary(tok, len(tok), eot).spell(labels[2]) == labels[2]  # nothing pruned: the same tokens
    stamp = eot + 400  # special and timestamp tokens stay as they are
    assert kv.spell([stamp, *labels[0]]) == [stamp, *kv.spell(labels[0])]
    for word in (" nerve", " Experience", " Kaz"):  # a pruned token's pieces are the restricted BPE of its bytes
        (whole,) = tok.encode(word, add_special_tokens=False)
        assert list(kv.pieces[whole]) == cut.encode(word, add_special_tokens=False).ids and len(kv.pieces[whole]) > 1
    pruned, into = kv.fold_index()
    assert pruned == sorted(kv.pieces) and all(kv.keep[i] == kv.pieces[p][0] for p, i in zip(pruned, into))
    # alignment: each teacher token's first piece gets its teacher position, later pieces none
    (nerve,) = tok.encode(" nerve", add_special_tokens=False)
    the = tok.encode(" the", add_special_tokens=False)[0]
    teacher = [IGNORE_INDEX, the, nerve, eot]
    student = [IGNORE_INDEX, the, *kv.pieces[nerve], eot]
    assert kv.align(teacher, student) == [0, 1] + [-1] * (len(kv.pieces[nerve]) - 1) + [2]
    assert kv.align(teacher, student[:-1]) == [0, 1] + [-1] * (len(kv.pieces[nerve]) - 1)  # truncated: no <eot>
    with pytest.raises(ValueError, match="vocab_top_ranks"):
        top_rank_ids(tok, len(tok), eot + 1)


def test_kept_columns_cut_every_loss_input_and_renumber_the_targets():
    from components.vocab import kept_columns

    keep = torch.tensor([0, 2, 5, 9])
    logits = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    targets = torch.tensor([[-100, 5, 9], [2, 0, -100]])
    student, teacher, self_logits, renumbered = kept_columns(keep, logits, logits + 1, (logits + 2, targets >= 0),
                                                             targets)
    torch.testing.assert_close(student, logits[..., [0, 2, 5, 9]])
    torch.testing.assert_close(teacher, logits[..., [0, 2, 5, 9]] + 1)
    torch.testing.assert_close(self_logits[0], logits[..., [0, 2, 5, 9]] + 2)
    assert renumbered.tolist() == [[-100, 2, 3], [1, 0, -100]]
    assert kept_columns(keep, logits, None, None, targets)[1] is None
    valid = torch.tensor([[True, False, True], [False, True, True]])
    _, teacher, _, _ = kept_columns(keep, logits.requires_grad_(), (logits + 1).detach(), None, targets,
                                    teacher_valid=valid)
    cut = logits[..., [0, 2, 5, 9]]
    torch.testing.assert_close(teacher[valid], cut[valid] + 1)
    assert teacher[~valid].argmax(-1).tolist() == [2, 1]  # one-hot on the (renumbered) label
    probs = torch.softmax(teacher[~valid] / 2.0, -1)
    assert torch.equal(probs.max(-1).values, torch.ones(2)) and torch.isfinite(teacher).all()
    assert not teacher.requires_grad  # detached: the targets pass no gradient to the student
    with pytest.raises(ValueError, match="outside the kept vocabulary"):
        kept_columns(keep, logits, None, None, torch.tensor([[3, 0, 0], [0, 0, 0]]))


def test_folding_gives_a_pruned_tokens_probability_to_its_first_piece():
    from components.vocab import fold_probabilities, kept_columns

    keep, pruned, into = torch.tensor([0, 1, 2, 5]), torch.tensor([3, 4]), torch.tensor([1, 1])
    logits = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.5, 0.1, 0.1]]))
    for temperature in (1.0, 2.0):
        folded = fold_probabilities(logits, keep, pruned, into, temperature)
        expected = torch.softmax(logits / temperature, -1)[0]
        expected = torch.stack([expected[0], expected[1] + expected[3] + expected[4], expected[2], expected[5]])
        torch.testing.assert_close(torch.softmax(folded / temperature, -1)[0], expected)
    student = torch.zeros(1, 6)
    _, teacher, _, _ = kept_columns(keep, student, logits, None, torch.tensor([0]), (pruned, into), 2.0)
    torch.testing.assert_close(teacher, fold_probabilities(logits, keep, pruned, into, 2.0))
