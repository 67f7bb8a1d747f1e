"""Square face crops aligned on the eyes and mouth, as in the FFHQ collection.

The crop is centred slightly below the eyes, rotated so the eyes are level, and sized from the larger of
the eye distance and the eye-to-mouth distance, so faces land at the same place and scale in every crop.
All coordinates use pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbd_portrait.data.image_io import soften_outside
from rgbd_portrait.data.prepare.dependencies import import_cv2
from rgbd_portrait.data.prepare.nominal_scale import MOUTH_CORNERS, eye_centers

# FFHQ's proportions: half the crop side is max(2 × eye distance, 1.8 × eye-to-mouth distance), and the
# centre sits a tenth of the way from the eyes to the mouth.
EYE_DISTANCE_FACTOR = 2.0
EYE_TO_MOUTH_FACTOR = 1.8
CENTER_SHIFT_TOWARDS_MOUTH = 0.1


def _perpendicular(vector: np.ndarray) -> np.ndarray:
    """`vector` turned a quarter: image x (right) → image y (down)."""
    return np.array([-vector[1], vector[0]])


@dataclass(frozen=True)
class Alignment:
    """A square crop of side `size` pixels whose horizontal half-axis is `half_axis` in the image."""

    center: np.ndarray  # (2,) image pixels
    half_axis: np.ndarray  # (2,) image pixels, from the centre to the middle of the crop's right edge
    size: int

    @property
    def pixel_scale(self) -> float:
        """Image pixels per crop pixel."""
        return float(2.0 * np.linalg.norm(self.half_axis) / self.size)

    def crop_to_image(self) -> np.ndarray:
        """2×3 affine map from crop pixels to image pixels."""
        along_x, along_y = self.half_axis, _perpendicular(self.half_axis)
        linear = np.stack([along_x, along_y], axis=1) * (2.0 / self.size)
        offset = self.center + (1.0 / self.size - 1.0) * (along_x + along_y)
        return np.concatenate([linear, offset[:, None]], axis=1)

    def landmarks_to_crop(self, landmarks: np.ndarray) -> np.ndarray:
        """Image landmarks (N, 3) → crop pixels, z rescaled by the same factor as x and y."""
        affine = self.crop_to_image()
        inverse = np.linalg.inv(affine[:, :2])
        crop = np.empty_like(landmarks, dtype=np.float64)
        crop[:, :2] = (landmarks[:, :2] - affine[:, 2]) @ inverse.T
        crop[:, 2] = landmarks[:, 2] / self.pixel_scale
        return crop.astype(np.float32)


def align_face(landmarks: np.ndarray, size: int) -> Alignment:
    """The FFHQ-style crop for face-mesh landmarks (N, 3) in image pixels."""
    right_eye, left_eye = (point[:2].astype(np.float64) for point in eye_centers(landmarks))
    mouth = landmarks[list(MOUTH_CORNERS), :2].astype(np.float64).mean(axis=0)
    eye_middle = (right_eye + left_eye) / 2
    eye_to_eye = left_eye - right_eye
    eye_to_mouth = mouth - eye_middle
    # Average the direction given by the eyes with the one given by the eye-to-mouth line.
    direction = eye_to_eye - _perpendicular(eye_to_mouth)
    norm = np.linalg.norm(direction)
    if norm == 0:
        raise ValueError("degenerate face landmarks: eyes and mouth coincide")
    half_side = max(
        EYE_DISTANCE_FACTOR * np.linalg.norm(eye_to_eye), EYE_TO_MOUTH_FACTOR * np.linalg.norm(eye_to_mouth)
    )
    return Alignment(
        center=eye_middle + CENTER_SHIFT_TOWARDS_MOUTH * eye_to_mouth,
        half_axis=direction / norm * half_side,
        size=size,
    )


def _warp(array: np.ndarray, alignment: Alignment, *, border: int, nearest: bool = False) -> np.ndarray:
    """Resampling of `array` (H, W) or (H, W, C) into the crop, bilinear unless `nearest`."""
    cv2 = import_cv2()
    affine = alignment.crop_to_image()
    height, width = array.shape[:2]
    # Shrink large images first with area averaging: the bilinear warp alone would alias.
    shrink = int(alignment.pixel_scale)
    if shrink >= 2:
        small = cv2.resize(array, (max(width // shrink, 1), max(height // shrink, 1)), interpolation=cv2.INTER_AREA)
        factors = np.array([small.shape[1] / width, small.shape[0] / height])
        # Image pixel p ↔ shrunk pixel (p + 0.5) * factor - 0.5.
        affine = np.concatenate([affine[:, :2] * factors[:, None], ((affine[:, 2] + 0.5) * factors - 0.5)[:, None]], 1)
        array = small
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    shape = (alignment.size, alignment.size)
    return cv2.warpAffine(np.ascontiguousarray(array), affine, shape, flags=flags, borderMode=border, borderValue=0)


def warp_to_crop(image: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, np.ndarray]:
    """Resample `image` (H, W, 3) uint8 into the crop; returns the crop and where it lies inside the image.

    Outside the image the crop is an out-of-focus backdrop (`soften_outside` of the image mirrored there), so
    the network sees neither a hard border nor mirrored copies of the face; those pixels are marked invalid and
    end up as background.
    """
    cv2 = import_cv2()
    inside = _warp(np.ones(image.shape[:2], dtype=np.uint8), alignment, border=cv2.BORDER_CONSTANT, nearest=True)
    inside = inside.astype(bool)
    return soften_outside(_warp(image, alignment, border=cv2.BORDER_REFLECT_101), inside), inside


def warp_depth_to_crop(depth: np.ndarray, valid: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, np.ndarray]:
    """Resample measured `depth` (H, W) into the crop from its `valid` pixels (H, W) bool only.

    Returns the crop's depth (0 where invalid) and where it is valid: where valid pixels make up at least
    half of the interpolation weight, so depth is never averaged with the holes' zeros.
    """
    cv2 = import_cv2()
    weight = valid.astype(np.float32)
    weight_crop = _warp(weight, alignment, border=cv2.BORDER_CONSTANT)
    depth_crop = _warp(np.where(valid, depth, 0).astype(np.float32), alignment, border=cv2.BORDER_CONSTANT)
    valid_crop = weight_crop >= 0.5
    return np.where(valid_crop, depth_crop / np.maximum(weight_crop, 1e-6), 0).astype(np.float32), valid_crop


def smooth_alignments(alignments: list[Alignment], times: np.ndarray, *, sigma_s: float) -> list[Alignment]:
    """Gaussian-smooth crop centres and axes over time (seconds), so video crops do not jitter."""
    if len(alignments) != len(times):
        raise ValueError("one time per alignment is needed")
    if sigma_s <= 0 or len(alignments) < 2:
        return list(alignments)
    centers = np.stack([alignment.center for alignment in alignments])
    axes = np.stack([alignment.half_axis for alignment in alignments])
    times = np.asarray(times, dtype=np.float64)
    order = np.argsort(times)
    sorted_times = times[order]
    smoothed = []
    for index, alignment in enumerate(alignments):
        start, stop = np.searchsorted(sorted_times, [times[index] - 3 * sigma_s, times[index] + 3 * sigma_s + 1e-9])
        neighbours = order[start:stop]
        weights = np.exp(-0.5 * ((times[neighbours] - times[index]) / sigma_s) ** 2)
        weights /= weights.sum()
        smoothed.append(
            Alignment(center=weights @ centers[neighbours], half_axis=weights @ axes[neighbours], size=alignment.size)
        )
    return smoothed
