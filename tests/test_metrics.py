import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.metrics import (
    align_scale_shift,
    depth_metrics,
    fine_detail,
    image_metrics,
    mean_absolute_error,
    normal_metrics,
    psnr,
    rank_correlation,
    ssim,
)


def _row(*values):
    """A 1 x N image of the given values."""
    return torch.tensor([values], dtype=torch.float64)


# --- alignment ---------------------------------------------------------------------------------------------


def test_known_scale_and_shift_are_recovered_exactly_off_masked_outliers():
    prediction = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    target = 2 * prediction + 1
    target[1, 1] = 100.0  # an outlier off the mask must not pull the fit
    mask = torch.tensor([[True, True], [True, False]])
    result = align_scale_shift(prediction, target, mask)
    assert result.scale.item() == pytest.approx(2.0, abs=1e-12)
    assert result.shift.item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(result.aligned, torch.tensor([[1.0, 3.0], [5.0, 7.0]], dtype=torch.float64))


def test_inexact_fit_matches_hand_solution():
    # p = 0, 1, 2 and g = 0, 1, 3: cov = 3, var = 2 → scale 3/2, shift 4/3 - 3/2 = -1/6.
    result = align_scale_shift(_row(0, 1, 2), _row(0, 1, 3), torch.ones(1, 3))
    assert result.scale.item() == pytest.approx(1.5)
    assert result.shift.item() == pytest.approx(-1 / 6)
    torch.testing.assert_close(result.aligned, _row(-1 / 6, 4 / 3, 17 / 6))


def test_constant_prediction_aligns_to_the_target_mean():
    result = align_scale_shift(torch.full((1, 3), 0.1), _row(1, 2, 4), torch.ones(1, 3))
    assert result.scale.item() == 0.0
    torch.testing.assert_close(result.aligned, torch.full((1, 3), 7 / 3, dtype=torch.float64))


def test_alignment_is_per_batch_item_with_any_leading_shape():
    prediction = torch.rand(2, 3, 4, 5)
    scales = torch.arange(1.0, 7.0).view(2, 3)
    target = scales[..., None, None] * prediction - scales[..., None, None]
    result = align_scale_shift(prediction, target, torch.ones(2, 3, 4, 5, dtype=torch.bool))
    assert result.scale.shape == (2, 3) and result.aligned.shape == (2, 3, 4, 5)
    torch.testing.assert_close(result.scale, scales.double())
    torch.testing.assert_close(result.shift, -scales.double())


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-10, 10), min_size=8, max_size=8),
    targets=st.lists(st.floats(0.1, 10), min_size=8, max_size=8),
    scale=st.floats(0.01, 100) | st.floats(-100, -0.01),
    shift=st.floats(-100, 100),
)
def test_alignment_is_invariant_to_an_affine_map_of_the_prediction_and_solves_the_normal_equations(
    values, targets, scale, shift
):
    prediction = torch.tensor(values, dtype=torch.float64).view(2, 4)
    target = torch.tensor(targets, dtype=torch.float64).view(2, 4)
    mask = torch.tensor([[True, True, True, False], [True, True, False, True]])
    base = align_scale_shift(prediction, target, mask)
    mapped = align_scale_shift(scale * prediction + shift, target, mask)
    torch.testing.assert_close(mapped.aligned[mask], base.aligned[mask], atol=1e-6, rtol=1e-6)
    # Least squares: the residual on the mask sums to zero and is orthogonal to the prediction.
    residual = (base.aligned - target)[mask]
    assert abs(residual.sum().item()) < 1e-8
    assert abs((residual * prediction[mask]).sum().item()) < 1e-8 * (1 + prediction.abs().max().item()) * 10


def test_nonnegative_scale_leaves_a_swapped_prediction_at_the_target_mean():
    target = _row(1, 2, 4)
    swapped = align_scale_shift(-target, target, torch.ones(1, 3), nonnegative_scale=True)
    assert swapped.scale.item() == 0.0
    torch.testing.assert_close(swapped.aligned, torch.full((1, 3), 7 / 3, dtype=torch.float64))
    # The free fit flips it into a perfect one; the constrained fit must not.
    assert depth_metrics(-target, target, torch.ones(1, 3))["abs_rel"].item() < 1e-12
    assert depth_metrics(-target, target, torch.ones(1, 3), nonnegative_scale=True)["abs_rel"].item() > 0.3
    # A prediction in the right order is fitted as without the constraint.
    free = align_scale_shift(_row(0, 1, 2), _row(0, 1, 3), torch.ones(1, 3))
    constrained = align_scale_shift(_row(0, 1, 2), _row(0, 1, 3), torch.ones(1, 3), nonnegative_scale=True)
    torch.testing.assert_close(constrained.aligned, free.aligned)


def test_mismatched_shapes_and_empty_masks_are_refused():
    with pytest.raises(UserInputError, match="prediction"):
        align_scale_shift(torch.ones(2, 2), torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(UserInputError, match="mask"):
        align_scale_shift(torch.ones(2, 2), torch.ones(2, 2), torch.ones(1, 2, 2))
    mask = torch.ones(2, 2, 2)
    mask[1] = 0
    with pytest.raises(UserInputError, match=r"batch item\(s\) \[1\]"):
        align_scale_shift(torch.ones(2, 2, 2), torch.ones(2, 2, 2), mask)


# --- depth metrics -----------------------------------------------------------------------------------------


def test_depth_metrics_match_hand_computed_values():
    # g = 1, 2, 4, 5 and p = 1, 2.5, 4, 3: errors 0, .5, 0, 2; ratios 1, 1.25, 1, 5/3. The last pixel is
    # background (target 0) and must be ignored.
    target = _row(1, 2, 4, 5, 0)
    prediction = _row(1, 2.5, 4, 3, 7)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    metrics = depth_metrics(prediction, target, mask, align=False)
    assert metrics["abs_rel"].item() == pytest.approx((0.25 + 0.4) / 4)
    assert metrics["rmse"].item() == pytest.approx(math.sqrt((0.25 + 4) / 4))
    assert metrics["delta1"].item() == 0.5  # a ratio of exactly 1.25 does not count: the test is strict
    assert metrics["delta2"].item() == 0.75
    assert metrics["delta3"].item() == 1.0


def test_perfect_affine_prediction_scores_zero_error_and_full_accuracy():
    target = torch.rand(3, 8, 8) + 0.5
    prediction = (target - 0.5) / 4  # affine-invariant depth in [0, 1]
    mask = torch.rand(3, 8, 8) > 0.3
    metrics = depth_metrics(prediction, target, mask)
    torch.testing.assert_close(metrics["abs_rel"], torch.zeros(3, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(metrics["rmse"], torch.zeros(3, dtype=torch.float64), atol=1e-7, rtol=0)
    for name in ("delta1", "delta2", "delta3"):
        assert torch.all(metrics[name] == 1.0)


def test_aligned_flat_plane_scores_as_the_target_mean():
    metrics = depth_metrics(torch.zeros(1, 3), _row(1, 2, 3), torch.ones(1, 3))
    # Aligned to 2 everywhere: relative errors 1, 0, 1/3.
    assert metrics["abs_rel"].item() == pytest.approx(4 / 9)


def test_prediction_is_clamped_to_min_depth_before_ratios():
    metrics = depth_metrics(_row(-1.0), _row(1.0), torch.ones(1, 1), align=False, min_depth=0.5)
    assert metrics["abs_rel"].item() == 0.5
    assert metrics["delta3"].item() == 0.0  # ratio 2


def test_target_must_be_positive_on_the_mask():
    with pytest.raises(UserInputError, match="positive"):
        depth_metrics(_row(1, 2), _row(1, 0), torch.ones(1, 2))


# --- normals -----------------------------------------------------------------------------------------------


def test_normal_metrics_match_hand_computed_angles():
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 45.0, 180.0], dtype=torch.float64))
    # Unnormalised on purpose: the metric renormalises.
    prediction = 2 * torch.stack([angles.sin(), torch.zeros(5, dtype=torch.float64), angles.cos()]).view(3, 1, 5)
    target = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 1, 5)
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the 180° pixel is background
    metrics = normal_metrics(prediction, target, mask)
    assert metrics["normal_mean_deg"].item() == pytest.approx(75 / 4)
    assert metrics["normal_median_deg"].item() == pytest.approx(15.0)
    assert metrics["normal_pct_11.25"].item() == pytest.approx(50.0)
    assert metrics["normal_pct_22.5"].item() == pytest.approx(75.0)
    assert metrics["normal_pct_30"].item() == pytest.approx(75.0)


def test_identical_normals_have_zero_error():
    normals = torch.randn(2, 3, 6, 6)
    metrics = normal_metrics(normals, normals, torch.ones(2, 6, 6))
    assert torch.all(metrics["normal_mean_deg"] < 1e-9) and torch.all(metrics["normal_pct_11.25"] == 100)


# --- images ------------------------------------------------------------------------------------------------


def test_psnr_and_mae_on_the_mask_match_hand_values():
    target = torch.zeros(2, 3, 4, 4)
    prediction = torch.full((2, 3, 4, 4), 0.1)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    prediction[:, :, 0, 0] = 1.0  # off the mask
    assert torch.allclose(psnr(prediction, target, mask), torch.tensor(20.0, dtype=torch.float64))
    assert torch.allclose(mean_absolute_error(prediction, target, mask), torch.tensor(0.1, dtype=torch.float64))
    assert psnr(target, target, mask)[0].item() == math.inf


def _skimage_ssim(prediction, target, **options):
    return structural_similarity(
        prediction.permute(1, 2, 0).numpy(),
        target.permute(1, 2, 0).numpy(),
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        **options,
    )


def test_ssim_with_a_full_mask_matches_scikit_image():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 20, 23, generator=generator, dtype=torch.float64)
    prediction = (target + 0.2 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(prediction, target, torch.ones(2, 20, 23))
    expected = [_skimage_ssim(prediction[index], target[index]) for index in range(2)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10)
    assert ssim(target, target, torch.ones(2, 20, 23)).tolist() == pytest.approx([1.0, 1.0])


def test_ssim_with_a_mask_averages_the_ssim_map_on_it():
    generator = torch.Generator().manual_seed(2)
    target = torch.rand(3, 16, 16, generator=generator, dtype=torch.float64)
    prediction = torch.rand(3, 16, 16, generator=generator, dtype=torch.float64)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 6:9] = True
    _, ssim_map = _skimage_ssim(prediction, target, full=True)
    expected = ssim_map.mean(axis=-1)[mask.numpy() & _interior(16, 5)].mean()
    assert ssim(prediction, target, mask).item() == pytest.approx(expected, rel=1e-10)


def _interior(size, radius):
    interior = np.zeros((size, size), bool)
    interior[radius:-radius, radius:-radius] = True
    return interior


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(UserInputError, match="SSIM window"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.ones(8, 8))


def test_image_metrics_bundle_and_float32_inputs():
    target = torch.rand(1, 3, 12, 12)
    metrics = image_metrics(target, target, torch.ones(1, 12, 12))
    assert set(metrics) == {"psnr", "ssim", "mae"}
    assert metrics["mae"].item() == 0 and metrics["ssim"].item() == pytest.approx(1.0)


def test_fine_detail_reads_blur_and_ignores_brightness_and_contrast():
    generator = torch.Generator().manual_seed(0)
    sharp = torch.rand(2, 3, 64, 64, generator=generator)
    blurred = F.avg_pool2d(sharp, 5, stride=1, padding=2, count_include_pad=False)
    detail = fine_detail(sharp)
    assert detail.shape == (2,)
    assert (fine_detail(blurred) < detail - 1).all()  # a 5-px box blur removes most of the 2–5 px power
    torch.testing.assert_close(fine_detail(0.3 * sharp + 0.2), detail)
    # Per image, whatever the leading shape.
    torch.testing.assert_close(fine_detail(sharp[None]), detail[None])


def test_fine_detail_follows_the_period_of_a_pattern():
    columns = torch.arange(64, dtype=torch.float64)
    fine, coarse = (0.5 + 0.5 * torch.cos(2 * math.pi * columns / period).expand(3, 64, 64) for period in (3, 25))
    # Stripes of a 3-px period put their power in the fine band, 25-px ones in the coarse band; half of each, between.
    assert fine_detail(fine) > 3 > fine_detail((fine + coarse) / 2) > -1 > fine_detail(coarse)


def test_fine_detail_refuses_images_that_are_not_rgb():
    with pytest.raises(UserInputError, match=r"\(\.\.\., 3, H, W\)"):
        fine_detail(torch.rand(1, 16, 16))


# --- rank correlation --------------------------------------------------------------------------------------


def test_rank_correlation_of_monotone_maps_is_one_or_minus_one_whatever_the_spacing():
    target = torch.tensor([0.3, 1.0, 2.5, 2.6, 9.0], dtype=torch.float64)
    valid = torch.ones(5, dtype=torch.bool)
    assert rank_correlation(torch.exp(target), target, valid).item() == pytest.approx(1.0)
    assert rank_correlation(-(target**3), target, valid).item() == pytest.approx(-1.0)


def test_rank_correlation_with_ties_matches_scipy_and_skips_invalid_entries():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, 4, (2, 30), generator=generator).double()  # many ties, as in coarse depth
    target = torch.randn(2, 30, generator=generator, dtype=torch.float64)
    valid = torch.rand(2, 30, generator=generator) > 0.3
    result = rank_correlation(prediction, target, valid)
    assert result.shape == (2,)
    for index in range(2):
        keep = valid[index]
        expected = spearmanr(prediction[index][keep].numpy(), target[index][keep].numpy()).statistic
        assert result[index].item() == pytest.approx(expected, abs=1e-12)
    # Values off `valid` do not count, however wild.
    wild = torch.where(valid, prediction, 1e9)
    torch.testing.assert_close(rank_correlation(wild, target, valid), result)


def test_rank_correlation_of_a_constant_side_is_zero_and_too_few_values_are_refused():
    target = torch.tensor([1.0, 2.0, 3.0])
    assert rank_correlation(torch.full((3,), 0.5), target, torch.ones(3)).item() == 0.0
    with pytest.raises(UserInputError, match="fewer than two"):
        rank_correlation(target, target, torch.tensor([True, False, False]))
    with pytest.raises(UserInputError, match="one shape"):
        rank_correlation(target, target[:2], torch.ones(3))
