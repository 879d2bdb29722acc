"""benchmarks/ablation.py: the command of each run and the per-recipe summary (the training itself is the train
stage, tested in tests/data/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import ablation
from components.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_each_run_trains_with_its_recipe_seed_and_own_folders(tmp_path):
    cfg = load_settings(REPO / "params.yaml")
    cmd = ablation.train_command("askd_no_stage_b", 1, tmp_path / "run", ["profile=full"], cfg)
    sets = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    assert cmd[-2:] == ["stage", "train"] and sets[0] == "profile=full"
    assert {"train.askd.self_teacher=none", "train.askd.self_kd_weight=0.0", "train.seed=1",
            f"train.out_dir={tmp_path / 'run' / 'student'}"} <= set(sets)
    assert f"label.out_dir={Path(cfg.label.out_dir).resolve()}" in sets  # absolute: the run works in its own folder
    for recipe, overrides in ablation.RECIPES.items():  # every recipe is a valid configuration
        load_settings(REPO / "params.yaml", overrides)


def test_summary_gives_mean_spread_and_delta_per_recipe_form_and_set():
    wer = {"teacher": {"test": 8.0, "test_real": 12.0},
           "askd-s0": {"test": 9.0, "test_real": 15.0}, "askd-s1": {"test": 10.0, "test_real": 14.0},
           "askd-s0_ct2_int8": {"test": 9.5, "test_real": 15.5}, "askd-s1_ct2_int8": {"test": 9.5, "test_real": 16.5}}
    table = ablation.summarise(wer, ["askd"], [0, 1])
    cell = table["askd"]["fp32"]["test"]
    assert cell == {"mean": 9.5, "min": 9.0, "max": 10.0, "n": 2, "delta_vs_teacher": 1.5}
    assert table["askd"]["ct2_int8"]["test_real"]["delta_vs_teacher"] == pytest.approx(4.0)


def test_unknown_recipe_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--recipes", "askd,nope"])
    assert "unknown recipe" in capsys.readouterr().err
