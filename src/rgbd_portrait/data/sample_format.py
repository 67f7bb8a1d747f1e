"""The on-disk sample format shared by the synthetic studio, real-portrait preparation and the datasets.

One folder per sample::

    rgb.png       8-bit RGB
    depth.npy     float32 metres along the optical axis (z-depth), larger = farther; 0 where mask is 0
    mask.png      8-bit, 255 = person (valid depth), 0 = background
    normal.png    optional: camera-space unit normals, x right, y up, z towards the camera, (n + 1) / 2 * 255
    albedo.png    optional: 8-bit RGB reflectance
    relit_K.png   optional: the same view under other lights, described in meta["relit"][K]
    meta.json     identity id, split, parameters, intrinsics; "depth_source": "exact" | "pseudo"

A sample is written to a hidden temporary folder next to its destination and renamed into place, so a
reader never sees a half-written sample.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rgbd_portrait.errors import UserInputError


@dataclass
class PortraitSample:
    """One view of one identity, with arrays in their on-disk units."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 on the background
    mask: np.ndarray  # (H, W) bool
    meta: dict[str, Any]
    normal: np.ndarray | None = None  # (H, W, 3) float32 unit vectors, zero on the background
    albedo: np.ndarray | None = None  # (H, W, 3) uint8
    relit: list[np.ndarray] = field(default_factory=list)  # each (H, W, 3) uint8


def _check_shapes(sample: PortraitSample) -> None:
    height, width = sample.depth.shape
    expected = {
        "rgb": (height, width, 3),
        "mask": (height, width),
        "normal": (height, width, 3),
        "albedo": (height, width, 3),
    }
    for name, shape in expected.items():
        array = getattr(sample, name)
        if array is not None and array.shape != shape:
            raise ValueError(f"sample {name} has shape {array.shape}, expected {shape}")
    for index, image in enumerate(sample.relit):
        if image.shape != (height, width, 3):
            raise ValueError(f"sample relit_{index} has shape {image.shape}, expected {(height, width, 3)}")


def encode_normals(normal: np.ndarray) -> np.ndarray:
    """Unit normals in [-1, 1] → 8-bit RGB."""
    return np.clip(np.round((normal + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_normals(image: np.ndarray) -> np.ndarray:
    """8-bit RGB → unit normals (renormalised; zero where the image is black-ish background)."""
    normal = image.astype(np.float32) / 127.5 - 1.0
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    return np.where(length > 0.5, normal / np.maximum(length, 1e-6), 0.0).astype(np.float32)


def write_sample(directory: str | os.PathLike, sample: PortraitSample, *, overwrite: bool = False) -> Path:
    """Write `sample` to `directory` atomically (temporary folder, then rename)."""
    _check_shapes(sample)
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise UserInputError(f"{directory}: sample folder already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        Image.fromarray(sample.rgb).save(temporary / "rgb.png")
        np.save(temporary / "depth.npy", sample.depth.astype(np.float32))
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(temporary / "mask.png")
        if sample.normal is not None:
            Image.fromarray(encode_normals(sample.normal)).save(temporary / "normal.png")
        if sample.albedo is not None:
            Image.fromarray(sample.albedo).save(temporary / "albedo.png")
        for index, image in enumerate(sample.relit):
            Image.fromarray(image).save(temporary / f"relit_{index}.png")
        (temporary / "meta.json").write_text(json.dumps(sample.meta, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


def _read_image(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, SyntaxError) as error:
        raise UserInputError(f"{path}: cannot read image ({error})") from error


def is_sample(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return all((directory / name).is_file() for name in ("rgb.png", "depth.npy", "mask.png", "meta.json"))


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: cannot read sample metadata ({error})") from error


def read_sample(directory: str | os.PathLike, *, extras: bool = True) -> PortraitSample:
    """Read a sample folder; `extras=False` skips normals, albedo and relit images."""
    directory = Path(directory)
    if not is_sample(directory):
        raise UserInputError(f"{directory}: not a sample folder (needs rgb.png, depth.npy, mask.png, meta.json)")
    depth_path = directory / "depth.npy"
    try:
        depth = np.load(depth_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserInputError(f"{depth_path}: cannot read depth ({error})") from error
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise UserInputError(f"{depth_path}: depth must be a 2-D float array, got {depth.dtype} {depth.shape}")
    sample = PortraitSample(
        rgb=_read_image(directory / "rgb.png", "RGB"),
        depth=depth.astype(np.float32),
        mask=_read_image(directory / "mask.png", "L") > 127,
        meta=read_meta(directory),
    )
    if extras:
        if (directory / "normal.png").is_file():
            sample.normal = decode_normals(_read_image(directory / "normal.png", "RGB"))
        if (directory / "albedo.png").is_file():
            sample.albedo = _read_image(directory / "albedo.png", "RGB")
        index = 0
        while (directory / f"relit_{index}.png").is_file():
            sample.relit.append(_read_image(directory / f"relit_{index}.png", "RGB"))
            index += 1
    try:
        _check_shapes(sample)
    except ValueError as error:
        raise UserInputError(f"{directory}: {error}") from error
    return sample
