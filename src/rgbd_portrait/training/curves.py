"""Training curves: one PNG of every stage's loss and validation metrics, read from a run's logs.

    from rgbd_portrait.training.curves import plot_training_curves
    plot_training_curves("runs/default", "runs/default/training_curves.png")

Each stage is a column: the training loss on top (its logged window means, with a moving average over the
logged rows) and the validation metrics under it. The trainer writes `<run>/training_curves.png` at the end
of every stage.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.training.metrics_log import read_log_rows

# The stage folders a run can hold, in training order (see `trainer.RunFolders`).
STAGE_ORDER = ("codec", "joint", "motion")
CURVES_NAME = "training_curves.png"
SMOOTHING_ROWS = 10


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving mean; near the ends it averages the rows that exist, so the curve neither lags nor shrinks."""
    kernel = np.ones(max(1, min(width, len(values))))
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones_like(values), kernel, mode="same")


def logged_stages(run_dir: str | os.PathLike) -> list[str]:
    """The stages of `run_dir` that have a training log, in training order."""
    run_dir = Path(run_dir)
    return [stage for stage in STAGE_ORDER if (run_dir / stage / "logs" / "train.jsonl").is_file()]


def plot_training_curves(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the curves of every logged stage of `run_dir` to the PNG `out` (atomically); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    stages = logged_stages(run_dir)
    if not stages:
        raise FileNotFoundError(f"{run_dir}: no stage has a training log (<stage>/logs/train.jsonl)")
    figure, axes = plt.subplots(2, len(stages), figsize=(4.6 * len(stages), 6.4), squeeze=False)
    for column, stage in enumerate(stages):
        logs = run_dir / stage / "logs"
        train = read_log_rows(logs / "train.jsonl")
        steps = np.array([row["step"] for row in train])
        loss = np.array([row["loss"] for row in train], dtype=float)
        top = axes[0, column]
        top.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
        top.plot(steps, _moving_average(loss, SMOOTHING_ROWS), color="tab:blue", linewidth=1.6, label="moving mean")
        top.set_yscale("log")
        top.set_title(f"{stage} stage: training loss")
        top.set_xlabel("step")
        top.legend(fontsize=8)
        top.grid(alpha=0.3)

        bottom = axes[1, column]
        validation = read_log_rows(logs / "validation.jsonl")
        names = [key for key in dict.fromkeys(key for row in validation for key in row) if key != "step"]
        # PSNR (dB, higher is better) gets its own axis on the right; errors and losses share the left one.
        decibels = bottom.twinx() if any("psnr" in name for name in names) else None
        for index, name in enumerate(names):
            points = [(row["step"], row[name]) for row in validation if isinstance(row.get(name), int | float)]
            if points:
                xs, ys = zip(*points)
                axis = decibels if "psnr" in name else bottom
                axis.plot(xs, ys, marker="o", markersize=3, color=f"C{index}", label=name)
        bottom.set_title(f"{stage} stage: validation")
        bottom.set_xlabel("step")
        bottom.grid(alpha=0.3)
        if decibels is not None:
            decibels.set_ylabel("dB")
        if names:
            handles = [line for axis in (bottom, decibels) if axis is not None for line in axis.get_lines()]
            bottom.legend(handles=handles, fontsize=7)
        else:
            bottom.text(0.5, 0.5, "no validation rows", ha="center", va="center", transform=bottom.transAxes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    out = Path(out)
    write_bytes_atomically(out, buffer.getvalue())
    return out
