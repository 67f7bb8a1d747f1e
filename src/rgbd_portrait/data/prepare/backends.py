"""The pseudo-depth backends, by name. Importing this module loads none of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from rgbd_portrait.data.prepare.face_mesh import FaceGeometry
from rgbd_portrait.errors import UserInputError

MODEL_OUTPUT_KINDS = ("auto", "disparity", "metric")


class DepthBackend(Protocol):
    name: str  # recorded in each sample's meta.json as "depth_backend"

    def estimate(self, image: np.ndarray, *, face: FaceGeometry, foreground: np.ndarray) -> np.ndarray:
        """Depth (H, W) float32 in nominal metres for an aligned crop (H, W, 3) uint8; valid on `foreground`."""
        ...


def _face_mesh(*, model_path: str | None, device: str | None, output: str) -> DepthBackend:
    from rgbd_portrait.data.prepare.face_mesh_depth import FaceMeshDepth

    return FaceMeshDepth()


def _transformers(*, model_path: str | None, device: str | None, output: str) -> DepthBackend:
    from rgbd_portrait.data.prepare.transformers_depth import TransformersDepth

    return TransformersDepth(model_path, device=device, output=output)


# Our own model's image→depth joins this table once a trained model exists.
DEPTH_BACKENDS: dict[str, Callable[..., DepthBackend]] = {
    "face-mesh": _face_mesh,
    "transformers": _transformers,
}


def check_depth_backend_options(name: str, *, model_path: str | None = None, output: str = "auto") -> None:
    """Reject a bad backend choice before any work starts (cheap: loads nothing)."""
    if name not in DEPTH_BACKENDS:
        raise UserInputError(f"depth backend {name!r}: expected one of {', '.join(DEPTH_BACKENDS)}")
    if name != "transformers":
        if model_path is not None or output != "auto":
            raise UserInputError("--depth-model and --depth-model-output are only used by the transformers backend")
        return
    if model_path is None:
        raise UserInputError("the transformers depth backend needs --depth-model, a local model folder")
    if not (Path(model_path) / "config.json").is_file():
        raise UserInputError(f"{model_path}: not a transformers model folder (no config.json)")
    if output not in MODEL_OUTPUT_KINDS:
        raise UserInputError(f"depth model output {output!r}: expected one of {', '.join(MODEL_OUTPUT_KINDS)}")


def create_depth_backend(
    name: str, *, model_path: str | None = None, device: str | None = None, output: str = "auto"
) -> DepthBackend:
    """Build the backend `name`; `model_path`, `device` and `output` configure the transformers backend."""
    check_depth_backend_options(name, model_path=model_path, output=output)
    return DEPTH_BACKENDS[name](model_path=model_path, device=device, output=output)
