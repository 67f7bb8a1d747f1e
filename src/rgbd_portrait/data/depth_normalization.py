"""Depth ↔ the model's depth space (Marigold's convention).

Per image, the 2 % and 98 % quantiles of the depth on the mask map affinely to -1 and +1; values are
clipped to [-1, 1] and the background is set to +1 (far). The model's predictions live in that space;
`to_unit_range` turns them into the affine-invariant depth in [0, 1] that the API returns.
"""

from __future__ import annotations

import torch

LOW_QUANTILE = 0.02
HIGH_QUANTILE = 0.98
# Below this range (in the input's units) a depth map is treated as flat, avoiding a division by ~0.
MIN_RANGE = 1e-6


def normalize_depth(
    depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    low_quantile: float = LOW_QUANTILE,
    high_quantile: float = HIGH_QUANTILE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise depth (B, 1, H, W) to [-1, 1] per image on its mask.

    Returns the normalised depth and the per-image depths `(near, far)` that map to -1 and +1, each (B,),
    so that `denormalize_depth` can undo it. Images with an empty mask use all pixels.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    valid = torch.ones_like(depth, dtype=torch.bool) if mask is None else mask.to(torch.bool).expand_as(depth)
    near = torch.empty(depth.shape[0], dtype=depth.dtype, device=depth.device)
    far = torch.empty_like(near)
    quantiles = torch.tensor([low_quantile, high_quantile], dtype=torch.float32, device=depth.device)
    for index in range(depth.shape[0]):
        values = depth[index][valid[index]]
        if values.numel() == 0:
            values = depth[index].flatten()
        near[index], far[index] = torch.quantile(values.float(), quantiles).to(depth.dtype)
    scale = (far - near).clamp_min(MIN_RANGE).view(-1, 1, 1, 1)
    normalized = ((depth - near.view(-1, 1, 1, 1)) / scale * 2.0 - 1.0).clamp(-1.0, 1.0)
    normalized = torch.where(valid, normalized, torch.ones_like(normalized))
    return normalized, near, far


def denormalize_depth(normalized: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_depth` (up to the clipping)."""
    scale = (far - near).clamp_min(MIN_RANGE).view(-1, 1, 1, 1)
    return (normalized + 1.0) / 2.0 * scale + near.view(-1, 1, 1, 1)


def to_unit_range(normalized: torch.Tensor) -> torch.Tensor:
    """Model depth in [-1, 1] → affine-invariant depth in [0, 1]."""
    return ((normalized + 1.0) / 2.0).clamp(0.0, 1.0)
