"""Pseudo-depth from any monocular depth model that transformers' AutoModelForDepthEstimation can load.

The weights come from a local folder (for example a downloaded Depth Anything checkpoint); nothing is
fetched. Relative models (DPT, Depth Anything "relative") predict affine-invariant inverse depth
(disparity), which has no scale or shift of its own. It is turned into nominal metres like this: the 2 % and
98 % quantiles of the disparity on the person map to the inverse depths of the nearest face-mesh point
(the nose tip, in the nominal camera) and of a point `NOMINAL_PERSON_DEPTH_RANGE_M` behind it, and the result is
inverted. Metric models (ZoeDepth, GLPN, Depth Pro, Depth Anything "metric") are used as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from rgbd_portrait.data.prepare.backends import check_depth_backend_options
from rgbd_portrait.data.prepare.dependencies import import_cv2
from rgbd_portrait.data.prepare.face_mesh import FaceGeometry
from rgbd_portrait.errors import UserInputError

# From the nose tip to the farthest visible part of a head-and-shoulders portrait.
NOMINAL_PERSON_DEPTH_RANGE_M = 0.3
DISPARITY_QUANTILES = (0.02, 0.98)
_DISPARITY_MODEL_TYPES = ("dpt",)
_METRIC_MODEL_TYPES = ("zoedepth", "glpn", "depth_pro", "prompt_depth_anything")


def model_output_kind(config) -> str:
    """'disparity' or 'metric' for a transformers depth model config, from what the model family predicts."""
    declared = getattr(config, "depth_estimation_type", None)  # Depth Anything states it in its config
    if declared in ("relative", "metric"):
        return "disparity" if declared == "relative" else "metric"
    if config.model_type in _DISPARITY_MODEL_TYPES:
        return "disparity"
    if config.model_type in _METRIC_MODEL_TYPES:
        return "metric"
    raise UserInputError(
        f"depth model type {config.model_type!r}: unknown whether it predicts disparity or metric depth; "
        "say which with --depth-model-output"
    )


def disparity_to_depth(disparity: np.ndarray, foreground: np.ndarray, *, near: float, far: float) -> np.ndarray:
    """Affine-invariant disparity → depth whose foreground spans about [near, far] (see the module text)."""
    values = disparity[foreground] if foreground.any() else disparity.ravel()
    low, high = np.quantile(values, DISPARITY_QUANTILES)
    position = np.clip((disparity - low) / max(float(high - low), 1e-12), 0.0, 1.0)
    inverse_depth = 1.0 / far + position * (1.0 / near - 1.0 / far)
    return (1.0 / inverse_depth).astype(np.float32)


class TransformersDepth:
    """A transformers depth-estimation model from a local folder."""

    def __init__(self, model_path: str | os.PathLike, *, device: str | None = None, output: str = "auto") -> None:
        check_depth_backend_options("transformers", model_path=model_path, output=output)
        model_path = Path(model_path)
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError as error:
            raise UserInputError(
                f"the transformers depth backend needs transformers ({error}); "
                "install it with: pip install 'rgbd-portrait[transformers]'"
            ) from error
        self._torch = torch
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self._processor = AutoImageProcessor.from_pretrained(model_path, local_files_only=True)
            self._model = AutoModelForDepthEstimation.from_pretrained(model_path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise UserInputError(f"{model_path}: cannot load the depth model ({error})") from error
        self._model.to(self._device).eval()
        self.output = model_output_kind(self._model.config) if output == "auto" else output
        self.name = f"transformers:{model_path.name}"

    def estimate(self, image: np.ndarray, *, face: FaceGeometry, foreground: np.ndarray) -> np.ndarray:
        inputs = self._processor(images=Image.fromarray(image), return_tensors="pt")
        inputs = inputs.to(self._model.dtype).to(self._device)
        with self._torch.inference_mode():
            outputs = self._model(**inputs)
        # As in transformers' depth-estimation pipeline: ZoeDepth reads this list as source sizes, the other
        # models as target sizes.
        prediction = self._processor.post_process_depth_estimation(outputs, [image.shape[:2]])[0]["predicted_depth"]
        prediction = prediction.float().cpu().numpy().squeeze()
        if prediction.shape != image.shape[:2]:
            cv2 = import_cv2()
            prediction = cv2.resize(prediction, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        if self.output == "metric":
            return prediction.astype(np.float32)
        near = float(face.camera.landmark_depth(face.landmarks).min())
        return disparity_to_depth(prediction, foreground, near=near, far=near + NOMINAL_PERSON_DEPTH_RANGE_M)
