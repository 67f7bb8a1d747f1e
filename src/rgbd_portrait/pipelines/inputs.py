"""The pipeline's inputs: images, depth maps and masks from files or memory, and their square fit to the model.

Every input becomes numpy at this boundary (`rgbd_portrait.data.image_io`'s conventions) together with a
`source` that names it in error messages: the file path, or the argument and index (`image[2]`).

    images  a path, a PIL image (any mode), an array (H, W, 3) or (H, W) in [0, 1] (or uint8), a tensor
            (3, H, W) or (B, 3, H, W) in [0, 1], or a list of those
    depth   a path (.npy, 16-bit PNG, EXR where imageio can read it), an array or tensor (H, W), or a list;
            any unit, larger = farther; non-finite pixels are invalid
    masks   a path, a PIL image, a bool/0-1 array or tensor (H, W), or a list; nonzero = subject

The square fit (`rgbd_portrait.fit_modes`) is centred on the largest face when MediaPipe is installed (the
`prepare` extra) and on the image centre otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from rgbd_portrait.data.image_io import (
    MIN_IMAGE_SIDE,
    SquareFit,
    image_to_rgb,
    load_depth,
    load_image,
    load_mask,
    plan_square_fit,
    require_same_size,
    to_uint8_rgb,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.fit_modes import FIT_MODES

FitMode = Literal["crop", "pad", "face"]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
DepthInput = str | os.PathLike | np.ndarray | torch.Tensor
MaskInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


@dataclass
class LoadedImage:
    source: str
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1]


@dataclass
class LoadedDepth:
    source: str
    depth: np.ndarray  # (H, W) float32, 0 outside `valid`
    valid: np.ndarray  # (H, W) bool


def _as_list(value, *, argument: str) -> list:
    """One input or a list of them → a list (a batched tensor counts as several inputs)."""
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, torch.Tensor) and value.ndim == 4:
        items = list(value.unbind(0))
    else:
        items = [value]
    if not items:
        raise UserInputError(f"{argument}: no inputs given")
    return items


def _is_path(value) -> bool:
    return isinstance(value, str | os.PathLike)


def _check_side(source: str, height: int, width: int) -> None:
    if min(height, width) < MIN_IMAGE_SIDE:
        raise UserInputError(
            f"{source}: image is {width}×{height} pixels, need at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}"
        )


def _array_image(value: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.ndim == 3 and value.shape[0] in (1, 3):
            value = value.movedim(0, -1)
        value = value.detach().float().cpu().numpy()
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise UserInputError(f"{source}: expected an image (H, W, 3) or (H, W), got shape {array.shape}")
    _check_side(source, *array.shape[:2])
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UserInputError(f"{source}: image has NaN or infinite values")
    return np.clip(array, 0.0, 1.0)


def read_images(images: ImageInput | Sequence[ImageInput], *, argument: str) -> list[LoadedImage]:
    """All images of an argument as float RGB in [0, 1]."""
    loaded = []
    for index, item in enumerate(_as_list(images, argument=argument)):
        if _is_path(item):
            loaded.append(LoadedImage(source=str(item), pixels=load_image(item)))
            continue
        source = f"{argument}[{index}]"
        if isinstance(item, Image.Image):
            _check_side(source, item.height, item.width)
            loaded.append(LoadedImage(source=source, pixels=image_to_rgb(item)))
        elif isinstance(item, np.ndarray | torch.Tensor):
            loaded.append(LoadedImage(source=source, pixels=_array_image(item, source)))
        else:
            raise UserInputError(f"{source}: expected a path, PIL image, array or tensor, got {type(item).__name__}")
    return loaded


def _read_mask(mask: MaskInput, source: str) -> np.ndarray:
    if _is_path(mask):
        return load_mask(mask)
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L")) > 127
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = np.squeeze(np.asarray(mask))
    if array.ndim != 2:
        raise UserInputError(f"{source}: expected a mask (H, W), got shape {array.shape}")
    return array > 0.5 if np.issubdtype(array.dtype, np.floating) else array.astype(bool)


def read_masks(
    masks: MaskInput | Sequence[MaskInput] | None, *, argument: str, count: int
) -> list[tuple[str, np.ndarray] | None]:
    """One (source, mask) or None per input; a single mask is shared by every input."""
    if masks is None:
        return [None] * count
    items = _as_list(masks, argument=argument)
    if len(items) == 1:
        items = items * count
    if len(items) != count:
        raise UserInputError(f"{argument}: {len(items)} masks for {count} inputs")
    named = []
    for index, item in enumerate(items):
        source = str(item) if _is_path(item) else f"{argument}[{index}]"
        named.append((source, _read_mask(item, source)))
    return named


def _array_depth(value: np.ndarray | torch.Tensor, source: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    depth = np.squeeze(np.asarray(value, dtype=np.float64))
    if depth.ndim != 2:
        raise UserInputError(f"{source}: expected a depth map (H, W), got shape {depth.shape}")
    _check_side(source, *depth.shape)
    valid = np.isfinite(depth)
    if not valid.any():
        raise UserInputError(f"{source}: depth has no finite values (all NaN or inf)")
    return np.where(valid, depth, 0.0).astype(np.float32), valid


def read_depths(
    depths: DepthInput | Sequence[DepthInput],
    *,
    argument: str,
    masks: MaskInput | Sequence[MaskInput] | None = None,
    mask_argument: str = "mask",
) -> list[LoadedDepth]:
    """All depth maps of an argument with their valid pixels (finite and on the mask, when given)."""
    items = _as_list(depths, argument=argument)
    named_masks = read_masks(masks, argument=mask_argument, count=len(items))
    loaded = []
    for index, (item, named_mask) in enumerate(zip(items, named_masks)):
        if _is_path(item):
            source = str(item)
            depth, valid = load_depth(item)
        else:
            source = f"{argument}[{index}]"
            depth, valid = _array_depth(item, source)
        if named_mask is not None:
            mask_source, mask = named_mask
            require_same_size(source, depth, mask_source, mask)
            valid = valid & mask
            if not valid.any():
                raise UserInputError(f"{source} with mask {mask_source}: depth has no valid pixels (all background)")
        loaded.append(LoadedDepth(source=source, depth=np.where(valid, depth, 0.0).astype(np.float32), valid=valid))
    return loaded


def match_count(items: list, count: int, *, argument: str, other: str) -> list:
    """`items` for `count` inputs: one item is shared, otherwise there must be one per input."""
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise UserInputError(f"{argument}: {len(items)} given for {count} {other}")
    return items


class FaceCentres:
    """The largest face in an image, when MediaPipe is installed: its centre (x, y), or the square `prepare`
    would crop around it (`framing`); None when no face is found or MediaPipe is missing.

    The detector is created on first use and kept.
    """

    def __init__(self) -> None:
        self._finder = None
        self._available = True

    def _largest_face(self, pixels: np.ndarray):
        if not self._available:
            return None
        if self._finder is None:
            try:
                from rgbd_portrait.data.prepare.faces import FaceFinder

                self._finder = FaceFinder()
            except UserInputError:  # MediaPipe or OpenCV is not installed: centre fits only
                self._available = False
                return None
        faces = self._finder.find(to_uint8_rgb(pixels))
        return faces[0] if faces else None

    def has_face(self, pixels: np.ndarray) -> bool | None:
        """Whether a face is found; None when MediaPipe is not installed to tell."""
        face = self._largest_face(pixels)
        return None if face is None and not self._available else face is not None

    def __call__(self, pixels: np.ndarray) -> tuple[float, float] | None:
        face = self._largest_face(pixels)
        if face is None:
            return None
        x, y, width, height = face.box
        return x + width / 2.0, y + height / 2.0

    def landmarks(self, pixels: np.ndarray) -> np.ndarray | None:
        """The largest face's 478 face-mesh landmarks (x, y, z) in image pixels, or None."""
        face = self._largest_face(pixels)
        return None if face is None else face.landmarks

    def framing(self, pixels: np.ndarray) -> tuple[float, float, float] | None:
        """(centre x, centre y, side) of the upright square holding the face as in `prepare`'s crops."""
        face = self._largest_face(pixels)
        if face is None:
            return None
        from rgbd_portrait.data.prepare.alignment import align_face

        alignment = align_face(face.landmarks, size=1)
        return float(alignment.center[0]), float(alignment.center[1]), 2.0 * float(np.linalg.norm(alignment.half_axis))


def plan_fit(
    pixels_or_shape: np.ndarray | tuple[int, int],
    side: int,
    *,
    mode: FitMode,
    face_centres: FaceCentres | None,
) -> SquareFit:
    """The square fit of an image (face-centred when `face_centres` finds a face) or of a bare (H, W) shape.

    "face" frames the face found by `face_centres`; without one (no face, no detector, a bare shape) it falls
    back to "crop".
    """
    if mode not in FIT_MODES:
        raise UserInputError(f"fit: {mode!r} is not one of {', '.join(FIT_MODES)}")
    if isinstance(pixels_or_shape, tuple):
        height, width = pixels_or_shape
        center = None
    else:
        height, width = pixels_or_shape.shape[:2]
        if mode == "face" and face_centres is not None:
            framing = face_centres.framing(pixels_or_shape)
            if framing is not None:
                return face_square_fit(height, width, side, framing)
            center = None  # no face found: the detector need not run again
        else:
            center = face_centres(pixels_or_shape) if face_centres is not None else None
    return plan_square_fit(height, width, side, center=center, mode="pad" if mode == "pad" else "crop")


def face_square_fit(height: int, width: int, output_side: int, framing: tuple[float, float, float]) -> SquareFit:
    """The square (centre x, centre y, side) on a (height, width) image; parts past the borders are padding."""
    center_x, center_y, side = framing
    side = max(1, round(side))
    return SquareFit(
        input_height=height,
        input_width=width,
        top=round(center_y - side / 2.0),
        left=round(center_x - side / 2.0),
        side=side,
        output_side=output_side,
    )


def fit_image(image: LoadedImage, fit: SquareFit) -> torch.Tensor:
    """(3, side, side) float tensor in [0, 1]; padding past the photo's borders is softened as in training
    crops (`soften_outside`)."""
    return torch.from_numpy(np.ascontiguousarray(fit.apply(image.pixels, padding="soft"))).permute(2, 0, 1)


def fit_depth(depth: LoadedDepth, fit: SquareFit) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth (1, side, side) and valid pixels (1, side, side); nearest sampling keeps the silhouette sharp."""
    fitted = fit.apply(depth.depth, interpolation="nearest", padding=0.0)
    valid = fit.apply(depth.valid, interpolation="nearest", padding=False)
    if not valid.any():
        raise UserInputError(f"{depth.source}: no valid depth pixel inside the square fitted to the model")
    return torch.from_numpy(np.ascontiguousarray(fitted))[None], torch.from_numpy(np.ascontiguousarray(valid))[None]


def fit_mask(mask: np.ndarray, fit: SquareFit) -> torch.Tensor:
    """(1, side, side) bool; padding counts as background."""
    return torch.from_numpy(np.ascontiguousarray(fit.apply(mask, interpolation="nearest", padding=False)))[None]
