"""The sphere tracer against shapes with known answers, and the head render's internal consistency."""

import math

import numpy as np
import pytest
import torch

from rgbd_portrait.data.synth import Camera, DirectionalLight, Expression, Pose, View, render, render_samples
from rgbd_portrait.data.synth.head import HeadScene
from rgbd_portrait.data.synth.parameters import Lighting, sample_identity, sample_lighting
from rgbd_portrait.data.synth.scene import Columns, ParameterTable
from rgbd_portrait.geometry.camera import unproject_depth
from rgbd_portrait.geometry.normals import normals_from_depth

# Stated accuracy of the renderer on smooth exact distance fields (after its refinement step).
DEPTH_TOLERANCE_M = 2e-4
NORMAL_TOLERANCE_DEGREES = 1.0

SIZE = 48
CAMERA = Camera(size=SIZE, focal_length_mm=70.0, distance=1.0)
GREY = Lighting(
    sh_coefficients=((2.0 * math.sqrt(math.pi) * 0.5,) * 3,) + ((0.0, 0.0, 0.0),) * 8,
    lights=(DirectionalLight(azimuth=30.0, elevation=20.0, intensity=0.6, colour=(1.0, 1.0, 1.0), casts_shadow=True),),
    backdrop_top=(0.2, 0.2, 0.2),
    backdrop_bottom=(0.1, 0.1, 0.1),
)


class AnalyticScene:
    """One shape per image in the camera frame (identity transform): a sphere or a half-space."""

    def __init__(self, rows, bounding_spheres):
        """`bounding_spheres`: per image, a list of (x, y, z, radius)."""
        self.parameters = ParameterTable(rows)
        batch = len(rows)
        self.rotation = torch.eye(3).expand(batch, 3, 3).clone()
        self.translation = torch.zeros(batch, 3)
        spheres = torch.tensor(bounding_spheres, dtype=torch.float32)
        self.bounding_ellipsoids = torch.cat([spheres[..., :3], spheres[..., 3:].expand(*spheres.shape[:-1], 3)], -1)

    def distance(self, points, p: Columns):
        x, y, z = points
        sphere = torch.sqrt((x - p["cx"]) ** 2 + (y - p["cy"]) ** 2 + (z - p["cz"]) ** 2) - p["radius"]
        plane = x * p["nx"] + y * p["ny"] + z * p["nz"] - p["offset"]
        return torch.where(p["is_plane"] > 0, plane, sphere)

    def albedo(self, points, p: Columns):
        return torch.full((3, points[0].shape[0]), 0.5)


def _pixel_rays(camera):
    intrinsics = camera.intrinsics()
    rows, columns = np.mgrid[0 : camera.size, 0 : camera.size] + 0.5
    directions = np.stack(
        [(columns - intrinsics.cx) / intrinsics.fx, -(rows - intrinsics.cy) / intrinsics.fy, -np.ones(rows.shape)], -1
    )
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def _sphere_truth(camera, centre, radius):
    rays = _pixel_rays(camera)
    along = rays @ centre
    discriminant = along**2 - (centre @ centre - radius**2)
    hit = discriminant > 0
    t = along - np.sqrt(np.maximum(discriminant, 0.0))
    points = rays * t[..., None]
    return hit, np.where(hit, -points[..., 2], 0.0), (points - centre) / radius


def _interior(mask):
    """Pixels whose 4-neighbours are all inside the mask: away from the silhouette."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _angles_degrees(a, b):
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def _render_analytic(row, bound):
    return render(AnalyticScene([row], [[bound]]), [CAMERA], [[GREY]])


def test_sphere_depth_normals_and_mask_match_the_analytic_sphere():
    centre, radius = np.array([0.03, -0.02, -1.0]), 0.18
    row = dict(cx=centre[0], cy=centre[1], cz=centre[2], radius=radius, nx=0, ny=0, nz=0, offset=0, is_plane=0)
    output = _render_analytic(row, [*centre, radius + 0.01])
    hit, depth, normals = _sphere_truth(CAMERA, centre, radius)
    mask = output.mask[0].numpy()
    # Only rays grazing the silhouette may disagree.
    assert (mask != hit).sum() <= 0.02 * hit.sum()
    inner = _interior(hit) & mask
    assert np.abs(output.depth[0].numpy() - depth)[inner].max() < DEPTH_TOLERANCE_M
    assert _angles_degrees(output.normal[0].numpy(), normals)[inner].max() < NORMAL_TOLERANCE_DEGREES
    # The depth unprojects, with the stored intrinsics, onto the sphere.
    points = unproject_depth(output.depth[0], CAMERA.intrinsics()).permute(1, 2, 0).numpy()
    assert np.abs(np.linalg.norm(points - centre, axis=-1) - radius)[inner].max() < DEPTH_TOLERANCE_M


def test_tilted_plane_depth_and_normals_match_the_analytic_plane():
    normal = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    anchor = np.array([0.0, 0.0, -1.1])
    row = dict(cx=0, cy=0, cz=0, radius=0, nx=normal[0], ny=normal[1], nz=normal[2], offset=normal @ anchor, is_plane=1)
    output = _render_analytic(row, [*anchor, 0.25])
    rays = _pixel_rays(CAMERA)
    t = (normal @ anchor) / (rays @ normal)
    points = rays * t[..., None]
    inside_bound = np.linalg.norm(points - anchor, axis=-1) < 0.25
    mask = output.mask[0].numpy()
    inner = _interior(inside_bound) & mask
    assert inner.sum() > 0.3 * SIZE * SIZE
    assert np.abs(output.depth[0].numpy() + points[..., 2])[inner].max() < DEPTH_TOLERANCE_M
    assert _angles_degrees(output.normal[0].numpy(), normal)[inner].max() < NORMAL_TOLERANCE_DEGREES


@pytest.fixture(scope="module")
def head_views():
    rng = np.random.default_rng(7)
    identity = sample_identity(rng, "id00000")
    camera = Camera(size=64, focal_length_mm=85.0, distance=0.9)
    return [
        View(identity, Expression(), Pose(), camera, sample_lighting(rng), (sample_lighting(rng),)),
        View(identity, Expression(jaw_open=0.8), Pose(yaw=25.0, pitch=-5.0), camera, sample_lighting(rng), ()),
    ]


def test_head_mask_is_exactly_where_depth_is_valid(head_views):
    output = render(HeadScene(head_views), [v.camera for v in head_views], [[v.lighting] for v in head_views])
    depth, mask = output.depth.numpy(), output.mask.numpy()
    assert np.array_equal(mask, depth > 0)
    assert np.isfinite(depth).all() and (depth[mask] > 0.5).all() and (depth[mask] < 1.5).all()
    assert 0.15 < mask.mean() < 0.8
    # Normals are unit vectors on the mask, zero elsewhere.
    normal = output.normal.numpy()
    np.testing.assert_allclose(np.linalg.norm(normal[mask], axis=-1), 1.0, atol=1e-4)
    assert (normal[~mask] == 0).all()


def test_head_normals_agree_with_depth_gradients(head_views):
    sample = render_samples(head_views[:1])[0]
    depth, mask = torch.from_numpy(sample.depth)[None], torch.from_numpy(sample.mask)[None]
    from_depth = normals_from_depth(depth, head_views[0].camera.intrinsics(), mask=mask)[0].permute(1, 2, 0).numpy()
    # Compare away from the silhouette and from occlusion edges (ears, nose, chin), where depth jumps.
    jump = np.maximum(
        np.abs(np.diff(sample.depth, axis=0, prepend=sample.depth[:1])),
        np.abs(np.diff(sample.depth, axis=1, prepend=sample.depth[:, :1])),
    )
    smooth = _interior(_interior(sample.mask)) & (jump < 0.01)
    angles = _angles_degrees(from_depth, sample.normal)[smooth]
    # Finite differences of a 64 px depth map round off creases (lips, lids), so compare typical agreement.
    assert np.median(angles) < 3.0
    assert np.mean(angles < 10.0) > 0.8


def test_relit_image_is_the_same_geometry_under_the_new_light(head_views):
    view = head_views[0]
    original = render_samples([view])[0]
    swapped = render_samples(
        [View(view.identity, view.expression, view.pose, view.camera, view.relights[0], (view.lighting,))]
    )[0]
    np.testing.assert_array_equal(original.relit[0], swapped.rgb)
    np.testing.assert_array_equal(original.rgb, swapped.relit[0])
    np.testing.assert_array_equal(original.depth, swapped.depth)
    np.testing.assert_array_equal(original.albedo, swapped.albedo)


def test_culling_leaves_the_field_near_the_surface_unchanged():
    """Parts evaluated only near their bounds: wherever the full field is within 3 mm of the surface the
    culled field equals it, and within 3 cm it never exceeds it (so marching steps stay safe). Further out
    the culled field uses exact bounds of the skipped parts, which may exceed the full field's estimates."""
    from rgbd_portrait.data.synth.parameters import HAIR_STYLES, Identity, sample_camera, sample_pose

    rng = np.random.default_rng(0)
    views = []
    for index, style in enumerate(HAIR_STYLES):
        identity = Identity(**{**sample_identity(rng, f"id{index}").__dict__, "hair_style": style})
        expression = Expression(jaw_open=float(index % 2), smile=float(index % 3 == 0), blink=float(index % 4 == 0))
        views.append(View(identity, expression, sample_pose(rng), sample_camera(rng, 32), sample_lighting(rng)))
    culled, full = HeadScene(views), HeadScene(views, cull=False)
    count = 200_000
    points = tuple(torch.from_numpy(rng.uniform(low, high, count).astype(np.float32)) for low, high in
                   ((-0.3, 0.3), (-0.45, 0.25), (-0.25, 0.25)))  # fmt: skip
    sample = torch.from_numpy(rng.integers(0, len(views), count))
    exact = full.distance(points, full.parameters.columns(sample))
    approximate = culled.distance(points, culled.parameters.columns(sample))
    near_surface = exact.abs() < 0.003
    assert near_surface.sum() > 1000
    torch.testing.assert_close(approximate[near_surface], exact[near_surface], rtol=0, atol=1e-6)
    within_reach = exact < 0.03
    assert (approximate[within_reach] <= exact[within_reach] + 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_render_matches_cpu(head_views):
    cpu, cuda = render_samples(head_views), render_samples(head_views, device="cuda")
    for a, b in zip(cpu, cuda):
        assert np.mean(a.mask != b.mask) < 0.002
        both = a.mask & b.mask
        assert np.abs(a.depth - b.depth)[both].max() < 1e-3
        assert np.abs(a.rgb.astype(int) - b.rgb.astype(int))[both].mean() < 1.0
