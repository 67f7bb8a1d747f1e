import torch

from rgbd_portrait.data.depth_normalization import denormalize_depth, normalize_depth, to_unit_range


def test_quantiles_map_to_unit_interval_and_background_is_far():
    depth = torch.linspace(1.0, 2.0, 100).view(1, 1, 10, 10)
    mask = torch.ones_like(depth, dtype=torch.bool)
    mask[..., 0, :] = False
    normalized, near, far = normalize_depth(depth, mask)
    values = normalized[mask]
    assert values.min() == -1.0 and values.max() == 1.0
    assert torch.all(normalized[~mask] == 1.0)
    masked = depth[mask]
    assert torch.isclose(near[0], torch.quantile(masked, 0.02))
    assert torch.isclose(far[0], torch.quantile(masked, 0.98))


def test_normalisation_is_affine_invariant_and_invertible():
    depth = torch.rand(2, 1, 8, 8) + 0.5
    normalized, near, far = normalize_depth(depth)
    scaled, _, _ = normalize_depth(depth * 3.0 + 7.0)
    torch.testing.assert_close(normalized, scaled, atol=1e-5, rtol=0)
    inside = (normalized > -1) & (normalized < 1)
    torch.testing.assert_close(denormalize_depth(normalized, near, far)[inside], depth[inside])
    assert to_unit_range(normalized).min() >= 0 and to_unit_range(normalized).max() <= 1


def test_flat_depth_does_not_divide_by_zero():
    normalized, _, _ = normalize_depth(torch.full((1, 1, 4, 4), 2.0))
    assert torch.isfinite(normalized).all()
