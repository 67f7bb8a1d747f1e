"""Collecting per-image metrics into data-set means, and writing them as a Markdown table and as JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rgbd_portrait.files import write_bytes_atomically

# Column headings for the keys that `evaluation.metrics` returns; ↑/↓ say which way is better.
METRIC_LABELS = {
    "abs_rel": "AbsRel ↓",
    "rmse": "RMSE ↓",
    "delta1": "δ<1.25 ↑",
    "delta2": "δ<1.25² ↑",
    "delta3": "δ<1.25³ ↑",
    "normal_mean_deg": "normal mean° ↓",
    "normal_median_deg": "normal median° ↓",
    "normal_pct_11.25": "normal <11.25° % ↑",
    "normal_pct_22.5": "normal <22.5° % ↑",
    "normal_pct_30": "normal <30° % ↑",
    "psnr": "PSNR dB ↑",
    "ssim": "SSIM ↑",
    "mae": "MAE ↓",
    "landmark_spearman": "Spearman at landmarks ↑",
}


class MetricAccumulator:
    """Per-image metric values gathered batch by batch; `means()` averages each over all images seen."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = {}

    def update(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: each value holds one number per image (any shape, e.g. from `depth_metrics`)."""
        for name, values in metrics.items():
            self._values.setdefault(name, []).append(values.detach().reshape(-1).to("cpu", torch.float64))

    def counts(self) -> dict[str, int]:
        return {name: sum(len(batch) for batch in batches) for name, batches in self._values.items()}

    def means(self) -> dict[str, float]:
        return {name: torch.cat(batches).mean().item() for name, batches in self._values.items()}


def _format_cell(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_markdown_table(
    rows: Mapping[str, Mapping[str, Any]],
    *,
    row_heading: str = "method",
    digits: int = 4,
    labels: Mapping[str, str] | None = None,
) -> str:
    """A Markdown table with one row per entry of `rows` (e.g. model, baselines) and one column per metric.

    Columns appear in the order first seen; metric keys get readable headings (`METRIC_LABELS`, and
    `labels` for other keys), a cell a row lacks shows "–". Floats are written with `digits` decimals.
    """
    headings = {**METRIC_LABELS, **(labels or {})}
    columns: list[str] = []
    for metrics in rows.values():
        columns.extend(name for name in metrics if name not in columns)
    lines = [
        "| " + " | ".join([row_heading, *(headings.get(name, name) for name in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row_name, metrics in rows.items():
        cells = [_format_cell(metrics.get(name), digits) for name in columns]
        lines.append("| " + " | ".join([row_name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """Nested mappings/sequences with non-finite floats (the PSNR of identical images) turned into null."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_to_json(results: Mapping[str, Any]) -> str:
    """Strict JSON text of nested results; non-finite numbers are written as null."""
    return json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write `results_to_json(results)` to `path` atomically."""
    return write_bytes_atomically(path, results_to_json(results).encode())
