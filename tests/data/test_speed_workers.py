"""Speed timing in worker processes (components/speed_workers.py) on tiny random Whisper models and a CT2 export."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from components.export import load_form, make_export
from components.settings import EvalSettings
from components.speed import SAMPLE_RATE_HZ, measure_speed

KEYS = {"natural_b1", "natural_b2", "fixed_b1", "fixed_b2"}


@pytest.fixture(scope="module")
def speed_audios() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE_HZ))).astype(np.float32) for s in (1.0, 1.5, 2.0)]


@pytest.fixture(scope="module")
def speed_forms(tmp_path_factory, tiny_whisper_dir):
    pytest.importorskip("ctranslate2")
    exports = tmp_path_factory.mktemp("speed_exports")
    teacher = load_form(tiny_whisper_dir, "teacher")
    student = load_form(tiny_whisper_dir, "student")
    return [teacher, student, make_export(student, "ct2_int8", exports)]


def _cfg(**kw) -> EvalSettings:
    return EvalSettings(**{"max_new_tokens": 6, "speed_rounds": 2, "speed_batch_size": 2, **kw})


def test_each_form_is_timed_in_its_own_process_and_torch_never_shares_one_with_ctranslate2(speed_forms, speed_audios):
    speed = measure_speed(speed_forms, speed_audios, _cfg())  # the default: speed_isolation = form
    workers = speed["protocol"]["workers"]
    assert speed["protocol"]["isolation"] == "form"
    assert {k: v["forms"] for k, v in workers.items()} == {f.name: [f.name] for f in speed_forms}
    pids = [w["pid"] for w in workers.values()]
    assert len(set(pids)) == 3 and os.getpid() not in pids
    assert not workers["teacher"]["ctranslate2_loaded"] and not workers["student"]["ctranslate2_loaded"]
    assert workers["student_ct2_int8"]["ctranslate2_loaded"]
    assert all(w["torch_threads"] >= 1 for w in workers.values())
    assert set(speed["speedup"]) == {"student", "student_ct2_int8"}
    assert all(set(v) == KEYS for v in speed["speedup"].values())
    assert all(len(speed["forms"][f.name][k]["rounds_s"]) == 2 for f in speed_forms for k in KEYS)
    for key in ("fixed_b1", "fixed_b2"):  # the fixed protocol: every form decodes the teacher's token count
        assert len({speed["forms"][f.name][key]["tokens"] for f in speed_forms}) == 1


def test_runtime_isolation_groups_forms_and_decodes_the_same_tokens_as_in_process(speed_forms, speed_audios):
    by_runtime = measure_speed(speed_forms, speed_audios, _cfg(speed_isolation="runtime"))
    workers = by_runtime["protocol"]["workers"]
    assert {k: v["forms"] for k, v in workers.items()} == {"torch": ["teacher", "student"],
                                                           "ctranslate2": ["student_ct2_int8"]}
    assert not workers["torch"]["ctranslate2_loaded"]
    local = measure_speed(speed_forms, speed_audios, _cfg(), isolation="none")
    assert local["protocol"]["isolation"] == "none"
    assert list(local["protocol"]["workers"]) == ["calling process"]
    tokens = lambda s: {f: {k: v["tokens"] for k, v in per.items()} for f, per in s["forms"].items()}  # noqa: E731
    assert tokens(by_runtime) == tokens(local)  # greedy decoding is deterministic wherever it runs


def test_a_worker_that_cannot_load_its_form_is_a_clear_error(tmp_path, tiny_whisper_dir, speed_forms, speed_audios):
    copy = tmp_path / "gone"
    shutil.copytree(tiny_whisper_dir, copy)
    gone = load_form(copy, "gone")
    shutil.rmtree(copy)  # deleted after loading here: the worker cannot load it again
    with pytest.raises(RuntimeError, match=r"speed worker 'gone' failed:(.|\n)*gone"):
        measure_speed([speed_forms[0], gone], speed_audios, _cfg(speed_rounds=1))
    gone.source = None  # a form built in memory cannot be sent to a worker at all
    with pytest.raises(ValueError, match=r"\['gone'\] were not loaded from disk(.|\n)*speed_isolation=none"):
        measure_speed([speed_forms[0], gone], speed_audios, _cfg(speed_rounds=1))


def test_unknown_isolation_is_rejected_before_any_work(speed_forms, speed_audios):
    with pytest.raises(ValueError, match="speed isolation must be one of"):
        measure_speed(speed_forms, speed_audios, _cfg(), isolation="thread")
    with pytest.raises(Exception, match="speed_isolation"):
        EvalSettings(speed_isolation="thread")


def test_ct2_decode_threads_reach_the_export_and_its_worker(tmp_path, speed_forms, speed_audios):
    """evaluate.ct2_decode_threads: the CT2 form runs its decoder on that many threads, in the worker too."""
    student = speed_forms[1]
    split = make_export(student, "ct2_int8", tmp_path, ct2_decode_threads=1)
    assert split.info["ct2_threads"]["decoder"] == 1 and split.source["ct2_decode_threads"] == 1
    assert split.engine.decoder_model is not split.engine.model or split.engine.intra_threads == 1
    assert speed_forms[2].source["ct2_decode_threads"] == 0  # the default of load_form: the encoder's count
    cfg = _cfg(speed_rounds=1, speed_protocols=("natural",))
    tokens = lambda s: {k: v["tokens"] for k, v in s["forms"]["student_ct2_int8"].items()}  # noqa: E731
    assert tokens(measure_speed([speed_forms[0], split], speed_audios, cfg)) == tokens(
        measure_speed([speed_forms[0], speed_forms[2]], speed_audios, cfg))
