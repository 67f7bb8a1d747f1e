"""The nominal camera that turns face-mesh units into metres-like depth.

A single photo does not reveal absolute scale, so prepared samples use a documented convention: the distance
between the eye centres is `NOMINAL_INTEROCULAR_M` (measured in 3-D, so head yaw does not change it) and the
centre of the head sits `NOMINAL_HEAD_DISTANCE_M` in front of a pinhole camera whose focal length makes the
crop's pixel size at that distance agree with the face's scale. The model normalises depth per image, so
only the shape matters for training; the scale keeps normals and relighting plausible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NOMINAL_INTEROCULAR_M = 0.063
NOMINAL_HEAD_DISTANCE_M = 1.0
# Where the face-mesh backend puts the background in its dense output (the saved depth is 0 there).
NOMINAL_BACKGROUND_DEPTH_M = 2.0

# MediaPipe face-mesh indices (478-point topology): eye corners and mouth corners, image-left first.
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
MOUTH_CORNERS = (61, 291)


def eye_centers(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the two eyes (image-left first) from their corners, in the landmarks' units."""
    return landmarks[list(RIGHT_EYE_CORNERS)].mean(axis=0), landmarks[list(LEFT_EYE_CORNERS)].mean(axis=0)


@dataclass(frozen=True)
class NominalCamera:
    """Pinhole camera of a square crop, consistent with the nominal face scale."""

    metres_per_pixel: float  # at the head centre
    size: int

    @property
    def focal_px(self) -> float:
        return NOMINAL_HEAD_DISTANCE_M / self.metres_per_pixel

    def landmark_depth(self, landmarks: np.ndarray) -> np.ndarray:
        """Depth in metres of landmarks (N, 3) whose z is in crop pixels relative to the head centre."""
        return (NOMINAL_HEAD_DISTANCE_M + landmarks[:, 2] * self.metres_per_pixel).astype(np.float32)

    def intrinsics(self) -> list[list[float]]:
        """3×3 pinhole matrix in pixels, principal point at the crop centre."""
        focal, center = self.focal_px, self.size / 2.0
        return [[focal, 0.0, center], [0.0, focal, center], [0.0, 0.0, 1.0]]

    def meta(self) -> dict[str, Any]:
        return {
            "intrinsics": self.intrinsics(),
            "depth_scale": {
                "units": "nominal metres",
                "interocular_m": NOMINAL_INTEROCULAR_M,
                "head_distance_m": NOMINAL_HEAD_DISTANCE_M,
            },
        }


def nominal_camera(landmarks: np.ndarray, size: int) -> NominalCamera:
    """The nominal camera for face-mesh landmarks (N, 3) given in pixels of a crop of side `size`."""
    right, left = eye_centers(landmarks)
    interocular_px = float(np.linalg.norm(left - right))
    if interocular_px <= 0:
        raise ValueError("degenerate face landmarks: both eyes at the same point")
    return NominalCamera(metres_per_pixel=NOMINAL_INTEROCULAR_M / interocular_px, size=size)
