"""benchmarks/run_all.py --smoke on tiny random models: every script runs and writes measured, numeric results."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = ("label_throughput", "train_step", "speed", "decode_breakdown", "dvc_noop", "pipeline_e2e")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, tiny_whisper_dir, speech_clips):
    from benchmarks import run_all
    from tests.conftest import make_prepared_dataset

    root = tmp_path_factory.mktemp("bench")
    prepared = make_prepared_dataset(root / "data", speech_clips)
    results = root / "results"
    code = run_all.main(["--smoke", "--teacher", str(tiny_whisper_dir), "--student", str(tiny_whisper_dir),
                         "--prepared", str(prepared), "--labelled", str(root / "no-labels"),
                         "--speed-set", "train", "--label-split", "validation", "--results-dir", str(results)])
    return code, results


def test_smoke_run_writes_every_result_and_the_summary(smoke_results):
    code, results = smoke_results  # (no time limit here: speed lives in the benchmarks, not in tests)
    assert code == 0, (results / "SUMMARY.md").read_text()
    data = {}
    for name in BENCHMARKS:
        data[name] = json.loads((results / f"{name}.json").read_text())
        assert data[name]["benchmark"] == name
        assert data[name]["hardware"]["cpu_count"] >= 1
    # benchmarks/results/ in the checkout is not touched by a run pointed elsewhere
    assert json.loads((results / "run_all.json").read_text())["failed"] == {}

    label = data["label_throughput"]
    assert label["clips"] >= 1 and all(_positive(v) for v in label["clips_per_s"].values())
    assert set(label["speedup_vs_naive"]) == {"batched", "ctranslate2"}

    train = data["train_step"]
    step = train["seconds_per_step"]
    assert _positive(step["cached"]) and _positive(step["recompute"])
    assert train["speedup_cached_vs_recompute"] == pytest.approx(step["recompute"] / step["cached"], rel=0.01)
    assert train["teacher_kind"] == "given" and train["data"].startswith("synthetic")
    assert train["first_step_loss_abs_diff"] < 0.05 * train["first_step_loss"]["recompute"]  # fp16 cache only
    assert train["flops_per_step"]["recompute"] > train["flops_per_step"]["cached"] > 0  # the encoder really ran
    # only the teacher's output layer runs in the step with cached states
    assert train["flops_per_step"]["cached"] > train["flops_per_step"]["cached_states"] > 0
    assert train["speedup_cached_states_vs_recompute"] == pytest.approx(
        step["recompute"] / step["cached_states"], rel=0.01)
    assert train["meets_target"] is (train["speedup_cached_states_vs_recompute"] >= train["target_speedup"])
    assert abs(train["first_step_loss_states_minus_cached"]) < 1e-3 * train["first_step_loss"]["cached"]  # exact

    speed = data["speed"]
    rows = {row["form"] + "/" + row["versus"]: row for row in speed["speedup_table"]}
    assert set(rows) == {"student/teacher", "student_ct2_int8/teacher_ct2_int8", "student_ct2_int8/teacher",
                         "teacher_ct2_int8/teacher"}
    forms = speed["speed"]["forms"]
    for row in rows.values():
        for key in ("natural_b1", "natural_b2"):
            expected = forms[row["versus"]][key]["seconds"] / forms[row["form"]][key]["seconds"]
            assert row[key] == pytest.approx(expected, rel=0.01)

    breakdown = data["decode_breakdown"]
    parts = ("features_s", "encoder_s", "generate_s", "decoder_layers_s", "output_layer_s")
    models = breakdown["models"]
    for m in models.values():
        assert all(_positive(m[p]) for p in parts) and m["steps"] >= 1
        # the overhead is what generate pays beyond the encoder and the replayed decoder steps
        assert m["generate_overhead_s"] == pytest.approx(
            m["generate_s"] - m["encoder_s"] - m["decoder_layers_s"] - m["output_layer_s"], abs=1e-5)
        assert m["ms_per_step"]["output_layer"] == pytest.approx(1000 * m["output_layer_s"] / m["steps"], rel=0.01)
    t, s = models["teacher"], models["student"]
    assert breakdown["ratios"]["ratio_generate"] == pytest.approx(t["generate_s"] / s["generate_s"], rel=0.01)
    assert breakdown["ratios"]["ratio_encoder"] == pytest.approx(t["encoder_s"] / s["encoder_s"], rel=0.01)

    noop = data["dvc_noop"]
    assert noop["mode"] == "tmp_trivial_copy" and _positive(noop["min_s"]) and noop["min_s"] <= noop["median_s"]
    assert "register" in noop["stages"] or "gate" in noop["stages"]

    e2e = data["pipeline_e2e"]
    assert e2e["mode"] == "from_metrics" and e2e["peak_tree_rss_mib"] is None
    assert e2e["wall_s"] == pytest.approx(sum(e2e["per_stage"]["seconds"].values()), abs=0.05)

    summary = (results / "SUMMARY.md").read_text()
    assert "smoke" in summary and "| benchmark | figure | value | how |" in summary
    table = [line.split(" | ") for line in summary.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert {cells[0].lstrip("| ") for cells in table} == set(BENCHMARKS)
    for cells in table:
        value = cells[2]
        if value == "n/a":
            assert "not measured" in cells[3]
            continue
        assert math.isfinite(float(value.rstrip("x"))), cells


def test_tree_monitor_sees_a_grandchilds_memory(tmp_path):
    """The e2e memory monitor sums the whole tree: a grandchild holding ~120 MiB must show up."""
    from benchmarks.pipeline_e2e import run_monitored

    grandchild = "import time; b = bytearray(120 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    run = run_monitored([sys.executable, "-c", child], tmp_path, interval_s=0.05)
    assert run["returncode"] == 0
    assert run["max_processes_seen"] >= 2
    assert run["peak_tree_rss_mib"] >= 120, run
    assert run["max_single_process_rss_mib"] >= 120, run


def test_stage_seconds_reads_the_declared_metrics_files(tmp_path):
    from benchmarks.pipeline_e2e import stage_seconds

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: x, metrics: [metrics/a.json: {cache: false}]}\n"
        "  evaluate: {cmd: x, metrics: [metrics/eval.json: {cache: false}]}\n"
        "  c: {cmd: x}\n"
    )
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "a.json").write_text(json.dumps({"seconds": 1.5, "resumed_clips": 3}))
    (metrics / "eval.json").write_text(json.dumps({"seconds": 2.25}))
    got = stage_seconds(metrics, tmp_path / "dvc.yaml")
    assert got["seconds"] == {"a": 1.5, "evaluate": 2.25} and got["total_s"] == 3.75
    assert got["missing"] == ["c"] and "reused" in got["notes"]["a"]


def test_dvc_noop_refuses_the_real_repo_when_not_up_to_date(tmp_path):
    """--where repo must never start real stages: a repo whose stage has not run is refused."""
    env_cmd = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*env_cmd, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dvc_noop.py"), "--where", "repo", "--repo",
                           str(tmp_path), "--results-dir", str(tmp_path / "res")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "refusing to time dvc repro" in proc.stderr
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "res").exists()


def test_a_failing_benchmark_is_reported_and_fails_the_run(tmp_path):
    """No metrics to read: pipeline_e2e fails; run_all records it in SUMMARY.md and returns 1."""
    from benchmarks import run_all

    (tmp_path / "dvc.yaml").write_text("stages:\n  a: {cmd: x, metrics: [metrics/a.json: {cache: false}]}\n")
    results = tmp_path / "results"
    code = run_all.main(["--only", "pipeline_e2e", "--repo", str(tmp_path), "--results-dir", str(results)])
    assert code == 1
    assert "| pipeline_e2e | FAILED | – | SystemExit: no stage metrics" in (results / "SUMMARY.md").read_text()
    assert set(json.loads((results / "run_all.json").read_text())["failed"]) == {"pipeline_e2e"}
    assert not (results / "pipeline_e2e.json").exists()


def test_only_keeps_the_other_benchmarks_earlier_figures_marked(tmp_path):
    """`--only X` reruns X; SUMMARY.md still lists the others from their JSON, marked as not rerun with their date."""
    from benchmarks import run_all

    (tmp_path / "dvc.yaml").write_text("stages:\n  a: {cmd: x, metrics: [metrics/a.json: {cache: false}]}\n")
    results = tmp_path / "results"
    results.mkdir()
    earlier = {"hardware": {"date": "2026-01-02 03:04:05 UTC"}, "mode": "repo", "runs": 3, "min_s": 0.5,
               "median_s": 0.75}
    (results / "dvc_noop.json").write_text(json.dumps(earlier))
    (results / "speed.json").write_text("{not json")
    run_all.main(["--only", "pipeline_e2e", "--repo", str(tmp_path), "--results-dir", str(results)])
    text = (results / "SUMMARY.md").read_text()
    assert "| dvc_noop | no-op dvc repro, min (s) | 0.50 | mode repo, 3 runs; not rerun: from 2026-01-02 03:04:05 UTC |" in text
    assert "| pipeline_e2e | FAILED |" in text and "| speed |" not in text
    run_all.main(["--only", "dvc_noop,pipeline_e2e", "--repo", str(tmp_path), "--results-dir", str(results)])
    assert "not rerun" not in (results / "SUMMARY.md").read_text()  # dvc_noop was wanted: never the stale figure


def test_a_real_pipeline_run_goes_first_so_a_fresh_clone_has_models():
    from benchmarks import run_all

    assert run_all.run_order("run")[0] == "pipeline_e2e"
    assert sorted(run_all.run_order("run")) == sorted(run_all.ORDER)
    assert run_all.run_order("from-metrics") == run_all.ORDER  # reads the metrics the others' run left


def test_speed_of_an_untrained_student_shape_with_a_pruned_output_layer(tmp_path, teacher_dir, speech_clips):
    """speed.py --init-student cuts the student from the teacher; torch_vocab keeps the label texts' tokens."""
    from datasets import Dataset, DatasetDict

    from benchmarks import speed as speed_benchmark
    from tests.conftest import make_prepared_dataset

    prepared = make_prepared_dataset(tmp_path / "data", speech_clips)
    labels = tmp_path / "labelled"
    DatasetDict({"train": Dataset.from_dict({"teacher_text": [c.text for c in speech_clips]})}).save_to_disk(labels)
    result = speed_benchmark.main([
        "--teacher", str(teacher_dir), "--prepared", str(prepared), "--speed-set", "train", "--clips", "2",
        "--rounds", "1", "--batch-size", "1", "--max-new-tokens", "4", "--isolation", "none",
        "--init-student", "decoder_layers=2", "--init-student", "window_s=10",
        "--student-exports", "torch_vocab", "--teacher-exports", "", "--labels", str(labels),
        "--results-dir", str(tmp_path / "results")])
    assert result["init_student"]["decoder_layer_indices"] == [0, 3] and result["init_student"]["window_s"] == 10.0
    assert result["settings"]["speed_protocols"] == ("fixed",)  # untrained: only forced lengths mean anything
    speed = result["speed"]
    assert set(speed["forms"]) == {"teacher", "student", "student_torch_vocab"}
    assert set(speed["forms"]["student"]) == {"fixed_b1"}
    assert result["exports"]["student_torch_vocab"]["kept_tokens"] < 3000
    rows = {row["form"] + "/" + row["versus"]: row for row in result["speedup_table"]}
    assert set(rows) == {"student/teacher", "student_torch_vocab/teacher"}
    for row in rows.values():
        expected = speed["forms"]["teacher"]["fixed_b1"]["seconds"] / speed["forms"][row["form"]]["fixed_b1"]["seconds"]
        assert row["fixed_b1"] == pytest.approx(expected, rel=0.01)
    with pytest.raises(SystemExit, match="pruned-vocabulary exports need the label stage's output"):
        speed_benchmark.main(["--teacher", str(teacher_dir), "--prepared", str(prepared), "--speed-set", "train",
                              "--student-exports", "torch_vocab", "--labels", str(tmp_path / "none")])


def test_vocab_kept_set_re_decodes_only_the_clips_that_use_a_pruned_token(tmp_path, teacher_dir, speech_clips):
    """vocab_kept_set.py: WER per kept set; a clip whose full output uses only kept tokens decodes the same."""
    from datasets import Dataset, DatasetDict

    from benchmarks import vocab_kept_set
    from components.evaluate import load_prepared_sets
    from components.export import load_form
    from tests.conftest import make_prepared_dataset

    prepared = make_prepared_dataset(tmp_path / "data", speech_clips)
    labels = tmp_path / "labelled"
    DatasetDict({"train": Dataset.from_dict({"teacher_text": [speech_clips[0].text]})}).save_to_disk(labels)
    # a cut-off above every id the teacher emits for one train clip: that clip is unaffected, so the
    # same-output check really re-decodes it (a text's tokens alone may miss non-canonical pieces: " st"+"ump")
    train = load_prepared_sets(prepared, ["train"])[0][0]
    cover = max(load_form(teacher_dir).decode(train.audios[:1])[0][0]) + 1
    result = vocab_kept_set.main([
        "--model", str(teacher_dir), "--prepared", str(prepared), "--labels", str(labels), "--sets", "train",
        "--top", f"0,256,{cover}", "--results-dir", str(tmp_path / "results")])
    rows = {row["kept_set"]: row for row in result["rows"]}
    assert set(rows) == {"texts", "texts+top256", "top256", f"texts+top{cover}", f"top{cover}"}
    assert rows[f"top{cover}"]["sets"]["train"]["unaffected_clips_checked"] > 0
    assert rows["texts"]["kept_tokens"] == rows["texts+top256"]["kept_tokens"] > rows["top256"]["kept_tokens"]
    for row in rows.values():
        stats = row["sets"]["train"]
        assert stats["unaffected_clips_changed"] == 0
        if stats["clips_with_pruned_tokens"] == 0:
            assert stats["wer_pruned"] == stats["wer_full"]
    bytes_only = rows["top256"]["sets"]["train"]
    assert bytes_only["clips_with_pruned_tokens"] == bytes_only["clips"]  # every transcript uses merged tokens
    assert bytes_only["unaffected_clips_checked"] == 0
    assert (tmp_path / "results" / "vocab_kept_set.json").is_file()
