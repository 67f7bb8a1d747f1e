"""Metrics on a mask, in torch: depth after scale/shift alignment, normal angular error, rank correlation and
image quality.

Every function takes batches with any number of leading dimensions, on any device:

    depth   (..., H, W)       mask (..., H, W), nonzero = valid pixel
    normals (..., 3, H, W)
    images  (..., C, H, W)    values in [0, data_range]
    values  (..., N)          valid (..., N): sampled values, e.g. depth at face landmarks

and returns one value per leading index (a 0-d tensor for a single image), so a benchmark can average
per-image values over a data set. Sums run in float64 (float32 on Apple's MPS, which has no float64), so
large images lose no precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rgbd_portrait.errors import UserInputError

# Ratio thresholds of the δ accuracies: δ_k is the share of pixels with max(p/g, g/p) < 1.25**k.
DELTA_BASE = 1.25
# Angular-error thresholds in degrees, the usual ones for surface-normal estimation.
NORMAL_ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
# Spatial-frequency bands of `fine_detail`, in cycles per pixel: periods of 2–5 px (pores, hair strands, crisp
# edges) against periods of 12–50 px (the face's shape and shading at the data's 128–192 px).
FINE_BAND = (0.2, 0.5)
COARSE_BAND = (0.02, 0.08)
# Rec. 601 luma weights: detail is judged on brightness, where blur shows.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class Alignment(NamedTuple):
    """A prediction mapped onto the target by `scale * prediction + shift`."""

    aligned: torch.Tensor  # (..., H, W) on every pixel, not only the mask, in the metrics' float64
    scale: torch.Tensor  # (...)
    shift: torch.Tensor  # (...)


def _working_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_mask(mask: torch.Tensor, shape: torch.Size, name: str) -> None:
    if mask.shape != shape:
        raise UserInputError(f"mask: shape {tuple(mask.shape)} does not match {name} {tuple(shape)}")


def _flatten_pixels(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., H, W) → (N, H*W) in `dtype`."""
    return tensor.reshape(-1, tensor.shape[-2] * tensor.shape[-1]).to(dtype)


def _flat_mask(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) → (N, H*W) bool, refusing batch items without a valid pixel."""
    flat = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]) != 0
    empty = (~flat.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise UserInputError(f"mask: no valid pixel in batch item(s) {empty.tolist()}")
    return flat


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last axis where `mask` holds; pixels off the mask may be inf or nan."""
    return torch.where(mask, values, 0).sum(dim=-1) / mask.sum(dim=-1)


def align_scale_shift(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, nonnegative_scale: bool = False
) -> Alignment:
    """Least-squares scale and shift that map `prediction` onto `target` on `mask` (closed form, batched).

    Minimises sum over the mask of (scale * prediction + shift - target)**2. A prediction that is constant
    on the mask carries no scale information: its scale is 0 and it aligns to the target's masked mean.

    With `nonnegative_scale`, the scale is constrained to be >= 0, so that a prediction with its near and far
    swapped is not flipped into a good one: the objective is a convex quadratic, so where the free optimum has
    a negative scale the constrained one lies on the boundary, scale 0 with the target's masked mean.
    """
    if prediction.shape != target.shape:
        raise UserInputError(f"prediction: shape {tuple(prediction.shape)} does not match target {tuple(target.shape)}")
    _check_mask(mask, target.shape, "target")
    dtype = _working_dtype(prediction.device)
    valid = _flat_mask(mask)
    predicted = _flatten_pixels(prediction, dtype)
    truth = _flatten_pixels(target, dtype)

    # The fit runs on the prediction rescaled to [0, 1] on the mask: then the variance of a non-constant
    # prediction is at least 1/2, so the sums neither underflow nor overflow whatever its units.
    highest = torch.where(valid, predicted, -torch.inf).amax(dim=1)
    lowest = torch.where(valid, predicted, torch.inf).amin(dim=1)
    spread = highest - lowest
    # A constant prediction becomes all zeros, so its covariance, hence its scale, is exactly 0.
    spread = torch.where(spread == 0, 1, spread)
    unit = (predicted - lowest[:, None]) / spread[:, None]
    unit_mean = _masked_mean(unit, valid)
    truth_mean = _masked_mean(truth, valid)
    centred = torch.where(valid, unit - unit_mean[:, None], 0)
    variance = (centred * centred).sum(dim=1)
    covariance = (centred * torch.where(valid, truth - truth_mean[:, None], 0)).sum(dim=1)
    unit_scale = covariance / torch.where(variance == 0, 1, variance)
    if nonnegative_scale:
        unit_scale = unit_scale.clamp_min(0)
    unit_shift = truth_mean - unit_scale * unit_mean
    scale = unit_scale / spread
    shift = unit_shift - scale * lowest

    leading = target.shape[:-2]
    aligned = unit_scale[:, None] * unit + unit_shift[:, None]
    return Alignment(aligned=aligned.reshape(target.shape), scale=scale.reshape(leading), shift=shift.reshape(leading))


def depth_metrics(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    align: bool = True,
    nonnegative_scale: bool = False,
    min_depth: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """AbsRel, RMSE and δ accuracies of a depth prediction on `mask`, per batch item.

    With `align` (the default) the prediction is first mapped onto the target by `align_scale_shift` (with its
    `nonnegative_scale` option), as affine-invariant predictions must be. The (aligned) prediction is then
    clamped to at least `min_depth` (target units, 1 mm for metres) so that ratios stay finite; this clamp
    applies to every metric. The target must be positive on the mask.

    Returns ``abs_rel`` (mean |p - g| / g), ``rmse`` (target units) and ``delta1``/``delta2``/``delta3``
    (share of pixels with max(p/g, g/p) < 1.25, 1.25², 1.25³, in [0, 1]).
    """
    if min_depth <= 0:
        raise UserInputError(f"min_depth: must be positive, got {min_depth}")
    if align:
        prediction = align_scale_shift(prediction, target, mask, nonnegative_scale=nonnegative_scale).aligned
    elif prediction.shape != target.shape:
        raise UserInputError(f"prediction: shape {tuple(prediction.shape)} does not match target {tuple(target.shape)}")
    _check_mask(mask, target.shape, "target")
    dtype = _working_dtype(prediction.device)
    valid = _flat_mask(mask)
    truth = _flatten_pixels(target, dtype)
    if (torch.where(valid, truth, 1) <= 0).any():
        raise UserInputError("target: depth must be positive on the mask")
    predicted = _flatten_pixels(prediction, dtype).clamp(min=min_depth)

    error = predicted - truth
    ratio = torch.maximum(predicted / truth, truth / predicted)
    metrics = {
        "abs_rel": _masked_mean(error.abs() / truth, valid),
        "rmse": _masked_mean(error * error, valid).sqrt(),
    }
    for power in (1, 2, 3):
        metrics[f"delta{power}"] = _masked_mean((ratio < DELTA_BASE**power).to(dtype), valid)
    leading = target.shape[:-2]
    return {name: value.reshape(leading) for name, value in metrics.items()}


def _masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Median over the last axis where `mask` holds (mean of the middle two for an even count)."""
    medians = []
    for row, row_mask in zip(values, mask):
        ordered = row[row_mask].sort().values
        count = len(ordered)
        medians.append((ordered[(count - 1) // 2] + ordered[count // 2]) / 2)
    return torch.stack(medians)


def normal_metrics(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Angular error between two normal maps (..., 3, H, W) on `mask`, per batch item.

    Both maps are renormalised to unit length first. Returns ``normal_mean_deg``, ``normal_median_deg``
    and ``normal_pct_11.25``, ``normal_pct_22.5``, ``normal_pct_30`` (percentage of pixels, 0-100, whose
    error is below that many degrees).
    """
    if prediction.shape != target.shape or target.ndim < 3 or target.shape[-3] != 3:
        raise UserInputError(
            f"prediction: normal maps must both be (..., 3, H, W), got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    _check_mask(mask, target.shape[:-3] + target.shape[-2:], "the normal maps' pixels")
    dtype = _working_dtype(prediction.device)
    valid = _flat_mask(mask)
    predicted = F.normalize(prediction.to(dtype), dim=-3)
    truth = F.normalize(target.to(dtype), dim=-3)
    # atan2 of sine and cosine stays accurate for small angles, where acos of the cosine does not.
    sine = torch.linalg.cross(predicted, truth, dim=-3).norm(dim=-3)
    cosine = (predicted * truth).sum(dim=-3)
    angle = torch.rad2deg(torch.atan2(_flatten_pixels(sine, dtype), _flatten_pixels(cosine, dtype)))
    metrics = {
        "normal_mean_deg": _masked_mean(angle, valid),
        "normal_median_deg": _masked_median(angle, valid),
    }
    for threshold in NORMAL_ANGLE_THRESHOLDS:
        metrics[f"normal_pct_{threshold:g}"] = 100 * _masked_mean((angle < threshold).to(dtype), valid)
    leading = mask.shape[:-2]
    return {name: value.reshape(leading) for name, value in metrics.items()}


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0 … N-1 of the values of a 1-D tensor, tied values sharing the mean of their ranks."""
    _, position, counts = torch.unique(values, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, dim=0) - counts
    return (first + (counts - 1) / 2).to(_working_dtype(values.device))[position]


def rank_correlation(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of two sets of values (..., N) over the entries where `valid` holds, per
    leading index: Pearson's correlation of their average ranks (ties share a rank, as on coarse sensor depth).

    It is 1 for any increasing function of the target, -1 for a decreasing one. A side whose valid values are
    all equal has no order to agree with: its correlation is 0.
    """
    if prediction.shape != target.shape or valid.shape != target.shape:
        raise UserInputError(
            f"prediction: values {tuple(prediction.shape)}, target {tuple(target.shape)} and valid "
            f"{tuple(valid.shape)} must have one shape"
        )
    valid = valid.reshape(-1, target.shape[-1]) != 0
    few = (valid.sum(dim=1) < 2).nonzero().flatten()
    if len(few):
        raise UserInputError(f"valid: fewer than two valid values in batch item(s) {few.tolist()}")
    correlations = []
    for predicted, truth, keep in zip(prediction.reshape(valid.shape), target.reshape(valid.shape), valid):
        ranks = torch.stack([average_ranks(predicted[keep]), average_ranks(truth[keep])])
        centred = ranks - ranks.mean(dim=1, keepdim=True)
        spread = centred.norm(dim=1)
        if (spread == 0).any():
            correlations.append(torch.zeros((), dtype=ranks.dtype, device=ranks.device))
        else:
            correlations.append((centred[0] * centred[1]).sum() / (spread[0] * spread[1]))
    return torch.stack(correlations).reshape(target.shape[:-1])


def _flatten_images(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check (..., C, H, W) images against a (..., H, W) mask; return them as (N, C, H, W), (N, H*W)."""
    if prediction.shape != target.shape or target.ndim < 3:
        raise UserInputError(
            f"prediction: images must both be (..., C, H, W), got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    _check_mask(mask, target.shape[:-3] + target.shape[-2:], "the images' pixels")
    dtype = _working_dtype(prediction.device)
    images_shape = (-1, *target.shape[-3:])
    return prediction.reshape(images_shape).to(dtype), target.reshape(images_shape).to(dtype), _flat_mask(mask)


def _masked_image_mean(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of (N, C, H, W) values over channels and the masked pixels → (N,)."""
    return _masked_mean(per_pixel.mean(dim=1).flatten(1), valid)


def mean_absolute_error(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |prediction - target| over channels and the masked pixels, per batch item."""
    predicted, truth, valid = _flatten_images(prediction, target, mask)
    return _masked_image_mean((predicted - truth).abs(), valid).reshape(mask.shape[:-2])


def psnr(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, data_range: float = 1.0
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB on the masked pixels, per batch item (inf for identical images)."""
    predicted, truth, valid = _flatten_images(prediction, target, mask)
    squared_error = _masked_image_mean((predicted - truth) ** 2, valid)
    return (10 * torch.log10(data_range**2 / squared_error)).reshape(mask.shape[:-2])


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of (N, C, H, W) images, truncated at 3.5 sigma, mirrored at the border.

    Kernel, truncation and half-sample symmetric border match `scipy.ndimage.gaussian_filter(mode="reflect")`,
    which is what scikit-image's SSIM uses.
    """
    radius = int(3.5 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    count, channels, height, width = images.shape
    flat = images.reshape(count * channels, 1, height, width)
    for axis, weights in ((-1, kernel.view(1, 1, 1, -1)), (-2, kernel.view(1, 1, -1, 1))):
        before = flat.narrow(axis, 0, radius).flip(axis)
        after = flat.narrow(axis, flat.shape[axis] - radius, radius).flip(axis)
        flat = F.conv2d(torch.cat([before, flat, after], dim=axis), weights)
    return flat.reshape(count, channels, height, width)


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian window) averaged over the masked pixels, per item.

    The SSIM map is computed on the whole image with population covariances, averaged over channels, then
    averaged over the mask. Pixels closer to the border than the window radius are left out, as
    `skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)` does, so
    with a full mask the two agree.
    """
    predicted, truth, valid = _flatten_images(prediction, target, mask)
    radius = int(3.5 * sigma + 0.5)
    height, width = target.shape[-2:]
    if min(height, width) < 2 * radius + 1:
        raise UserInputError(f"prediction: {height}x{width} images are smaller than the SSIM window ({2 * radius + 1})")
    mean_predicted = _gaussian_blur(predicted, sigma)
    mean_truth = _gaussian_blur(truth, sigma)
    variance_predicted = _gaussian_blur(predicted * predicted, sigma) - mean_predicted**2
    variance_truth = _gaussian_blur(truth * truth, sigma) - mean_truth**2
    covariance = _gaussian_blur(predicted * truth, sigma) - mean_predicted * mean_truth
    luminance_constant = (0.01 * data_range) ** 2
    contrast_constant = (0.03 * data_range) ** 2
    similarity = (
        (2 * mean_predicted * mean_truth + luminance_constant)
        * (2 * covariance + contrast_constant)
        / (
            (mean_predicted**2 + mean_truth**2 + luminance_constant)
            * (variance_predicted + variance_truth + contrast_constant)
        )
    )
    interior = torch.zeros(height, width, dtype=torch.bool, device=valid.device)
    interior[radius : height - radius, radius : width - radius] = True
    valid_interior = valid & interior.flatten()
    empty = (~valid_interior.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise UserInputError(f"mask: no valid pixel away from the image border in batch item(s) {empty.tolist()}")
    return _masked_image_mean(similarity, valid_interior).reshape(mask.shape[:-2])


def fine_detail(images: torch.Tensor) -> torch.Tensor:
    """How much fine detail (..., 3, H, W) images hold: log10 of the luma's spectral power in `FINE_BAND`
    over its power in `COARSE_BAND`, per image, on the whole image under a Hann window.

    A ratio, so it ignores brightness and contrast; higher is sharper. Blur lowers it, noise raises it, so it
    reads blur between images of one size and kind (photographs against generated portraits), not quality.
    A flat image has no power in either band and reads NaN.
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise UserInputError(f"images: expected (..., 3, H, W) RGB, got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    dtype = _working_dtype(images.device)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=dtype, device=images.device)
    luma = torch.einsum("...chw,c->...hw", images.to(dtype), weights)
    luma = luma - luma.mean(dim=(-2, -1), keepdim=True)
    window = torch.outer(
        torch.hann_window(height, periodic=False, dtype=dtype, device=images.device),
        torch.hann_window(width, periodic=False, dtype=dtype, device=images.device),
    )
    power = torch.fft.fft2(luma * window).abs() ** 2
    frequency = torch.hypot(
        torch.fft.fftfreq(height, dtype=dtype, device=images.device)[:, None],
        torch.fft.fftfreq(width, dtype=dtype, device=images.device)[None, :],
    )

    def band_power(band: tuple[float, float]) -> torch.Tensor:
        inside = (frequency >= band[0]) & (frequency < band[1])
        return (power * inside).sum(dim=(-2, -1))

    return torch.log10(band_power(FINE_BAND) / band_power(COARSE_BAND))


def image_metrics(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, data_range: float = 1.0
) -> dict[str, torch.Tensor]:
    """``psnr`` (dB), ``ssim`` and ``mae`` of images on `mask`, per batch item."""
    return {
        "psnr": psnr(prediction, target, mask, data_range=data_range),
        "ssim": ssim(prediction, target, mask, data_range=data_range),
        "mae": mean_absolute_error(prediction, target, mask),
    }
