"""Pinhole cameras and depth → camera-space points.

Camera space: x right, y up, z towards the camera, so visible points have z < 0 and depth = -z.
Pixel (row i, column j) covers [j, j + 1] × [i, i + 1] in image coordinates; its centre is (j + 0.5, i + 0.5),
so a centred principal point is (W / 2, H / 2), as in the samples' `meta["intrinsics"]`.

Maps are channels-first torch tensors: depth (..., H, W), points (..., 3, H, W).

Affine-invariant depth (the model's [0, 1] output, 0 = near) carries no scale, so turning it into points
needs two assumptions, both documented where they are used:

- `field_of_view_degrees`: the horizontal field of view of the camera (None = orthographic);
- `relief`: the depth range that [0, 1] spans, as a fraction of the image's width at the subject.
  A head-and-shoulders crop is about twice as wide as the head is deep, hence 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_FIELD_OF_VIEW_DEGREES = 30.0
DEFAULT_RELIEF = 0.5


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels (see the module docstring for the pixel convention)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_matrix(cls, matrix: Sequence[Sequence[float]]) -> CameraIntrinsics:
        """From a 3×3 calibration matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (nested lists or an array)."""
        return cls(fx=float(matrix[0][0]), fy=float(matrix[1][1]), cx=float(matrix[0][2]), cy=float(matrix[1][2]))

    @classmethod
    def from_field_of_view(cls, height: int, width: int, field_of_view_degrees: float) -> CameraIntrinsics:
        """Square pixels, centred principal point, the given horizontal field of view."""
        if not 0.0 < field_of_view_degrees < 180.0:
            raise ValueError(f"field_of_view_degrees must be in (0, 180), got {field_of_view_degrees}")
        focal = width / (2.0 * math.tan(math.radians(field_of_view_degrees) / 2.0))
        return cls(fx=focal, fy=focal, cx=width / 2.0, cy=height / 2.0)

    def as_matrix(self) -> list[list[float]]:
        return [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]]


def _pixel_centres(height: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row coordinates of the pixel centres, each (H, W)."""
    rows = torch.arange(height, dtype=like.dtype, device=like.device) + 0.5
    columns = torch.arange(width, dtype=like.dtype, device=like.device) + 0.5
    return torch.meshgrid(columns, rows, indexing="xy")


def unproject_depth(depth: torch.Tensor, intrinsics: CameraIntrinsics) -> torch.Tensor:
    """Z-depth (..., H, W), larger = farther, → camera-space points (..., 3, H, W)."""
    columns, rows = _pixel_centres(depth.shape[-2], depth.shape[-1], depth)
    x = (columns - intrinsics.cx) / intrinsics.fx * depth
    y = -(rows - intrinsics.cy) / intrinsics.fy * depth
    return torch.stack((x, y, -depth), dim=-3)


def unproject_relative_depth(
    depth: torch.Tensor,
    *,
    field_of_view_degrees: float | None = DEFAULT_FIELD_OF_VIEW_DEGREES,
    relief: float = DEFAULT_RELIEF,
) -> torch.Tensor:
    """Affine-invariant depth (..., H, W) in [0, 1] → points (..., 3, H, W) under the stated assumptions.

    The nearest depth (0) is placed at distance 1 from a camera with the given horizontal field of view,
    and [0, 1] spans `relief` times the image's width there; `field_of_view_degrees=None` is the
    orthographic limit (image width 1, depth range `relief`). Only the shape is meaningful, not the scale.
    """
    if relief <= 0.0:
        raise ValueError(f"relief must be positive, got {relief}")
    height, width = depth.shape[-2:]
    if field_of_view_degrees is None:
        columns, rows = _pixel_centres(height, width, depth)
        x = (columns - width / 2.0) / width
        y = -(rows - height / 2.0) / width
        return torch.stack((x.expand_as(depth), y.expand_as(depth), -relief * depth), dim=-3)
    intrinsics = CameraIntrinsics.from_field_of_view(height, width, field_of_view_degrees)
    width_at_subject = width / intrinsics.fx  # the image's width at distance 1
    return unproject_depth(1.0 + relief * width_at_subject * depth, intrinsics)
