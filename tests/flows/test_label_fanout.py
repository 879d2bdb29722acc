"""Label fan-out: shards labelled by 2 worker processes (Prefect tasks), merged by the stage == a sequential run."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import yaml

from tests.flows.conftest import REPO, task_runs

LOOSE = {"wer_threshold_percent": 1e9, "max_repeated_ngram_fraction": 1.0, "max_tokens_per_s": 1e9}


def _params(root: Path, model_dir: Path, prepared: Path) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["teacher"]["out_dir"] = str(model_dir)
    params["prepare"]["out_dir"] = str(prepared)
    params["label"].update({"out_dir": str(root / "labelled"), "work_dir": str(root / "work"),
                            "shard_size": 2, "batch_size": 2, "max_new_tokens": 16, **LOOSE})
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _snapshot(out: Path) -> tuple[list[dict[str, str]], dict[str, list]]:
    with (out / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ds = datasets.load_from_disk(str(out))
    cols = ["id", "teacher_text", "teacher_tokens", "label_status"]
    return rows, {s: ds[s].select_columns(cols).to_list() for s in ds}


def test_fan_out_over_two_processes_equals_sequential(prefect_api, tmp_path, monkeypatch, tiny_whisper_dir,
                                                      speech_clips):
    from prefect.task_runners import ThreadPoolTaskRunner

    from components.label import plan_shards, pseudo_label
    from components.settings import load_settings
    from flows.label_fanout import assign_shards, label_fan_out
    from tests.conftest import make_prepared_dataset

    prepared = make_prepared_dataset(tmp_path / "data", speech_clips, copies=2)  # 12 clips: 8 train, 4 validation

    sequential = tmp_path / "sequential"
    sequential.mkdir()
    monkeypatch.chdir(sequential)
    cfg = load_settings(_params(sequential, tiny_whisper_dir, prepared))
    seq_metrics = pseudo_label(cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir)
    assert seq_metrics["labelled_this_run"] == 12

    fanned = tmp_path / "fanned"
    fanned.mkdir()
    monkeypatch.chdir(fanned)
    cfg = load_settings(_params(fanned, tiny_whisper_dir, prepared))
    plan = plan_shards(cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir)
    assert plan["shards"] == {"train": 4, "validation": 2} and plan["done"] == {"train": [], "validation": []}
    jobs = assign_shards(plan, 2)
    assert jobs == [{"train": [0, 2], "validation": [0]}, {"train": [1, 3], "validation": [1]}]

    state = label_fan_out.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(
        str(fanned), 2, 1, return_state=True)
    result = state.result()
    assert result["workers"] == 2 and result["labelled_this_run"] == 12
    names = sorted(t.name for t in task_runs(state.state_details.flow_run_id))
    assert names[0].startswith("label-plan") and names[1:] == ["label-shards-0", "label-shards-1"]
    # every shard is on disk before the stage runs; the stage (pseudo_label) labels nothing and merges
    assert len(list((fanned / "work").rglob("shard-*.jsonl"))) == 6
    merged = pseudo_label(cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir)
    assert merged["labelled_this_run"] == 0 and merged["resumed_clips"] == 12
    assert merged["work_key"] == seq_metrics["work_key"]
    assert _snapshot(fanned / "labelled") == _snapshot(sequential / "labelled")
    for key in ("splits", "kept"):
        assert merged[key] == seq_metrics[key]

    # a second fan-out finds nothing pending and starts no worker
    assert assign_shards(plan_shards(cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir), 2) == []

