"""The checkpoint folder: one diffusers-style subfolder per component plus `model_index.json`.

::

    model_index.json                 class name, format version, component classes, channel layout, settings
    backbone/       config.json + diffusion_pytorch_model.safetensors   (UNet2DConditionModel, expanded)
    reference_net/  config.json + diffusion_pytorch_model.safetensors   (ReferenceNet)
    context/        config.json + diffusion_pytorch_model.safetensors   (LearnedContext or ClipImageContext)
    vae/            config.json + diffusion_pytorch_model.safetensors   (AutoencoderKL, or WideDecoderAutoencoderKL)
    motion/         optional: temporal and audio layers of the talking-head model (MotionLayers)

Components are written with diffusers' `save_pretrained` (safetensors) into a temporary folder that is renamed
into place, and read back strictly: a missing or unexpected weight, a corrupt file or a folder that is not a
checkpoint is a one-line `UserInputError` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel
from safetensors.torch import save_file

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import atomic_folder
from rgbd_portrait.models.autoencoder import WideDecoderAutoencoderKL
from rgbd_portrait.models.context import ClipImageContext, LearnedContext
from rgbd_portrait.models.motion import MotionLayers
from rgbd_portrait.models.reference import ReferenceNet
from rgbd_portrait.models.weights import assign_weights, empty_weights, read_safetensors

INDEX_NAME = "model_index.json"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
MODEL_CLASS_NAME = "RGBDPortraitModel"
FORMAT_VERSION = 1
# Each component slot and the classes it may hold.
COMPONENT_CLASSES: dict[str, tuple[type[ModelMixin], ...]] = {
    "backbone": (UNet2DConditionModel,),
    "reference_net": (ReferenceNet,),
    "context": (LearnedContext, ClipImageContext),
    "vae": (AutoencoderKL, WideDecoderAutoencoderKL),
    "motion": (MotionLayers,),
}
# Components a checkpoint may leave out (the image model has no motion layers).
OPTIONAL_COMPONENT_NAMES = ("motion",)
COMPONENT_NAMES = tuple(name for name in COMPONENT_CLASSES if name not in OPTIONAL_COMPONENT_NAMES)


def read_json(path: Path, *, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(f"{path}: {what} not found")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: cannot read {what} ({error})") from error
    if not isinstance(content, dict):
        raise UserInputError(f"{path}: {what} must be a JSON object")
    return content


def index_entry(component: ModelMixin) -> list[str]:
    """`[library, class name]`, as diffusers' model_index.json names components."""
    return [type(component).__module__.split(".")[0], type(component).__name__]


# One weights file per component whatever its size (diffusers would shard above 10 GB), as `load_component` reads.
_UNSHARDED = "1000GB"


def save_component(component: ModelMixin, directory: Path, *, dtype: torch.dtype | None = None) -> None:
    """Write `component`; with `dtype`, its floating-point weights are stored in that precision."""
    if dtype is None:
        component.save_pretrained(directory, safe_serialization=True, max_shard_size=_UNSHARDED)
        return
    directory.mkdir(parents=True, exist_ok=True)
    component.save_config(directory)
    state = {
        key: (tensor.to(dtype) if tensor.is_floating_point() else tensor).detach().contiguous().cpu()
        for key, tensor in component.state_dict().items()
    }
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})


def load_component(directory: Path, class_name: str, *, slot: str) -> ModelMixin:
    """Build the `slot` component described by `directory/config.json` and give it exactly the saved weights."""
    allowed = {cls.__name__: cls for cls in COMPONENT_CLASSES[slot]}
    if class_name not in allowed:
        raise UserInputError(f"{directory}: a {slot} must be one of {', '.join(allowed)}, not {class_name!r}")
    config_path = directory / CONFIG_NAME
    config = read_json(config_path, what="component config")
    if config.get("_class_name") != class_name:
        raise UserInputError(f"{config_path}: describes {config.get('_class_name')!r}, the index says {class_name!r}")
    try:
        with empty_weights():
            component = allowed[class_name].from_config(config)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"{config_path}: invalid {class_name} config ({error})") from error
    weights_path = directory / WEIGHTS_NAME
    assign_weights(component, read_safetensors(weights_path), source=str(weights_path))
    component.eval()
    return component


def read_index(directory: Path) -> dict[str, Any]:
    """The checked `model_index.json` of a checkpoint folder."""
    if not directory.is_dir():
        raise UserInputError(f"{directory}: checkpoint folder not found")
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise UserInputError(f"{directory}: not an rgbd-portrait checkpoint (no {INDEX_NAME})")
    index = read_json(index_path, what="model index")
    if index.get("_class_name") != MODEL_CLASS_NAME:
        raise UserInputError(
            f"{index_path}: not an rgbd-portrait model index (_class_name {index.get('_class_name')!r})"
        )
    if index.get("format_version") != FORMAT_VERSION:
        raise UserInputError(
            f"{index_path}: checkpoint format {index.get('format_version')!r}, this version reads {FORMAT_VERSION}"
        )
    for name in (*COMPONENT_NAMES, *(name for name in OPTIONAL_COMPONENT_NAMES if name in index)):
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            raise UserInputError(f"{index_path}: entry {name!r} must be [library, class name], got {entry!r}")
    return index


@contextmanager
def atomic_directory(destination: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `destination` when the block succeeds, and vanishes otherwise.

    With `overwrite`, an existing checkpoint at `destination` is replaced; any other existing path is an error.
    """
    destination = Path(destination)
    if destination.exists():
        if not overwrite:
            raise UserInputError(f"{destination}: already exists (choose another folder or allow overwriting)")
        if not (destination / INDEX_NAME).is_file():
            raise UserInputError(f"{destination}: exists and is not a checkpoint; refusing to replace it")
    with atomic_folder(destination) as temporary:
        yield temporary
