"""Coloured point clouds and triangle meshes from a depth map, and their files (.ply, .obj, .glb).

Inputs are numpy arrays at this file boundary, channels-last: camera-space points (H, W, 3) as made by
`rgbd_portrait.geometry.camera` (e.g. `unproject_depth(depth, intrinsics).movedim(-3, -1).numpy()`),
colours (H, W, 3) in [0, 1] or uint8, and an optional mask (H, W) of valid pixels. Coordinates stay in
camera space (x right, y up, z towards the camera), which is also glTF's convention, so a viewer opens the
mesh facing the camera.

The mesh joins each 2×2 block of valid pixels with two triangles. Triangles seen almost edge-on from the
camera are dropped: on a depth map they are the walls that would join a subject to what lies behind it
across a depth discontinuity.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from rgbd_portrait.data.image_io import to_uint8_rgb
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import write_bytes_atomically

# Triangles whose normal is more than ~87° from the direction to the camera are discontinuity walls.
DEFAULT_MIN_VIEW_COSINE = 0.05
MESH_SUFFIXES = (".obj", ".glb", ".ply")


def _valid_pixels(points: np.ndarray, colors: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (H, W, 3), got {points.shape}")
    if colors.shape[:2] != points.shape[:2]:
        raise ValueError(f"colors {colors.shape} do not match points {points.shape}")
    valid = np.isfinite(points).all(axis=-1)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    return valid


def _rgba(colors: np.ndarray) -> np.ndarray:
    rgb = to_uint8_rgb(np.asarray(colors))
    return np.concatenate((rgb, np.full((*rgb.shape[:-1], 1), 255, np.uint8)), axis=-1)


def colored_point_cloud(
    points: np.ndarray, colors: np.ndarray, *, mask: np.ndarray | None = None
) -> trimesh.PointCloud:
    """One coloured point per valid pixel, in row-major pixel order."""
    points, colors = np.asarray(points), np.asarray(colors)
    valid = _valid_pixels(points, colors, mask)
    return trimesh.PointCloud(points[valid].astype(np.float32), colors=_rgba(colors)[valid])


def depth_mesh(
    points: np.ndarray,
    colors: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    orthographic: bool = False,
    min_view_cosine: float = DEFAULT_MIN_VIEW_COSINE,
) -> trimesh.Trimesh:
    """Triangle mesh over the pixel grid with vertex colours, without walls across depth discontinuities.

    A triangle is kept when its three pixels are valid and the cosine between its normal and the direction
    to the camera (from the origin for a pinhole camera, +z when `orthographic`) is at least
    `min_view_cosine`. Vertices are the valid pixels used by a kept triangle, in row-major order; triangles
    wind counter-clockwise seen from the camera.
    """
    points, colors = np.asarray(points), np.asarray(colors)
    valid = _valid_pixels(points, colors, mask)
    height, width = valid.shape
    pixel_index = np.arange(height * width).reshape(height, width)
    top_left, top_right = pixel_index[:-1, :-1], pixel_index[:-1, 1:]
    bottom_left, bottom_right = pixel_index[1:, :-1], pixel_index[1:, 1:]
    faces = np.concatenate(
        (
            np.stack((top_left, bottom_left, top_right), axis=-1).reshape(-1, 3),
            np.stack((top_right, bottom_left, bottom_right), axis=-1).reshape(-1, 3),
        )
    )
    faces = faces[valid.reshape(-1)[faces].all(axis=1)]

    vertices = points.reshape(-1, 3).astype(np.float64)
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    towards_camera = np.array([0.0, 0.0, 1.0]) if orthographic else -corners.mean(axis=1)
    cosine = (normals * towards_camera).sum(axis=-1) / np.maximum(
        np.linalg.norm(normals, axis=-1) * np.linalg.norm(towards_camera, axis=-1), 1e-30
    )
    faces = faces[cosine >= min_view_cosine]

    used, compact_faces = np.unique(faces, return_inverse=True)
    return trimesh.Trimesh(
        vertices=vertices[used].astype(np.float32),
        faces=compact_faces.reshape(-1, 3),
        vertex_colors=_rgba(colors).reshape(-1, 4)[used],
        process=False,
    )


def write_point_cloud(
    path: str | os.PathLike, points: np.ndarray, colors: np.ndarray, *, mask: np.ndarray | None = None
) -> Path:
    """Binary little-endian `.ply` of `colored_point_cloud(points, colors, mask=mask)`."""
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise UserInputError(f"{path}: point clouds are written as .ply")
    cloud = colored_point_cloud(points, colors, mask=mask)
    if len(cloud.vertices) == 0:
        raise UserInputError(f"{path}: no valid depth pixels to write")
    return write_bytes_atomically(path, cloud.export(file_type="ply", encoding="binary"))


def write_mesh(
    path: str | os.PathLike,
    points: np.ndarray,
    colors: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    orthographic: bool = False,
    min_view_cosine: float = DEFAULT_MIN_VIEW_COSINE,
) -> Path:
    """`depth_mesh(...)` with vertex colours as `.obj`, `.glb` or `.ply`, chosen by the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise UserInputError(f"{path}: meshes are written as {', '.join(MESH_SUFFIXES)}")
    mesh = depth_mesh(points, colors, mask=mask, orthographic=orthographic, min_view_cosine=min_view_cosine)
    if len(mesh.faces) == 0:
        raise UserInputError(f"{path}: no triangles to write (no valid neighbouring depth pixels)")
    data = mesh.export(file_type=suffix[1:])
    return write_bytes_atomically(path, data.encode() if isinstance(data, str) else data)
