"""Test-time ensembling of affine-invariant depth predictions (Marigold's convention).

Several predictions of the same image (different noise, or its mirror image mirrored back) agree only up to a
scale and a shift. Each member is aligned to the pixel-wise median of the members by a least-squares scale
and shift on the mask; the median is then recomputed from the aligned members, and a few rounds settle it.
The ensemble is the median of the aligned members (for an even count the mean of the middle two, so two
members average), rescaled so that its range on the mask is [0, 1]; the uncertainty is their median absolute
deviation from it, in the same units.
"""

from __future__ import annotations

import torch

from rgbd_portrait.evaluation.metrics import align_scale_shift

# Two rounds already move the target by less than a thousandth of the depth range in practice; three is cheap.
ALIGNMENT_ROUNDS = 3
# Below this range the ensemble is flat and is returned as zeros rather than amplified noise.
MIN_RANGE = 1e-6


def _median(values: torch.Tensor) -> torch.Tensor:
    """The median over the first axis, the mean of the two middle values for an even count (`Tensor.median`
    takes the lower one, which for two members would be their minimum)."""
    return torch.quantile(values, 0.5, dim=0)


def ensemble_depth(
    members: torch.Tensor, mask: torch.Tensor | None = None, *, rounds: int = ALIGNMENT_ROUNDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine N depth predictions (N, 1, H, W) of one image into one depth and an uncertainty, each (1, 1, H, W).

    `mask` (H, W) or (1, 1, H, W), nonzero = pixels used for the alignment and the final [0, 1] range; None
    uses every pixel. A single member is only rescaled, with zero uncertainty.
    """
    if members.ndim != 4 or members.shape[1] != 1:
        raise ValueError(f"members must be (N, 1, H, W), got {tuple(members.shape)}")
    count, _, height, width = members.shape
    valid = torch.ones(height, width, dtype=torch.bool, device=members.device)
    if mask is not None:
        valid = mask.reshape(height, width).to(device=members.device, dtype=torch.bool)
    if not valid.any():
        raise ValueError("the ensemble mask has no valid pixel")

    depths = members[:, 0].float()
    aligned = depths
    if count > 1:
        for _ in range(rounds):
            target = _median(aligned)
            fit = align_scale_shift(depths, target.expand_as(depths), valid.expand_as(depths))
            aligned = fit.aligned.to(depths.dtype)
    prediction = _median(aligned)
    uncertainty = _median((aligned - prediction).abs())

    low, high = prediction[valid].min(), prediction[valid].max()
    span = high - low
    if span < MIN_RANGE:
        return torch.zeros_like(prediction)[None, None], torch.zeros_like(uncertainty)[None, None]
    prediction = ((prediction - low) / span).clamp(0.0, 1.0)
    uncertainty = uncertainty / span
    return prediction[None, None].to(members.dtype), uncertainty[None, None].to(members.dtype)
