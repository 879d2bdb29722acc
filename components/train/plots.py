"""The training curves as one PNG (``reports/train_curves.png``): what the step and evaluation logs hold, drawn.

Three panels over the optimiser step: the loss and its terms (CE, KL to the teacher, KL to the self-teacher);
the ASKD weights (alpha, beta, w_ce) with the self-teacher term's share of the loss; the validation WER of the
student against the teacher cut to the student's window. DVC draws the same CSVs (``dvc plots show``); this file
is what the Prefect UI shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.artifacts import atomic_file

TRAIN_PLOT = Path("reports/train_curves.png")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(step_log: list[dict[str, Any]], history: list[dict[str, Any]], path: Path = TRAIN_PLOT) -> Path:
    """Write the three-panel PNG to ``path`` (atomically) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "ce", "kl", "self_kd"):
        axes[0].plot(*_series(step_log, key), label=key, linewidth=1)
    axes[0].set_title("loss and its terms")
    for key in ("alpha", "beta", "w_ce", "self_kd_share"):
        axes[1].plot(*_series(step_log, key), label=key, linewidth=1.2 if key != "self_kd_share" else 0.8)
    axes[1].set_title("ASKD weights; self-teacher share of the loss")
    axes[2].plot(*_series(history, "val_wer"), marker="o", label="student")
    axes[2].plot(*_series(history, "teacher_val_wer"), linestyle="--", label="teacher (student's window)")
    axes[2].set_title("validation WER (%)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
