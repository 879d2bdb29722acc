"""Student construction from the real tiny.en teacher: layer choice, exact weight copy, window, generate, reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.settings import StudentSettings
from components.train.student import init_student, label_logits, layer_indices, shorten_window, teacher_for_training
from components.whisper_io import load_whisper

SAMPLE_RATE_HZ = 16_000
CLIP_S = 3
MAX_NEW_TOKENS = 4


@pytest.mark.parametrize(
    ("n_teacher", "n_student", "expected"),
    [
        (4, 2, [0, 3]),
        (32, 2, [0, 31]),
        (6, 3, [0, 2, 5]),
        (4, 4, [0, 1, 2, 3]),
        (12, 5, [0, 2, 5, 8, 11]),  # numpy.linspace(0, 11, 5, dtype=int), Distil-Whisper's rule
        (32, 4, [0, 10, 20, 31]),
        (4, 1, [3]),
        (1, 1, [0]),
    ],
)
def test_layer_indices_table(n_teacher, n_student, expected):
    assert layer_indices(n_teacher, n_student) == expected
    if n_student > 1:
        ref = np.linspace(0, n_teacher - 1, n_student, dtype=int).tolist()
        ref[-1] = n_teacher - 1
        assert layer_indices(n_teacher, n_student) == ref


@pytest.mark.parametrize(("n_teacher", "n_student"), [(4, 5), (0, 1), (4, 0)])
def test_layer_indices_errors(n_teacher, n_student):
    with pytest.raises(ValueError):
        layer_indices(n_teacher, n_student)


@pytest.fixture(scope="module")
def built(teacher_dir):
    """The default student (every encoder layer, decoder [0, 3], 10 s window, frozen encoder) and the teacher."""
    student, processor, report = init_student(teacher_dir, StudentSettings())
    teacher, _ = load_whisper(teacher_dir)
    return student, processor, report, teacher


def _clip(kind: str) -> np.ndarray:
    n = CLIP_S * SAMPLE_RATE_HZ
    if kind == "zeros":
        return np.zeros(n, dtype=np.float32)
    return np.random.default_rng(0).normal(0.0, 0.05, n).astype(np.float32)


def test_init_student_copies_mapped_layers_exactly(built):
    student, _, report, teacher = built
    assert report["encoder_layer_indices"] == [0, 1, 2, 3]
    assert report["decoder_layer_indices"] == [0, 3]
    assert report["mapping"] == {"encoder": {0: 0, 1: 1, 2: 2, 3: 3}, "decoder": {0: 0, 1: 3}}
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    for s, t in report["mapping"]["decoder"].items():
        prefix_s, prefix_t = f"model.decoder.layers.{s}.", f"model.decoder.layers.{t}."
        keys = [k for k in t_sd if k.startswith(prefix_t)]
        assert keys
        for key in keys:
            assert torch.equal(s_sd[prefix_s + key[len(prefix_t):]], t_sd[key]), key
    for key in ("model.encoder.conv1.weight", "model.encoder.conv2.bias", "model.encoder.layer_norm.weight",
                "model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                "model.decoder.layer_norm.bias", "model.encoder.layers.2.fc1.weight"):
        assert torch.equal(s_sd[key], t_sd[key]), key
    # the 10 s window keeps the first 500 of the teacher's 1500 encoder positions
    assert torch.equal(s_sd["model.encoder.embed_positions.weight"], t_sd["model.encoder.embed_positions.weight"][:500])
    s_fc1, t_fc1 = student.model.decoder.layers[1].fc1.weight, teacher.model.decoder.layers[3].fc1.weight
    assert s_fc1.data_ptr() != t_fc1.data_ptr()  # copies, not views of the teacher


def test_embeddings_tied_encoder_frozen_and_report(built):
    student, _, report, teacher = built
    assert student.proj_out.weight.data_ptr() == student.model.decoder.embed_tokens.weight.data_ptr()
    assert not any(p.requires_grad for p in student.model.encoder.parameters())
    emb = student.model.decoder.embed_tokens.weight
    assert emb.requires_grad is not StudentSettings().freeze_embeddings
    assert all(p.requires_grad for p in student.model.decoder.parameters() if p is not emb)
    total = sum(p.numel() for p in student.parameters())
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert report["student_params"] == total and report["student_trainable"] == trainable
    frozen_emb = 0 if emb.requires_grad else emb.numel()
    assert trainable == sum(p.numel() for p in student.model.decoder.parameters()) - frozen_emb
    assert report["student_bytes_fp32"] == 4 * total
    assert report["teacher_params"] == sum(p.numel() for p in teacher.parameters())
    assert report["teacher_params"] > total and report["window_s"] == 10.0
    assert report["encoder_is_teacher"] is True
    assert student.config.decoder_layers == 2 and student.config.encoder_layers == 4
    heads = student.generation_config.alignment_heads
    assert heads and all(0 <= layer < 2 for layer, _ in heads)


def test_window_10s_features_positions_and_generate(built):
    student, processor, _, _ = built
    fe = processor.feature_extractor
    assert (fe.chunk_length, fe.n_samples, fe.nb_max_frames) == (10, 160_000, 1000)
    assert student.config.max_source_positions == 500
    assert student.model.encoder.embed_positions.weight.shape[0] == 500
    feats = fe(_clip("zeros"), sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 1000)
    with torch.no_grad():
        ids = student.generate(feats, max_new_tokens=MAX_NEW_TOKENS)
    assert ids.dtype == torch.long and ids.shape[0] == 1 and 0 < ids.shape[1] <= MAX_NEW_TOKENS + 4


def test_explicit_indices_unfrozen_encoder_and_errors(teacher_dir, built):
    cfg = StudentSettings(encoder_layers=2, decoder_layer_indices=(1, 2), window_s=30, freeze_encoder=False)
    student, processor, report = init_student(teacher_dir, cfg)
    assert report["encoder_layer_indices"] == [0, 3] and report["decoder_layer_indices"] == [1, 2]
    assert report["encoder_is_teacher"] is False
    assert student.config.max_source_positions == 1500 and processor.feature_extractor.nb_max_frames == 3000
    assert any(p.requires_grad for p in student.model.encoder.parameters())
    assert not student.model.encoder.embed_positions.weight.requires_grad
    teacher = built[3]
    assert torch.equal(student.model.encoder.layers[1].fc2.weight, teacher.model.encoder.layers[3].fc2.weight)
    for bad in ((3, 1), (0, 4)):
        with pytest.raises(ValueError, match="decoder_layer_indices"):
            init_student(teacher_dir, StudentSettings(decoder_layer_indices=bad))


def test_shorten_window_rules(tiny_whisper_dir):
    model, processor = load_whisper(tiny_whisper_dir)
    same_model, same_proc = shorten_window(model, processor, 30)
    assert same_model is model and same_proc is processor
    with pytest.raises(ValueError, match="whole number"):
        shorten_window(model, processor, 7.5)
    model, processor = shorten_window(model, processor, 5.0)
    assert model.config.max_source_positions == 250 and processor.feature_extractor.n_samples == 80_000
    with pytest.raises(ValueError, match="only 250"):
        shorten_window(model, processor, 10)


def test_teacher_for_training_matches_student_window(teacher_dir, built):
    _, processor, _, _ = built
    teacher = teacher_for_training(teacher_dir, 10)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.config.max_source_positions == 500
    feats = processor.feature_extractor(_clip("noise"), sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt")
    with torch.no_grad():
        enc = teacher.get_encoder()(feats.input_features).last_hidden_state
    assert enc.shape == (1, 500, teacher.config.d_model)


def test_save_and_reload_round_trip(built, tmp_path):
    student, processor, _, _ = built
    student.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, proc = load_whisper(tmp_path)
    assert model.config.max_source_positions == 500 and model.config.decoder_layers == 2
    assert proc.feature_extractor.nb_max_frames == 1000 and proc.feature_extractor.n_samples == 160_000
    assert model.generation_config.alignment_heads == student.generation_config.alignment_heads
    for key, value in student.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    feats = proc.feature_extractor(_clip("noise"), sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=MAX_NEW_TOKENS)
    assert ids.shape[0] == 1 and 0 < ids.shape[1] <= MAX_NEW_TOKENS + 4


def test_label_logits_equal_the_full_forward_at_label_positions(built):
    """The label-only projection gives the same logits and the same gradients as the full forward."""
    student = built[0]
    torch.manual_seed(0)
    enc = torch.randn(3, student.config.max_source_positions, student.config.d_model)
    dec = torch.randint(0, 1000, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, :2] = False
    mask[2, 5:] = False
    student.train()
    full = student(encoder_outputs=(enc,), decoder_input_ids=dec).logits
    part = label_logits(student, enc, dec, mask)
    assert part.shape == (1, int(mask.sum()), student.config.vocab_size)
    assert torch.allclose(part[0], full[mask], atol=1e-5)
    weight = student.model.decoder.layer_norm.weight  # trainable whatever freeze_embeddings says
    g_full = torch.autograd.grad(full[mask].logsumexp(-1).sum(), weight)[0]
    g_part = torch.autograd.grad(label_logits(student, enc, dec, mask).logsumexp(-1).sum(), weight)[0]
    assert torch.allclose(g_full, g_part, atol=1e-4)


def test_freeze_embeddings_freezes_the_tied_output_layer_too(teacher_dir, built):
    student, _, report, teacher = built
    frozen, _, frozen_report = init_student(teacher_dir, StudentSettings(freeze_embeddings=True))
    emb = frozen.model.decoder.embed_tokens.weight
    assert not emb.requires_grad and frozen.proj_out.weight is emb  # tied: the output layer is frozen with it
    assert torch.equal(emb, teacher.model.decoder.embed_tokens.weight)
    assert all(p.requires_grad for n, p in frozen.model.decoder.named_parameters() if not n.startswith("embed_tokens"))
    unfrozen, _, unfrozen_report = init_student(teacher_dir, StudentSettings(freeze_embeddings=False))
    assert unfrozen.model.decoder.embed_tokens.weight.requires_grad
    assert unfrozen_report["student_trainable"] - frozen_report["student_trainable"] == emb.numel()
    assert frozen_report["student_params"] == unfrozen_report["student_params"] == report["student_params"]


def test_init_from_a_trained_student(teacher_dir, built, tmp_path):
    """train.student.init_from: layers, encoder identity, window and lineage come from the given student folder."""
    from pydantic import ValidationError

    from components.settings import TrainSettings
    from components.vocab import VOCAB_FILE

    teacher = built[3]
    source, processor, _ = init_student(teacher_dir, StudentSettings(decoder_layers=3, window_s=8))
    with torch.no_grad():  # "trained": every decoder layer moved away from the teacher's
        for layer in source.model.decoder.layers:
            layer.fc1.weight.add_(torch.randn_like(layer.fc1.weight))
    src = tmp_path / "run7"
    source.save_pretrained(src)
    processor.save_pretrained(src)

    cfg = StudentSettings(decoder_layers=2, window_s=6, init_from=src)
    student, proc, report = init_student(teacher_dir, cfg)
    assert report["decoder_layer_indices"] == [0, 2] and report["init_from"] == str(src)
    assert len(report["init_from_sha256"]) == 64 and report["encoder_is_teacher"] is True
    for s, t in ((0, 0), (1, 2)):
        assert torch.equal(student.model.decoder.layers[s].fc1.weight, source.model.decoder.layers[t].fc1.weight)
    assert not torch.equal(student.model.decoder.layers[1].fc1.weight, teacher.model.decoder.layers[3].fc1.weight)
    assert student.config.max_source_positions == 300 and proc.feature_extractor.chunk_length == 6
    assert _same_output(student, teacher) is False  # sanity: not the teacher's decoder

    with torch.no_grad():  # an unfrozen-encoder source: its encoder output is no longer the teacher's (no cache)
        source.model.encoder.layers[0].fc2.weight.mul_(1.01)
    source.save_pretrained(src)
    _, _, changed = init_student(teacher_dir, cfg)
    assert changed["encoder_is_teacher"] is False and changed["init_from_sha256"] != report["init_from_sha256"]

    with pytest.raises(ValueError, match="only 400"):  # the source's window (8 s) bounds the student's
        init_student(teacher_dir, StudentSettings(window_s=10, init_from=src))
    with pytest.raises(FileNotFoundError, match="train.student.init_from"):
        init_student(teacher_dir, StudentSettings(init_from=tmp_path / "missing"))
    (src / VOCAB_FILE).write_text("{}")
    with pytest.raises(ValueError, match="pruned vocabulary"):
        init_student(teacher_dir, cfg)
    with pytest.raises(ValidationError, match="init_from cannot be combined with train.askd.feature_weight"):
        TrainSettings(student={"init_from": str(src)}, askd={"feature_weight": 0.5})
    with pytest.raises(ValidationError, match="is train.out_dir"):
        TrainSettings(out_dir=src, student={"init_from": str(src / ".")})


def _same_output(student, teacher) -> bool:
    """Whether the two decoders give the same logits for one token on the same (zero) encoder states."""
    states = torch.zeros(1, 300, student.config.d_model)
    ids = torch.tensor([[teacher.generation_config.decoder_start_token_id]])
    with torch.no_grad():
        a = student(encoder_outputs=(states,), decoder_input_ids=ids).logits
        b = teacher(encoder_outputs=(states,), decoder_input_ids=ids).logits
    return bool(torch.allclose(a, b))
