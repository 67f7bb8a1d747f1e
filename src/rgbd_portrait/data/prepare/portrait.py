"""One face in one image → one aligned sample: crop, person mask, depth (pseudo, or measured by a depth camera)
and metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from rgbd_portrait.data.prepare.alignment import Alignment, align_face, warp_depth_to_crop, warp_to_crop
from rgbd_portrait.data.prepare.backends import DepthBackend
from rgbd_portrait.data.prepare.face_mesh import FaceGeometry, face_geometry
from rgbd_portrait.data.prepare.faces import DetectedFace, FaceFinder
from rgbd_portrait.data.prepare.segmentation import PersonSegmenter, person_mask
from rgbd_portrait.data.rgbd_captures import DepthCapture, face_depth, person_pixels
from rgbd_portrait.data.sample_format import PortraitSample
from rgbd_portrait.errors import UserInputError


class PortraitPreparer:
    """Finds faces and turns each into a `PortraitSample` of side `size` with `depth_backend`'s depth."""

    def __init__(self, *, size: int, depth_backend: DepthBackend, min_face_confidence: float = 0.5) -> None:
        self.size = size
        self.depth_backend = depth_backend
        self._faces = FaceFinder(min_confidence=min_face_confidence)
        self._segmenter = PersonSegmenter()

    def close(self) -> None:
        self._faces.close()
        self._segmenter.close()

    def find_faces(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an RGB uint8 image, largest first."""
        return self._faces.find(image)

    def align(self, face: DetectedFace) -> Alignment:
        return align_face(face.landmarks, self.size)

    def sample(
        self, image: np.ndarray, face: DetectedFace, alignment: Alignment, *, meta: dict[str, Any]
    ) -> PortraitSample:
        """The sample for `face` cropped by `alignment`; `meta` (identity, source, ...) is extended."""
        crop, inside_image = warp_to_crop(image, alignment)
        geometry = face_geometry(alignment.landmarks_to_crop(face.landmarks), self.size)
        mask = person_mask(self._segmenter.probability(crop), face=geometry.region, valid=inside_image)
        depth = self.depth_backend.estimate(crop, face=geometry, foreground=mask)
        meta = {
            **meta,
            **_face_meta(face, alignment, geometry),
            "depth_source": "pseudo",
            "depth_backend": self.depth_backend.name,
        }
        return PortraitSample(rgb=crop, depth=np.where(mask, depth, 0.0).astype(np.float32), mask=mask, meta=meta)

    def measured_sample(
        self, capture: DepthCapture, face: DetectedFace, alignment: Alignment, *, meta: dict[str, Any]
    ) -> PortraitSample:
        """The sample of a depth-camera capture: its measured depth on the person (`person_pixels`, which leaves
        out a wall behind) is the depth, the person the mask; no segmentation or depth estimate is needed.

        The sensor's units are taken as proportional to distance and scaled so that the face lies at the
        nominal camera's distance (`nominal_scale`), as the face mesh of a photo does.
        """
        crop, inside_image = warp_to_crop(capture.rgb, alignment)
        geometry = face_geometry(alignment.landmarks_to_crop(face.landmarks), self.size)
        sensor_face_depth = face_depth(capture.depth, face.landmarks)
        if sensor_face_depth is None:
            raise UserInputError(f"{capture.key}: no depth at the face")
        nominal_face_depth = float(np.median(geometry.camera.landmark_depth(geometry.landmarks)))
        person = person_pixels(capture.depth, face.landmarks).numpy()
        metres = capture.depth.numpy() * (nominal_face_depth / sensor_face_depth)
        depth, measured = warp_depth_to_crop(metres, person, alignment)
        mask = measured & inside_image
        meta = {**meta, **_face_meta(face, alignment, geometry), "depth_source": "measured"}
        return PortraitSample(rgb=crop, depth=np.where(mask, depth, 0.0).astype(np.float32), mask=mask, meta=meta)


def _face_meta(face: DetectedFace, alignment: Alignment, geometry: FaceGeometry) -> dict[str, Any]:
    return {
        **geometry.camera.meta(),
        "face_score": round(face.score, 4),
        # The face mesh in the crop: x, y in pixels (centres at integers) and z-depth in metres. Evaluation
        # scores depth at these points; training trusts pseudo-depth most inside their outline.
        "face_landmarks": geometry.landmark_table(),
        # Where the crop came from, in source-image pixels (centres at integers), to paste results back.
        "crop_in_source": {"center": alignment.center.tolist(), "half_axis": alignment.half_axis.tolist()},
    }
