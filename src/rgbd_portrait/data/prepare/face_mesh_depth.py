"""The default pseudo-depth backend: the face mesh rasterised, the rest of the person filled smoothly.

On the face, depth is the mesh's, interpolated across each triangle. Elsewhere on the person (hair, ears,
neck, shoulders, and the eye and mouth openings of the mesh) it is the harmonic fill between the face and
the person's outline, where the depth is that of the farthest point of the face's outline: silhouettes are
where a surface turns away from the camera. The background is put at `NOMINAL_BACKGROUND_DEPTH_M`.
"""

from __future__ import annotations

import functools

import numpy as np

from rgbd_portrait.data.prepare.dependencies import import_mediapipe
from rgbd_portrait.data.prepare.face_mesh import FaceGeometry
from rgbd_portrait.data.prepare.harmonic_fill import harmonic_fill
from rgbd_portrait.data.prepare.nominal_scale import NOMINAL_BACKGROUND_DEPTH_M


@functools.cache
def face_oval_indices() -> np.ndarray:
    mediapipe = import_mediapipe()
    return np.array(sorted({index for edge in mediapipe.solutions.face_mesh.FACEMESH_FACE_OVAL for index in edge}))


class FaceMeshDepth:
    """Pseudo-depth from the face landmarks alone (the image is not looked at)."""

    name = "face-mesh"

    def estimate(self, image: np.ndarray, *, face: FaceGeometry, foreground: np.ndarray) -> np.ndarray:
        known = face.region & foreground
        outline_depth = float(face.camera.landmark_depth(face.landmarks[face_oval_indices()]).max())
        depth = harmonic_fill(
            np.where(known, face.mesh_depth, 0.0), known=known, region=foreground, outside_value=outline_depth
        )
        return np.where(foreground, depth, NOMINAL_BACKGROUND_DEPTH_M).astype(np.float32)
