"""What the real-data evaluation sections share (`evaluation.real_data` runs them): row names and headings,
face-mesh landmarks and reading depth at them, taking people in turn under a limit, and contact sheets."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rgbd_portrait.evaluation.results import format_markdown_table
from rgbd_portrait.evaluation.runner import EXTRA_LABELS

BASELINE_MODEL = "baseline model"
RADIAL = "radial (distance from the face centre)"
# An order of fewer depths says little about a face's shape; captures with fewer valid landmarks are not scored.
MIN_LANDMARKS = 20
SHEET_PEOPLE = 8
# Headings of the keys the real-data sections add to `results.METRIC_LABELS` and the runner's.
REAL_LABELS = EXTRA_LABELS | {
    "landmarks": "landmarks / image",
    "rgb_psnr": "RGB PSNR dB ↑",
    "rgb_ssim": "RGB SSIM ↑",
    "depth_psnr": "depth PSNR dB ↑",
    "pairs": "pairs",
}

Item = TypeVar("Item")
# An RGB uint8 image (H, W, 3) → face-mesh landmarks (478, 3) of its largest face, or None without a face.
LandmarkFinder = Callable[[np.ndarray], "np.ndarray | None"]


class FaceMeshLandmarks:
    """MediaPipe's 478 face-mesh landmarks of the largest face, found as `rgbd-portrait prepare` finds them.

    x, y are image pixels (pixel centres at integers), z is in pixels relative to the head centre, smaller =
    nearer. The face finder samples the face's region at 256 px itself, so small images need no upscaling.
    MediaPipe (the `prepare` extra) is loaded on the first call.
    """

    def __init__(self) -> None:
        self._finder = None

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if self._finder is None:
            from rgbd_portrait.data.prepare.faces import FaceFinder

            self._finder = FaceFinder()
        faces = self._finder.find(np.ascontiguousarray(image))
        return faces[0].landmarks if faces else None


def values_at_landmarks(maps: torch.Tensor, landmarks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (..., H, W) at the pixels nearest to landmarks (N, 2 or 3), as (..., N), and which landmarks lie
    inside the image (N,) bool; landmarks outside read 0."""
    height, width = maps.shape[-2:]
    points = torch.as_tensor(np.asarray(landmarks, dtype=np.float64)[:, :2])
    columns, rows = points.round().long().unbind(-1)
    inside = (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    values = maps[..., rows.clamp(0, height - 1), columns.clamp(0, width - 1)]
    return torch.where(inside, values, 0), inside


def landmarks_on(mask: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """Which landmarks (N, 2 or 3) fall on a pixel of `mask` (H, W), (N,) bool."""
    values, inside = values_at_landmarks(mask, landmarks)
    return (values != 0) & inside


def landmark_centre(landmarks: np.ndarray) -> tuple[float, float]:
    """The face's centre: the mean x, y of its landmarks."""
    x, y = np.asarray(landmarks, dtype=np.float64)[:, :2].mean(axis=0)
    return float(x), float(y)


def people_in_turn(items: Sequence[Item], person: Callable[[Item], Hashable]) -> list[Item]:
    """The items reordered so that people take turns (everyone's first, then everyone's second, …): a limit
    then covers as many people as it can."""
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(person(item), []).append(item)
    return [item for group in itertools.zip_longest(*groups.values()) for item in group if item is not None]


def write_sheet(path: str | os.PathLike, rows: list[list[tuple[str, np.ndarray]]]) -> Path:
    """Captioned rows of images (one row per person) as one PNG."""
    # Imported here: the grid writer lives with training's validation images, whose imports are heavier.
    from rgbd_portrait.training.validation import write_grid

    return write_grid(Path(path), rows)


def format_table(section: Mapping[str, Any], *, columns: Sequence[str] | None = None) -> str:
    """A section's `rows` as a Markdown table with readable headings; `columns` picks (after `samples`) which
    measures it shows (default all)."""
    rows = section["rows"]
    if columns is not None:
        rows = {
            name: {key: value for key, value in row.items() if key in ("samples", *columns)}
            for name, row in rows.items()
        }
    return format_markdown_table(rows, labels=REAL_LABELS)
