"""The artifact builders on the checkout's own metrics files (read only) and on edge cases."""

from __future__ import annotations

import json

from flows import artifacts
from tests.flows.conftest import REPO


def _metrics(name: str) -> dict:
    return json.loads((REPO / "metrics" / f"{name}.json").read_text())


def test_tables_from_the_checkouts_metrics():
    prepare = {r["split"]: r for r in artifacts.prepare_rows(_metrics("prepare"))}
    assert prepare["train"]["clips"] == _metrics("prepare")["split_sizes"]["train"]
    label = {r["split"]: r for r in artifacts.label_rows(_metrics("label"))}
    assert label["train"]["kept"] == _metrics("label")["splits"]["train"]["kept"]
    evaluation = _metrics("eval")
    rows = artifacts.eval_rows(evaluation)
    assert len(rows) == sum(len(f["sets"]) for f in evaluation["forms"].values())
    student_test = next(r for r in rows if r["form"] == "student" and r["set"] == "test")
    assert student_test["wer"] == round(evaluation["forms"]["student"]["sets"]["test"]["wer"], 2)
    speed = artifacts.speed_rows(evaluation)
    assert any(r["speedup"] for r in speed) and all(r["seconds"] for r in speed)
    gate = artifacts.gate_markdown(_metrics("gate"))
    assert ("PASSED" in gate) == _metrics("gate")["passed"] and gate.count("\n- ") == len(_metrics("gate")["checks"])
    plots = artifacts.plots_markdown(REPO / "reports")
    assert plots.count("data:image/png;base64,") == 2
    assert artifacts.METRICS_FILES["evaluate"] == "eval"  # the evaluate stage writes metrics/eval.json


def test_builders_tolerate_missing_sections(tmp_path):
    assert artifacts.eval_rows({}) == [] and artifacts.speed_rows({"forms": {}}) == []
    assert artifacts.label_rows({"splits": {}}) == []
    assert artifacts.plots_markdown(tmp_path) is None
    md = artifacts.register_markdown({"version": 3, "version_key": "r/m/versions/3", "files": ["a"]})
    assert md.index("version_key") < md.index("| version |") and "files" not in md


def test_train_table_and_curves(tmp_path):
    from components.train.plots import plot_training

    steps = [{"step": i, "loss": 3 - i / 10, "ce": 2.0, "kl": 1.0, "self_kd": 0.1 * (i > 5), "alpha": 0.9,
              "beta": 0.2 * (i > 5), "w_ce": 0.1, "self_kd_share": 0.05 * (i > 5)} for i in range(1, 11)]
    evals = [{"step": 5, "val_wer": 12.5, "teacher_val_wer": 8.0}, {"step": 10, "val_wer": 10.25, "teacher_val_wer": 8.0}]
    plot_training(steps, evals, tmp_path / "reports" / "train_curves.png")
    curves = artifacts.plots_markdown(tmp_path / "reports", names=artifacts.TRAIN_PLOTS, title="Training curves")
    assert curves.startswith("# Training curves") and curves.count("data:image/png;base64,") == 1
    metrics = {"best_step": 10, "best_val_wer_percent": 10.25, "teacher_val_wer_percent": 8.0, "averaged_steps": [10],
               "final_val_wer_percent": 10.25, "stage_b": {"steps": 5, "mean_self_kd_share": 0.05}}
    rows = artifacts.train_rows(metrics, evals)
    assert [r["val_wer"] for r in rows[:2]] == [12.5, 10.25] and rows[2]["step"] == "best @ 10"
    assert rows[-1]["val_wer"] == 0.05 and "stage B" in rows[-1]["step"]
    assert artifacts.train_rows({}, []) == [rows[2] | {"step": "best @ None", "val_wer": None, "teacher_val_wer": None},
                                            {"step": "saved (steps None)", "val_wer": None, "teacher_val_wer": None}]
