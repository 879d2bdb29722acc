"""Stage `label`: the teacher pseudo-labels the prepared audio (``pseudo_label``).

* Batched, length-sorted generation (shortest clips first, so a batch pads little).
* ``engine`` picks the decoder: transformers ``generate`` or CTranslate2 (:mod:`components.ct2_runtime`: the
  teacher is converted once into ``data/interim/ct2``; at float32 it gives the same greedy tokens, faster).
* Resumable: clips are labelled in shards of ``shard_size``; each finished shard is one JSONL file written
  atomically under ``work_dir/<key>/``. A killed run, started again, skips finished shards, so no clip is lost
  or labelled twice. ``<key>`` hashes the teacher weights, the decode options and the prepared data, so a
  change of any of them starts afresh, while a change of the *filter* thresholds re-filters without relabelling.
* Filtering (WER vs reference, hallucination guard) happens at merge time: see ``components.label_filter``.

Output: ``out_dir`` holds the kept clips as a ``datasets.DatasetDict`` (new columns ``teacher_text``,
``teacher_tokens``, ``wer_vs_reference``) and ``labels.csv`` with every clip's label and decision;
``metrics/label.json`` holds the counts, the teacher's WER and the decode protocol.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from components.artifacts import atomic_dir, model_files_sha256, sha256_files, write_metrics
from components.audio import dataset_audio_arrays
from components.label_filter import DROP_REASONS, decide
from components.settings import LabelSettings
from components.text import wer
from components.whisper_io import generate_tokens, load_whisper

SHARD_PATTERN = "shard-{:05d}.jsonl"


def work_key(cfg: LabelSettings, teacher_dir: Path, prepared_dir: Path) -> str:
    """Identity of a labelling job: teacher weights + decode options + prepared data (not filter params)."""
    data_state = list(prepared_dir.rglob("state.json")) + list(prepared_dir.rglob("dataset_info.json"))
    decode = {
        k: getattr(cfg, k)
        for k in ("num_beams", "language", "task", "return_timestamps", "max_new_tokens", "shard_size", "max_clips")
    }
    decode["engine"] = cfg.engine
    if cfg.engine == "ctranslate2":
        decode["ct2_compute_type"] = cfg.ct2_compute_type
    blob = json.dumps(
        {"teacher": model_files_sha256(teacher_dir), "data": sha256_files(data_state), "decode": decode}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _shard_plan(ds, cfg: LabelSettings) -> list[list[int]]:
    """Row indices of the split grouped into shards, in length-sorted order (deterministic)."""
    ids, durations = list(ds["id"]), list(ds["duration_s"])  # column reads (once: a Column item costs ~150 us)
    order = sorted(range(len(ds)), key=lambda i: (durations[i], ids[i]))
    if cfg.max_clips is not None:
        keep = set(sorted(range(len(ds)), key=lambda i: ids[i])[: cfg.max_clips])
        order = [i for i in order if i in keep]
    return [order[i : i + cfg.shard_size] for i in range(0, len(order), cfg.shard_size)]


def _write_shard(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_shards(split_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(split_dir.glob("shard-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            out[rec["id"]] = rec
    return out


def _label_split(
    ds, plan: list[list[int]], cfg: LabelSettings, split_dir: Path, decode: Callable, progress,
    only: set[int] | None = None,
) -> int:
    """Label every unfinished shard of one split (or only the shard indices in ``only``); returns clips labelled now."""
    split_dir.mkdir(parents=True, exist_ok=True)
    done_now = 0
    for shard_idx, rows in enumerate(plan):
        if only is not None and shard_idx not in only:
            continue
        path = split_dir / SHARD_PATTERN.format(shard_idx)
        if path.exists():
            progress.update(len(rows))
            continue
        shard = ds.select(rows)
        shard_ids = shard["id"]
        audios = dataset_audio_arrays(shard)
        records = []
        for start in range(0, len(rows), cfg.batch_size):
            batch = audios[start : start + cfg.batch_size]
            outputs = decode(
                batch,
                num_beams=cfg.num_beams,
                max_new_tokens=cfg.max_new_tokens,
                language=cfg.language,
                task=cfg.task,
                return_timestamps=cfg.return_timestamps,
            )
            for j, (tokens, text) in enumerate(outputs):
                records.append({"id": shard_ids[start + j], "teacher_text": text, "teacher_tokens": tokens})
            progress.update(len(batch))
        _write_shard(path, records)
        done_now += len(rows)
    return done_now


def _load_decoder(cfg: LabelSettings, teacher_dir: Path) -> tuple[Callable, dict[str, Any]]:
    """``decode(audios, **options) -> [(tokens, text)]`` for ``cfg.engine`` and its protocol entries."""
    if cfg.engine == "ctranslate2":
        from components.ct2_export import ctranslate2_version
        from components.ct2_runtime import Ct2Whisper

        engine = Ct2Whisper.from_transformers(teacher_dir, compute_type=cfg.ct2_compute_type)
        return engine.generate_tokens, {
            "engine": "ctranslate2",
            "ctranslate2": ctranslate2_version(),
            "ct2_compute_type": cfg.ct2_compute_type,
            "ct2_encoder": engine.encoder,
            "ct2_intra_threads": engine.intra_threads,
            "ct2_model": str(engine.ct2_dir),
            "multilingual": engine.multilingual,
            "device": "cpu",
        }
    model, processor = load_whisper(teacher_dir)
    return partial(generate_tokens, model, processor), {
        "engine": "transformers",
        "multilingual": bool(getattr(model.generation_config, "is_multilingual", False)),
        "device": str(next(model.parameters()).device),
    }


def _load_prepared(cfg: LabelSettings, prepared_dir: Path):
    """The prepared DatasetDict, with a clear error when it or one of ``cfg.splits`` is missing."""
    import datasets

    if not (prepared_dir / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"no prepared dataset at '{prepared_dir}' (run the prepare stage first)")
    prepared = datasets.load_from_disk(str(prepared_dir))
    missing = [s for s in cfg.splits if s not in prepared]
    if missing:
        raise ValueError(f"label.splits {missing} not in the prepared dataset (has: {', '.join(prepared)})")
    return prepared


def pseudo_label(cfg: LabelSettings, teacher_dir: Path, prepared_dir: Path) -> dict[str, Any]:
    """Label ``cfg.splits`` of the prepared dataset with the teacher; write the filtered dataset + metrics."""
    import datasets
    import torch
    from tqdm import tqdm

    teacher_dir, prepared_dir = Path(teacher_dir), Path(prepared_dir)
    prepared = _load_prepared(cfg, prepared_dir)
    decode, engine_protocol = _load_decoder(cfg, teacher_dir)

    key = work_key(cfg, teacher_dir, prepared_dir)
    work = Path(cfg.work_dir) / key
    plans = {s: _shard_plan(prepared[s], cfg) for s in cfg.splits}
    total = sum(len(r) for p in plans.values() for r in p)
    started = time.perf_counter()
    labelled_now = 0
    with tqdm(total=total, desc="label", unit="clip", dynamic_ncols=True) as progress:
        for split in cfg.splits:
            labelled_now += _label_split(prepared[split], plans[split], cfg, work / split, decode, progress)
    seconds = time.perf_counter() - started

    result = datasets.DatasetDict()
    rows_csv: list[dict[str, Any]] = []
    per_split: dict[str, Any] = {}
    for split in cfg.splits:
        ds = prepared[split]
        all_ids = list(ds["id"])
        labelled_ids = {all_ids[i] for shard in plans[split] for i in shard}
        labels = _read_shards(work / split)
        texts, tokens, wers, statuses = [], [], [], []
        refs_for_wer, hyps_for_wer = [], []
        for row in ds.select_columns(["id", "text", "has_text", "duration_s"]):
            rec = labels.get(row["id"]) if row["id"] in labelled_ids else None
            if rec is None:
                texts.append("")
                tokens.append([])
                wers.append(float("nan"))
                statuses.append("not_labelled")
                continue
            reference = row["text"] if row["has_text"] else None
            decision = decide(
                reference,
                rec["teacher_text"],
                len(rec["teacher_tokens"]),
                row["duration_s"],
                wer_threshold_percent=cfg.wer_threshold_percent,
                max_repeated_ngram_fraction=cfg.max_repeated_ngram_fraction,
                max_tokens_per_s=cfg.max_tokens_per_s,
            )
            if reference is not None:
                refs_for_wer.append(reference)
                hyps_for_wer.append(rec["teacher_text"])
            texts.append(rec["teacher_text"])
            tokens.append(rec["teacher_tokens"])
            wers.append(decision.wer_percent if decision.wer_percent is not None else float("nan"))
            statuses.append(decision.reason)
            rows_csv.append(
                {
                    "id": row["id"],
                    "split": split,
                    "teacher_text": rec["teacher_text"],
                    "wer_vs_reference": "" if decision.wer_percent is None else f"{decision.wer_percent:.2f}",
                    "status": decision.reason,
                }
            )
        ds = ds.add_column("teacher_text", texts).add_column("teacher_tokens", tokens)
        ds = ds.add_column("wer_vs_reference", wers).add_column("label_status", statuses)
        kept = ds.filter(lambda s: s.startswith("kept"), input_columns="label_status", keep_in_memory=True)
        result[split] = kept
        counts = Counter(statuses)
        per_split[split] = {
            "clips": len(ds),
            "labelled": len(labelled_ids),
            "kept": len(kept),
            "kept_audio_only": counts.get("kept_audio_only", 0),
            "dropped_by_reason": {r: counts.get(r, 0) for r in DROP_REASONS},
            "teacher_wer_percent": round(wer(refs_for_wer, hyps_for_wer), 2) if refs_for_wer else None,
            "hours_kept": round(sum(kept["duration_s"]) / 3600, 4),
        }

    out_dir = Path(cfg.out_dir)
    with atomic_dir(out_dir) as tmp:
        result.save_to_disk(str(tmp))
        with (tmp / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", "split", "teacher_text", "wer_vs_reference", "status"])
            writer.writeheader()
            writer.writerows(rows_csv)

    metrics = {
        "splits": per_split,
        "kept": sum(v["kept"] for v in per_split.values()),
        "labelled_this_run": labelled_now,
        "resumed_clips": total - labelled_now,
        "seconds": round(seconds, 2),
        "clips_per_s": round(labelled_now / seconds, 3) if labelled_now and seconds > 0 else None,
        "work_key": key,
        "protocol": {
            "teacher": str(teacher_dir),
            "batch_size": cfg.batch_size,
            "num_beams": cfg.num_beams,
            "language": cfg.language,
            "task": cfg.task,
            "return_timestamps": cfg.return_timestamps,
            "max_new_tokens": cfg.max_new_tokens,
            "length_sorted": True,
            "normaliser": "transformers EnglishTextNormalizer (Whisper)",
            "filter": {
                "wer_threshold_percent": cfg.wer_threshold_percent,
                "max_repeated_ngram_fraction": cfg.max_repeated_ngram_fraction,
                "max_tokens_per_s": cfg.max_tokens_per_s,
            },
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            **engine_protocol,
        },
    }
    write_metrics("label", metrics)
    if metrics["kept"] == 0:
        raise ValueError(f"the label stage kept no clips (see {out_dir / 'labels.csv'})")
    return metrics


# ---------------------------------------------------------------------------------------------
# fan-out: label disjoint shard sets in separate processes, then `pseudo_label` merges (flows/label_fanout.py)


def plan_shards(cfg: LabelSettings, teacher_dir: Path, prepared_dir: Path) -> dict[str, Any]:
    """The shard plan ``pseudo_label`` follows: ``{"work_dir", "key", "shards": {split: count}, "done": {split: [i]}}``.

    Also converts the teacher for the CTranslate2 engine once (``ensure_ct2`` is not safe against two processes
    converting at the same moment), so workers started afterwards only load it.
    """
    teacher_dir, prepared_dir = Path(teacher_dir), Path(prepared_dir)
    prepared = _load_prepared(cfg, prepared_dir)
    if cfg.engine == "ctranslate2":
        from components.ct2_export import ensure_ct2

        ensure_ct2(teacher_dir, cfg.ct2_compute_type)
    key = work_key(cfg, teacher_dir, prepared_dir)
    work = Path(cfg.work_dir) / key
    shards = {s: len(_shard_plan(prepared[s], cfg)) for s in cfg.splits}
    done = {
        s: [i for i in range(n) if (work / s / SHARD_PATTERN.format(i)).exists()] for s, n in shards.items()
    }
    return {"work_dir": str(work), "key": key, "shards": shards, "done": done}


def label_shards(
    cfg: LabelSettings, teacher_dir: Path, prepared_dir: Path, shards: dict[str, list[int]]
) -> dict[str, Any]:
    """Label only ``shards`` (split -> shard indices of :func:`plan_shards`) into ``work_dir/<key>/``.

    Writes the same atomic shard files ``pseudo_label`` writes, so a later ``pseudo_label`` (the DVC stage) finds
    them finished and only merges and filters: the result equals a sequential run. Finished shards are skipped.
    """
    import datasets
    from tqdm import tqdm

    teacher_dir, prepared_dir = Path(teacher_dir), Path(prepared_dir)
    prepared = datasets.load_from_disk(str(prepared_dir))
    unknown = [s for s in shards if s not in cfg.splits or s not in prepared]
    if unknown:
        raise ValueError(f"splits {unknown} are not labelled by this configuration (label.splits: {list(cfg.splits)})")
    decode, _ = _load_decoder(cfg, teacher_dir)
    work = Path(cfg.work_dir) / work_key(cfg, teacher_dir, prepared_dir)
    started = time.perf_counter()
    labelled_now = 0
    for split, indices in shards.items():
        plan = _shard_plan(prepared[split], cfg)
        bad = [i for i in indices if not 0 <= i < len(plan)]
        if bad:
            raise ValueError(f"split {split!r} has {len(plan)} shards; no shard {bad}")
        with tqdm(total=sum(len(plan[i]) for i in indices), desc=f"label {split}", unit="clip") as progress:
            labelled_now += _label_split(prepared[split], plan, cfg, work / split, decode, progress, set(indices))
    return {"labelled_this_run": labelled_now, "seconds": round(time.perf_counter() - started, 2),
            "shards": {s: sorted(i) for s, i in shards.items()}}
