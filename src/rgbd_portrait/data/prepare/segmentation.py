"""Foreground (person) masks from MediaPipe's bundled selfie-segmentation model."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rgbd_portrait.data.prepare.dependencies import import_mediapipe

PERSON_THRESHOLD = 0.5


class PersonSegmenter:
    """Per-pixel probability that an RGB uint8 image shows a person."""

    def __init__(self) -> None:
        mediapipe = import_mediapipe()
        # Model 0 is the general (square-input) model, which suits square crops.
        self._model = mediapipe.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def close(self) -> None:
        self._model.close()

    def probability(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.process(np.ascontiguousarray(image)).segmentation_mask, dtype=np.float32)


def person_mask(
    probability: np.ndarray, *, face: np.ndarray, valid: np.ndarray, threshold: float = PERSON_THRESHOLD
) -> np.ndarray:
    """The person whose face is `face` (a boolean region): segmented pixels joined to it, inside `valid`.

    The face always counts as foreground (the segmenter can miss parts of it), and segmented regions not
    connected to the face (other people, false positives) are dropped.
    """
    mask = ((probability > threshold) | face) & valid
    labels, _ = ndimage.label(mask)
    face_labels = np.unique(labels[face & valid])
    return np.isin(labels, face_labels[face_labels > 0])
