"""Depth-camera captures in rap3df's layout: an image registered to measured depth.

A capture folder `<person>/<pose>_<k>/` holds `rgb.png` (registered to the depth; the background may be
removed to black), `depth_raw.png` (16-bit sensor units proportional to distance, larger = farther, 0 = no
data; rap3df does not document its units, a face spans ~40 of them) and `mask.png` (where the depth is
valid). `rgbd-portrait prepare` turns captures into training samples with measured depth;
`rgbd-portrait eval --rap3df` scores image→depth against them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rgbd_portrait.errors import UserInputError

CAPTURE_FILES = ("rgb.png", "depth_raw.png", "mask.png")
# Some captures' masks also hold the wall behind, at 1.4 times the face's depth or more, while shoulders and a
# bowed head's body stay below 1.35 times.
PERSON_DEPTH_RANGE = (0.7, 1.35)
_CAPTURE_NAME = re.compile(r"^(?P<pose>.+)_(?P<take>\d+)$")


@dataclass
class DepthCapture:
    """One capture: the image, the raw sensor depth (0 = no data) and whose it is."""

    person: str
    name: str  # "<pose>_<k>"
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: torch.Tensor  # (H, W) float32, raw sensor units

    @property
    def key(self) -> str:
        return f"{self.person}/{self.name}"


def is_capture(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a capture: named `<pose>_<k>` and holding every one of `CAPTURE_FILES`."""
    folder = Path(folder)
    return bool(_CAPTURE_NAME.match(folder.name)) and all((folder / name).is_file() for name in CAPTURE_FILES)


def find_captures(root: str | os.PathLike) -> list[Path]:
    """The capture folders `<person>/<pose>_<k>/` under `root`, sorted."""
    root = Path(root)
    folders = sorted(path.parent for path in root.glob("*/*/rgb.png") if is_capture(path.parent))
    if not folders:
        raise UserInputError(
            f"{root}: no rap3df capture (<person>/<pose>_<k>/ with {', '.join(CAPTURE_FILES)}) in this folder"
        )
    return folders


def read_capture(folder: str | os.PathLike) -> DepthCapture:
    """A capture folder's image and depth, checked to match in size; the depth is zeroed off mask.png."""
    folder = Path(folder)
    try:
        rgb = np.asarray(Image.open(folder / "rgb.png").convert("RGB"))
        raw = np.asarray(Image.open(folder / "depth_raw.png"))
        mask = np.asarray(Image.open(folder / "mask.png").convert("L")) > 0
    except OSError as error:
        raise UserInputError(f"{folder}: cannot read the capture ({error})") from error
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise UserInputError(f"{folder / 'depth_raw.png'}: expected a 16-bit greyscale depth PNG, got {raw.dtype}")
    if raw.shape != rgb.shape[:2] or mask.shape != rgb.shape[:2]:
        raise UserInputError(
            f"{folder}: rgb.png {rgb.shape[:2]}, depth_raw.png {raw.shape} and mask.png {mask.shape} differ in size"
        )
    depth = torch.from_numpy(np.where(mask, raw, 0).astype(np.float32))
    return DepthCapture(person=folder.parent.name, name=folder.name, rgb=rgb, depth=depth)


def face_depth(depth: torch.Tensor, landmarks: np.ndarray) -> float | None:
    """The face's depth: the median valid depth at the landmarks' nearest pixels (landmarks (N, 2 or 3) in
    pixels); None when no landmark has depth."""
    height, width = depth.shape
    columns, rows = np.round(np.asarray(landmarks, dtype=np.float64)[:, :2]).astype(np.int64).T
    inside = (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    values = depth[torch.from_numpy(rows[inside]), torch.from_numpy(columns[inside])]
    measured = values[values > 0]
    return float(measured.median()) if len(measured) else None


def person_pixels(depth: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """The person (H, W) bool: valid pixels within `PERSON_DEPTH_RANGE` of the face's depth (`face_depth`);
    all-False when no landmark has depth."""
    face = face_depth(depth, landmarks)
    if face is None:
        return torch.zeros_like(depth, dtype=torch.bool)
    low, high = PERSON_DEPTH_RANGE
    return (depth >= low * face) & (depth <= high * face)
