"""Training checkpoints: everything needed to resume bit-for-bit, written atomically and rotated.

A checkpoint holds the student's trainable weights, optimiser, LR scheduler, self-teacher state, the step
(which fixes the data position: batches are a pure function of seed and step), evaluation history and the
torch/numpy/python RNG states. ``run_dir`` is keyed by a hash of everything that shapes the run, so a
changed setting never resumes a stale run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_RE = re.compile(r"^step-(\d{7})\.pt$")


def run_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``step-NNNNNNN.pt`` atomically, then delete all but the newest ``keep``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"step-{step:07d}.pt"
    tmp = run_dir / f".{path.name}.tmp-{os.getpid()}"
    torch.save({**state, "step": step, "rng": rng_state()}, tmp)
    os.replace(tmp, path)
    for _, old in checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint (a corrupt newest one falls back to the previous)."""
    for _, path in reversed(checkpoints(run_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a torn file from a kill: use the previous one
            continue
    return None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform weight average (in float32, cast back to each tensor's dtype) of same-keyed state dicts."""
    if not states:
        raise ValueError("average_states needs at least one state")
    return {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}


def keep_top(top: list[dict[str, Any]], entry: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The ``n`` entries with the lowest ``wer`` (ties: the earlier step) after adding ``entry``."""
    return sorted([*top, entry], key=lambda e: (e["wer"], e["step"]))[:n]
