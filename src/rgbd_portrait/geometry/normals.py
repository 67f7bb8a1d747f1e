"""Depth → camera-space unit normals (x right, y up, z towards the camera), channels-first.

Normals come from the cross product of the surface's tangents, estimated by finite differences of the
unprojected points: central differences inside the mask, one-sided differences where a neighbour lies outside
it, so no normal mixes the subject with the background. Pixels without a valid neighbour along a row or a
column, and pixels outside the mask, get the zero vector (as `normal.png` stores the background).
"""

from __future__ import annotations

import torch

from rgbd_portrait.geometry.camera import (
    DEFAULT_FIELD_OF_VIEW_DEGREES,
    DEFAULT_RELIEF,
    CameraIntrinsics,
    unproject_depth,
    unproject_relative_depth,
)


def _masked_difference(points: torch.Tensor, valid: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Derivative of points (..., 3, H, W) along spatial `dim` (-1 or -2) using only valid neighbours.

    Returns the derivative (same shape) and where it is defined (..., H, W).
    """
    size = points.shape[dim]
    step = points.narrow(dim, 1, size - 1) - points.narrow(dim, 0, size - 1)
    step_valid = valid.narrow(dim, 1, size - 1) & valid.narrow(dim, 0, size - 1)
    zero_step = torch.zeros_like(points.narrow(dim, 0, 1))
    no_step = torch.zeros_like(valid.narrow(dim, 0, 1))
    forward = torch.cat((step, zero_step), dim=dim)
    backward = torch.cat((zero_step, step), dim=dim)
    has_forward = torch.cat((step_valid, no_step), dim=dim)
    has_backward = torch.cat((no_step, step_valid), dim=dim)
    # valid masks are (..., H, W); the channel axis of the points sits just before H.
    forward_only = (has_forward & ~has_backward).unsqueeze(-3)
    backward_only = (has_backward & ~has_forward).unsqueeze(-3)
    derivative = torch.where(forward_only, forward, torch.where(backward_only, backward, (forward + backward) / 2))
    return derivative, has_forward | has_backward


def normals_from_points(points: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-space points (..., 3, H, W) → unit normals (..., 3, H, W) facing the camera, zero where undefined."""
    if points.ndim < 3 or points.shape[-3] != 3:
        raise ValueError(f"points must be (..., 3, H, W), got {tuple(points.shape)}")
    valid = torch.isfinite(points).all(dim=-3)
    if mask is not None:
        valid = valid & mask.to(torch.bool)
    points = torch.where(valid.unsqueeze(-3), points, torch.zeros_like(points))
    along_row, row_valid = _masked_difference(points, valid, dim=-1)  # towards the image's right
    along_column, column_valid = _masked_difference(points, valid, dim=-2)  # towards the image's bottom
    # (down × right) points towards the camera for a surface seen by it.
    normals = torch.linalg.cross(along_column, along_row, dim=-3)
    normals = torch.nn.functional.normalize(normals, dim=-3)
    defined = valid & row_valid & column_valid
    return torch.where(defined.unsqueeze(-3), normals, torch.zeros_like(normals))


def normals_from_depth(
    depth: torch.Tensor, intrinsics: CameraIntrinsics, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Metric z-depth (..., H, W) seen by a pinhole camera → unit normals (..., 3, H, W)."""
    return normals_from_points(unproject_depth(depth, intrinsics), mask=mask)


def normals_from_relative_depth(
    depth: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    field_of_view_degrees: float | None = DEFAULT_FIELD_OF_VIEW_DEGREES,
    relief: float = DEFAULT_RELIEF,
) -> torch.Tensor:
    """Affine-invariant depth (..., H, W) in [0, 1] → unit normals (..., 3, H, W).

    The scale is unknown, so the geometry follows the assumptions of
    `rgbd_portrait.geometry.camera.unproject_relative_depth` (field of view, or None for orthographic, and
    the relief of the [0, 1] range); the normals are exact when those match the real camera and subject.
    """
    points = unproject_relative_depth(depth, field_of_view_degrees=field_of_view_degrees, relief=relief)
    return normals_from_points(points, mask=mask)
