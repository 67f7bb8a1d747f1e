import pytest
import torch

from rgbd_portrait.pipelines.ensemble import ensemble_depth


def _ramp(height: int = 12, width: int = 16) -> torch.Tensor:
    rows = torch.linspace(0.0, 1.0, height)[:, None]
    columns = torch.linspace(0.0, 1.0, width)[None, :]
    return (0.3 * rows + 0.7 * columns**2)[None, None]


def _unit(depth: torch.Tensor) -> torch.Tensor:
    return (depth - depth.min()) / (depth.max() - depth.min())


def test_affine_copies_ensemble_to_the_normalised_truth_with_zero_uncertainty():
    truth = _ramp()
    members = torch.cat([truth * scale + shift for scale, shift in [(1.0, 0.0), (2.5, -0.3), (0.4, 0.9)]])
    depth, uncertainty = ensemble_depth(members)
    assert depth.shape == uncertainty.shape == (1, 1, 12, 16)
    torch.testing.assert_close(depth, _unit(truth), atol=1e-5, rtol=0)
    assert uncertainty.abs().max() < 1e-5


def test_median_ignores_an_outlier_member_and_uncertainty_marks_disagreement():
    truth = _ramp()
    noisy = truth + 0.05 * torch.randn_like(truth)
    outlier = torch.rand_like(truth)
    members = torch.cat([truth, 3.0 * truth + 1.0, noisy, 0.5 * truth, outlier])
    depth, uncertainty = ensemble_depth(members)
    assert (depth - _unit(truth)).abs().mean() < 0.02
    assert uncertainty.min() >= 0
    assert uncertainty.mean() > 0


def test_mask_restricts_alignment_and_output_range():
    truth = _ramp()
    mask = torch.zeros(12, 16, dtype=torch.bool)
    mask[2:10, 3:13] = True
    # Off the mask the members disagree wildly; on it they are affine copies.
    members = torch.cat([truth, 2.0 * truth - 1.0])
    members[1, 0, ~mask] = 50.0
    depth, uncertainty = ensemble_depth(members, mask)
    inside = truth[0, 0][mask]
    expected = (inside - inside.min()) / (inside.max() - inside.min())
    torch.testing.assert_close(depth[0, 0][mask], expected, atol=1e-5, rtol=0)
    assert uncertainty[0, 0][mask].abs().max() < 1e-5
    assert depth.min() >= 0 and depth.max() <= 1


def test_single_member_is_rescaled_and_flat_prediction_is_zero():
    depth, uncertainty = ensemble_depth(0.2 + 0.5 * _ramp())
    torch.testing.assert_close(depth, _unit(_ramp()), atol=1e-6, rtol=0)
    assert torch.count_nonzero(uncertainty) == 0
    flat, _ = ensemble_depth(torch.full((2, 1, 4, 4), 0.7))
    assert torch.count_nonzero(flat) == 0


def test_rejects_bad_shapes_and_empty_mask():
    with pytest.raises(ValueError, match="members"):
        ensemble_depth(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        ensemble_depth(torch.rand(2, 1, 4, 4), torch.zeros(4, 4))
