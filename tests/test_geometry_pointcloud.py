import numpy as np
import pytest
import torch
import trimesh

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.camera import CameraIntrinsics, unproject_depth, unproject_relative_depth
from rgbd_portrait.geometry.pointcloud import colored_point_cloud, depth_mesh, write_mesh, write_point_cloud

HEIGHT, WIDTH = 5, 7
# a focal length like a real camera's, so that a pixel's footprint is small next to the depth steps below
INTRINSICS = CameraIntrinsics(fx=500.0, fy=500.0, cx=WIDTH / 2, cy=HEIGHT / 2)


def _points(depth, intrinsics=INTRINSICS):
    return unproject_depth(torch.as_tensor(depth), intrinsics).movedim(-3, -1).numpy()


def _colors(height=HEIGHT, width=WIDTH):
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_point_cloud_ply_loads_back_with_positions_and_colours(tmp_path):
    points = _points(np.full((HEIGHT, WIDTH), 2.0, np.float32))
    colors = _colors()
    mask = np.ones((HEIGHT, WIDTH), bool)
    mask[1:3, 2:5] = False
    written = write_point_cloud(tmp_path / "cloud.ply", points, colors, mask=mask)
    assert written.read_bytes().startswith(b"ply\nformat binary_little_endian")
    cloud = trimesh.load(written)
    assert isinstance(cloud, trimesh.PointCloud)
    assert len(cloud.vertices) == mask.sum()
    np.testing.assert_allclose(cloud.vertices, points[mask], rtol=1e-6)
    np.testing.assert_array_equal(cloud.colors[:, :3], colors[mask])


def test_float_colours_and_non_finite_points_in_a_point_cloud():
    points = _points(np.full((2, 3), 1.0, np.float32))
    points[0, 1] = np.nan
    cloud = colored_point_cloud(points, np.full((2, 3, 3), 0.5))
    assert len(cloud.vertices) == 5
    assert (cloud.colors[:, :3] == 128).all()


def test_plane_mesh_covers_the_grid_and_faces_the_camera():
    mesh = depth_mesh(_points(np.full((HEIGHT, WIDTH), 3.0, np.float32)), _colors())
    assert len(mesh.vertices) == HEIGHT * WIDTH
    assert len(mesh.faces) == 2 * (HEIGHT - 1) * (WIDTH - 1)
    assert (mesh.face_normals[:, 2] > 0.999).all()
    np.testing.assert_allclose(mesh.area, (3.0 / INTRINSICS.fx) ** 2 * (HEIGHT - 1) * (WIDTH - 1), rtol=1e-5)


def test_mesh_skips_masked_pixels_and_keeps_only_used_vertices():
    mask = np.ones((HEIGHT, WIDTH), bool)
    mask[2, 3] = False  # an interior pixel touches six triangles
    mask[0, 0] = False  # a corner pixel touches one
    mesh = depth_mesh(_points(np.full((HEIGHT, WIDTH), 3.0, np.float32)), _colors(), mask=mask)
    assert len(mesh.faces) == 2 * (HEIGHT - 1) * (WIDTH - 1) - 6 - 1
    assert len(mesh.vertices) == HEIGHT * WIDTH - 2
    lonely = np.zeros((HEIGHT, WIDTH), bool)
    lonely[0, 0] = lonely[2, 2] = True  # valid pixels without valid neighbours make no triangles
    assert len(depth_mesh(_points(np.ones((HEIGHT, WIDTH), np.float32)), _colors(), mask=lonely).vertices) == 0


def test_mesh_drops_triangles_across_a_depth_step_but_keeps_a_steep_plane():
    depth = np.full((HEIGHT, WIDTH), 1.0, np.float32)
    depth[:, 4:] = 1.05  # columns 0–3 near, 4–6 five centimetres (~25 pixel footprints) farther
    mesh = depth_mesh(_points(depth), _colors())
    assert len(mesh.faces) == 2 * (HEIGHT - 1) * (3 + 2)
    assert len(mesh.split(only_watertight=False)) == 2
    # a plane at 70° to the view direction is a surface, not a discontinuity
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    slope = np.tan(np.radians(70.0)) / INTRINSICS.fx  # depth change per pixel for a 70° tilt at depth ~1
    steep = _points((1.0 + slope * (columns - WIDTH / 2)).astype(np.float32))
    assert len(depth_mesh(steep, _colors()).faces) == 2 * (HEIGHT - 1) * (WIDTH - 1)


def test_orthographic_mesh_from_relative_depth():
    width = 64  # the relief (half the image width) is 32 pixels deep
    depth = torch.zeros(HEIGHT, width)
    depth[:, 40:] = 1.0
    points = unproject_relative_depth(depth, field_of_view_degrees=None).movedim(-3, -1).numpy()
    mesh = depth_mesh(points, _colors(HEIGHT, width), orthographic=True)
    assert len(mesh.faces) == 2 * (HEIGHT - 1) * (39 + 23)
    assert (mesh.face_normals[:, 2] > 0.999).all()


@pytest.mark.parametrize("suffix", [".obj", ".glb", ".ply"])
def test_mesh_files_load_back_with_vertex_colours(tmp_path, suffix):
    colors = _colors()
    mask = np.ones((HEIGHT, WIDTH), bool)
    mask[:, 0] = False
    points = _points(np.full((HEIGHT, WIDTH), 2.0, np.float32))
    written = write_mesh(tmp_path / f"mesh{suffix}", points, colors, mask=mask)
    loaded = trimesh.load(written, force="mesh", process=False)
    assert len(loaded.vertices) == mask.sum()
    assert len(loaded.faces) == 2 * (HEIGHT - 1) * (WIDTH - 2)
    np.testing.assert_allclose(loaded.vertices, points[mask], atol=1e-6)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], colors[mask])


def test_bad_export_requests(tmp_path):
    points = _points(np.ones((HEIGHT, WIDTH), np.float32))
    nothing = np.zeros((HEIGHT, WIDTH), bool)
    with pytest.raises(UserInputError, match=r"cloud.xyz: point clouds are written as .ply"):
        write_point_cloud(tmp_path / "cloud.xyz", points, _colors())
    with pytest.raises(UserInputError, match=r"mesh.stl: meshes are written as .obj, .glb, .ply"):
        write_mesh(tmp_path / "mesh.stl", points, _colors())
    with pytest.raises(UserInputError, match="empty.ply: no valid depth pixels"):
        write_point_cloud(tmp_path / "empty.ply", points, _colors(), mask=nothing)
    with pytest.raises(UserInputError, match="empty.obj: no triangles"):
        write_mesh(tmp_path / "empty.obj", points, _colors(), mask=nothing)
    with pytest.raises(ValueError, match="colors"):
        depth_mesh(points, _colors(3, 3))
    with pytest.raises(ValueError, match="points"):
        colored_point_cloud(points[..., :2], _colors())
    assert list(tmp_path.iterdir()) == []
