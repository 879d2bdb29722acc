"""Shared bits of the benchmarks: hardware/protocol description and JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def hardware() -> dict[str, Any]:
    """The evaluation stage's hardware description plus the torch version."""
    import torch

    from components.speed import hardware as eval_hardware

    return {**eval_hardware(), "torch": torch.__version__}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "hardware": hardware(), **data}, indent=2) + "\n")
    return path
