"""Inference: one pipeline object with a method per task, its outputs, and the file-level tasks the CLI runs.

The names below are imported on first use, so that light submodules (e.g. `export`'s constants, read by the
CLI to build its parsers) do not pull in diffusers.
"""

import importlib

_EXPORTED = {
    "RGBDPortraitOutput": "rgbd_portrait.pipelines.output",
    "RGBDRelightingOutput": "rgbd_portrait.pipelines.output",
    "RGBDPortraitPipeline": "rgbd_portrait.pipelines.pipeline",
}
__all__ = sorted(_EXPORTED)


def __getattr__(name: str):
    if name not in _EXPORTED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTED[name]), name)
