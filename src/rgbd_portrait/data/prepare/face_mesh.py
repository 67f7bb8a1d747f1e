"""The face mesh as a surface: MediaPipe's triangulation and a z-buffer rasteriser for it."""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from rgbd_portrait.data.prepare.dependencies import import_mediapipe
from rgbd_portrait.data.prepare.nominal_scale import NominalCamera, nominal_camera

# Barycentric tolerance, so pixels on a shared edge are covered by one triangle or the other.
EDGE_TOLERANCE = 1e-6


@functools.cache
def face_mesh_triangles() -> np.ndarray:
    """(F, 3) vertex indices of the face-mesh surface, rebuilt from MediaPipe's tessellation edges.

    The tessellation lists edges only. Every face is a 3-cycle of edges, but a few 3-cycles are not faces:
    they enclose other vertices, and each of their edges is then shared by two real faces besides. Those
    are dropped, leaving the 852 triangles of the canonical mesh.
    """
    mediapipe = import_mediapipe()
    neighbours: dict[int, set[int]] = defaultdict(set)
    for start, end in mediapipe.solutions.face_mesh_connections.FACEMESH_TESSELATION:
        neighbours[start].add(end)
        neighbours[end].add(start)
    cycles = {
        tuple(sorted((first, second, third)))
        for first, seconds in neighbours.items()
        for second in seconds
        for third in neighbours[first] & neighbours[second]
    }
    edge_use = Counter(edge for cycle in cycles for edge in combinations(cycle, 2))
    faces = [cycle for cycle in cycles if any(edge_use[edge] < 3 for edge in combinations(cycle, 2))]
    return np.array(sorted(faces), dtype=np.int64)


def rasterize_depth(vertices: np.ndarray, triangles: np.ndarray, size: int) -> np.ndarray:
    """Nearest surface depth per pixel of a `size`² image; +inf where no triangle covers the pixel centre.

    `vertices` (N, 3) hold pixel x, y (centres at integers) and a depth; depth is interpolated linearly
    within each triangle and the smallest wins.
    """
    depth = np.full((size, size), np.inf, dtype=np.float32)
    corners = vertices[triangles].astype(np.float64)  # (F, 3, 3)
    low = np.clip(np.ceil(corners[:, :, :2].min(axis=1)).astype(np.int64), 0, size)
    high = np.clip(np.floor(corners[:, :, :2].max(axis=1)).astype(np.int64) + 1, 0, size)
    for (a, b, c), (x0, y0), (x1, y1) in zip(corners, low, high):
        if x0 >= x1 or y0 >= y1:
            continue
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < EDGE_TOLERANCE:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        # Barycentric weights of b and c from signed areas.
        weight_b = ((xs - a[0]) * (c[1] - a[1]) - (ys - a[1]) * (c[0] - a[0])) / area
        weight_c = ((b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])) / area
        weight_a = 1.0 - weight_b - weight_c
        inside = (weight_a >= -EDGE_TOLERANCE) & (weight_b >= -EDGE_TOLERANCE) & (weight_c >= -EDGE_TOLERANCE)
        if not inside.any():
            continue
        surface = weight_a * a[2] + weight_b * b[2] + weight_c * c[2]
        window = depth[y0:y1, x0:x1]
        nearer = inside & (surface < window)
        window[nearer] = surface[nearer]
    return depth


@dataclass(frozen=True)
class FaceGeometry:
    """A face in crop coordinates: landmarks, the nominal camera and the rasterised face depth."""

    landmarks: np.ndarray  # (478, 3) crop pixels, z relative to the head centre
    camera: NominalCamera
    mesh_depth: np.ndarray  # (size, size) float32 metres, +inf off the face

    @property
    def region(self) -> np.ndarray:
        return np.isfinite(self.mesh_depth)

    def landmark_table(self) -> list[list[float]]:
        """The landmarks as rows of x, y (crop pixels) and z-depth (metres), rounded for a sample's meta.json."""
        depth = self.camera.landmark_depth(self.landmarks)
        return [
            [round(float(x), 2), round(float(y), 2), round(float(z), 5)]
            for (x, y), z in zip(self.landmarks[:, :2], depth)
        ]


def face_geometry(landmarks: np.ndarray, size: int) -> FaceGeometry:
    """Rasterise the face mesh of landmarks (N, 3) given in pixels of a crop of side `size`."""
    camera = nominal_camera(landmarks, size)
    vertices = np.concatenate([landmarks[:, :2], camera.landmark_depth(landmarks)[:, None]], axis=1)
    mesh_depth = rasterize_depth(vertices, face_mesh_triangles(), size)
    return FaceGeometry(landmarks=landmarks, camera=camera, mesh_depth=mesh_depth)
