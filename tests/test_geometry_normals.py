import math

import pytest
import torch

from rgbd_portrait.geometry.camera import CameraIntrinsics, unproject_depth, unproject_relative_depth
from rgbd_portrait.geometry.normals import normals_from_depth, normals_from_points, normals_from_relative_depth

HEIGHT, WIDTH = 48, 64
INTRINSICS = CameraIntrinsics(fx=70.0, fy=72.0, cx=30.0, cy=25.0)


def _rays(intrinsics=INTRINSICS, height=HEIGHT, width=WIDTH):
    """Per-pixel ray directions (3, H, W) scaled so that their z is -1 (so depth is the ray parameter)."""
    rows, columns = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5, torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij"
    )
    x = (columns - intrinsics.cx) / intrinsics.fx
    y = -(rows - intrinsics.cy) / intrinsics.fy
    return torch.stack((x, y, -torch.ones_like(x)))


def _plane_depth(normal, offset, intrinsics=INTRINSICS):
    """Depth of the plane {p : normal · p = offset}, rendered by intersecting each pixel's ray."""
    rays = _rays(intrinsics)
    return offset / torch.einsum("c,chw->hw", normal, rays)


def _sphere_depth(centre, radius, intrinsics=INTRINSICS, height=HEIGHT, width=WIDTH):
    """Depth, mask and exact normals of a sphere, rendered by intersecting each pixel's ray."""
    rays = _rays(intrinsics, height, width)
    a = (rays * rays).sum(0)
    b = -2.0 * torch.einsum("c,chw->hw", centre, rays)
    c = centre.dot(centre) - radius**2
    discriminant = b * b - 4.0 * a * c
    mask = discriminant > 0
    depth = torch.where(mask, (-b - discriminant.clamp_min(0).sqrt()) / (2.0 * a), torch.zeros_like(a))
    normals = (depth * rays - centre.view(3, 1, 1)) / radius
    return depth, mask, normals


def _interior(mask):
    """Pixels whose four neighbours are all in the mask: there the differences are central."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(padded, cross)[0, 0] == 5


def _angle_degrees(first, second):
    cosine = (first * second).sum(dim=-3).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


def test_tilted_plane_normals_are_exact_everywhere():
    normal = torch.nn.functional.normalize(torch.tensor([0.4, -0.3, 0.85], dtype=torch.float64), dim=0)
    depth = _plane_depth(normal, offset=-2.0)
    assert (depth > 0).all()
    normals = normals_from_depth(depth.float(), INTRINSICS)
    angle = _angle_degrees(normals.double(), normal.view(3, 1, 1))
    assert angle.max() < 0.05  # differences of points on a plane lie in the plane: only rounding remains


def test_sphere_normals_match_the_analytic_ones():
    depth, mask, truth = _sphere_depth(torch.tensor([0.1, -0.05, -3.0], dtype=torch.float64), radius=1.0)
    normals = normals_from_depth(depth.float(), INTRINSICS, mask=mask)
    angle = _angle_degrees(normals.double(), truth)
    within_45_degrees = mask & (truth[2] > 0.7)
    assert angle[within_45_degrees & _interior(mask)].max() < 0.5  # central differences
    assert angle[within_45_degrees].max() < 2.5  # one-sided differences on the mask's edge
    assert angle[mask].median() < 0.1
    assert (normals[:, ~mask] == 0).all()
    assert (normals[:, mask].norm(dim=0) > 0.999).all()  # the one-sided differences cover the rim


def test_mask_edges_use_one_sided_differences():
    normal = torch.nn.functional.normalize(torch.tensor([-0.2, 0.5, 0.8], dtype=torch.float64), dim=0)
    depth = _plane_depth(normal, offset=-1.5)
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[10:30, 12:40] = True
    depth = torch.where(mask, depth, torch.full_like(depth, 50.0))  # a far background wall
    normals = normals_from_depth(depth.float(), INTRINSICS, mask=mask)
    assert _angle_degrees(normals.double(), normal.view(3, 1, 1))[mask].max() < 0.05
    # without the mask the border pixels mix the wall into the plane
    unmasked = normals_from_depth(depth.float(), INTRINSICS)
    assert _angle_degrees(unmasked.double(), normal.view(3, 1, 1))[mask].max() > 30


def test_isolated_pixels_have_no_normal():
    depth = torch.ones(5, 5)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[2, 2] = True  # no neighbour at all
    mask[0, 0:3] = True  # a row without vertical neighbours
    assert (normals_from_depth(depth, INTRINSICS, mask=mask) == 0).all()


def test_non_finite_depth_is_treated_as_background():
    depth = _plane_depth(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), offset=-2.0).float()
    depth[5, 5] = float("nan")
    depth[6, 7] = float("inf")
    normals = normals_from_depth(depth, INTRINSICS)
    assert torch.isfinite(normals).all()
    assert (normals[:, 5, 5] == 0).all() and (normals[:, 6, 7] == 0).all()
    torch.testing.assert_close(normals[:, 20, 20], torch.tensor([0.0, 0.0, 1.0]))


def test_batched_depth_gives_per_image_normals():
    first = _plane_depth(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), offset=-2.0)
    tilted = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64), dim=0)
    second = _plane_depth(tilted, offset=-2.0)
    normals = normals_from_depth(torch.stack((first, second)).float(), INTRINSICS)
    assert normals.shape == (2, 3, HEIGHT, WIDTH)
    torch.testing.assert_close(normals[1, :, 10, 10], tilted.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(normals[0], normals_from_depth(first.float(), INTRINSICS))


def test_relative_depth_of_a_sphere_with_the_right_assumptions_gives_exact_normals():
    field_of_view = 40.0
    intrinsics = CameraIntrinsics.from_field_of_view(HEIGHT, WIDTH, field_of_view)
    depth, mask, truth = _sphere_depth(torch.tensor([0.0, 0.0, -4.0], dtype=torch.float64), 1.0, intrinsics)
    near, far = depth[mask].min(), depth[mask].max()
    relative = torch.where(mask, (depth - near) / (far - near), torch.zeros_like(depth))
    width_at_near = WIDTH / intrinsics.fx * near  # the image's width at the nearest depth
    relief = float((far - near) / width_at_near)
    normals = normals_from_relative_depth(
        relative.float(), mask=mask, field_of_view_degrees=field_of_view, relief=relief
    )
    within_45_degrees = mask & (truth[2] > 0.7) & _interior(mask)
    assert _angle_degrees(normals.double(), truth)[within_45_degrees].max() < 0.5


def test_orthographic_relative_depth_of_a_plane():
    relief = 0.4
    rows, columns = torch.meshgrid(torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5, indexing="ij")
    slope_right, slope_down = 0.004, -0.003  # relative depth per pixel
    depth = 0.5 + slope_right * (columns - WIDTH / 2) + slope_down * (rows - HEIGHT / 2)
    normals = normals_from_relative_depth(depth, field_of_view_degrees=None, relief=relief)
    # x = column / W, y = -row / W, z = -relief * depth  ⇒  z = -relief * W * (slope_right * x - slope_down * y)
    expected = torch.nn.functional.normalize(
        torch.tensor([relief * WIDTH * slope_right, -relief * WIDTH * slope_down, 1.0]), dim=0
    )
    torch.testing.assert_close(normals, expected.view(3, 1, 1).expand_as(normals), atol=1e-5, rtol=0)


def test_unprojection_conventions():
    intrinsics = CameraIntrinsics.from_matrix([[100.0, 0.0, 2.0], [0.0, 100.0, 1.0], [0.0, 0.0, 1.0]])
    assert intrinsics.as_matrix() == [[100.0, 0.0, 2.0], [0.0, 100.0, 1.0], [0.0, 0.0, 1.0]]
    points = unproject_depth(torch.full((2, 4), 3.0), intrinsics)
    # the pixel right of and below the principal point, (row 1, column 2), has its centre at (2.5, 1.5)
    torch.testing.assert_close(points[:, 1, 2], torch.tensor([0.5 / 100 * 3, -0.5 / 100 * 3, -3.0]))
    ortho = unproject_relative_depth(torch.zeros(2, 4), field_of_view_degrees=None)
    assert ortho[0].max() - ortho[0].min() == pytest.approx(3 / 4)  # image width 1 → 3 pixel steps of 1/4
    fov = CameraIntrinsics.from_field_of_view(10, 20, 90.0)
    assert fov.fx == pytest.approx(10.0) and (fov.cx, fov.cy) == (10.0, 5.0)
    with pytest.raises(ValueError, match="field_of_view"):
        CameraIntrinsics.from_field_of_view(10, 20, 180.0)
    with pytest.raises(ValueError, match="relief"):
        unproject_relative_depth(torch.zeros(2, 2), relief=0.0)
    with pytest.raises(ValueError, match="points"):
        normals_from_points(torch.zeros(2, 4, 4))
    assert math.isclose(points[2].mean().item(), -3.0)
