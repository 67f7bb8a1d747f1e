"""What the pipeline returns: dataclasses of images in the format the caller asked for (`output_type`).

Inside the pipeline every result is a float tensor per image, channels first:

    rgb, albedo      (3, H, W) in [0, 1]
    depth            (1, H, W) affine-invariant, in [0, 1], larger = farther
    uncertainty      (1, H, W) in depth units (≥ 0)
    shading          (3, H, W) ≥ 0 (1 = lit like a white surface facing a unit light)
    normals          (3, H, W) camera-space unit vectors (x right, y up, z towards the camera), zero where
                     undefined
    mask             (1, H, W) bool: where the result describes the subject (the input mask, the valid input
                     depth, the part of the input the model saw); everywhere for generated images

`output_type` turns them into

    "pt"   torch tensors as above, batched (B, C, H, W); masks bool
    "np"   arrays channels last: float32 (B, H, W, 3) for colour and normals, (B, H, W) for one channel;
           masks bool (B, H, W)
    "pil"  a list of PIL images: 8-bit RGB for colour (clipped to [0, 1]), 16-bit greyscale ("I;16") for
           depth and uncertainty (clipped to [0, 1]), normals as (n + 1) / 2 RGB, masks 8-bit 0/255

At the model's resolution the images of a batch share one size and "pt"/"np" stack them. When the results are
mapped back to the input sizes (`match_input_size=True`), which may differ, "pt"/"np" give a list with one
tensor or array per image, shaped as above without the batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
from PIL import Image

from rgbd_portrait.data.sample_format import encode_normals
from rgbd_portrait.errors import UserInputError

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES = ("pil", "np", "pt")
# How a result field is stored (see the module docstring).
ImageKind = Literal["color", "depth", "normals", "mask"]
UINT16_MAX = 65535


@dataclass
class RGBDPortraitOutput:
    """Results of one pipeline call, one entry per generated image (inputs × samples, in input order).

    `latents` (B, 2C, h, w) are the final `[rgb, depth]` latents (always a tensor; for an ensemble, those of
    its first member). `uncertainty` is set by image→depth with an ensemble of more than one member.
    """

    rgb: list[Image.Image] | np.ndarray | torch.Tensor | list
    depth: list[Image.Image] | np.ndarray | torch.Tensor | list
    uncertainty: list[Image.Image] | np.ndarray | torch.Tensor | list | None = None
    normals: list[Image.Image] | np.ndarray | torch.Tensor | list | None = None
    mask: list[Image.Image] | np.ndarray | torch.Tensor | list | None = None
    latents: torch.Tensor | None = None

    def to_tuple(self) -> tuple:
        """All fields in declaration order, None included (what `return_dict=False` returns)."""
        return tuple(getattr(self, field.name) for field in fields(self))


@dataclass
class RGBDRelightingOutput(RGBDPortraitOutput):
    """Relighting results: `rgb` is the relit image; `albedo` the estimated reflectance and `shading` the new
    light's shading, so that `rgb = albedo * shading` on the subject (before any regeneration)."""

    albedo: list[Image.Image] | np.ndarray | torch.Tensor | list | None = None
    shading: list[Image.Image] | np.ndarray | torch.Tensor | list | None = None


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise UserInputError(f"output_type: {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")


def _to_pil(image: torch.Tensor, kind: ImageKind) -> Image.Image:
    array = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if kind == "mask":
        return Image.fromarray((array[..., 0] > 0.5).astype(np.uint8) * 255)
    if kind == "normals":
        return Image.fromarray(encode_normals(array))
    if kind == "depth":
        return Image.fromarray(np.round(np.clip(array[..., 0], 0.0, 1.0) * UINT16_MAX).astype(np.uint16))
    pixels = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _to_numpy(image: torch.Tensor, kind: ImageKind) -> np.ndarray:
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    array = array.astype(bool) if kind == "mask" else array.astype(np.float32)
    return array[..., 0] if array.shape[-1] == 1 else array


def convert_images(
    images: list[torch.Tensor] | None, kind: ImageKind, output_type: OutputType, *, stack: bool
) -> list[Image.Image] | np.ndarray | torch.Tensor | list | None:
    """Per-image tensors (C, H, W) → the `output_type` format; `stack` batches "pt"/"np" (equal sizes only)."""
    if images is None:
        return None
    if output_type == "pil":
        return [_to_pil(image, kind) for image in images]
    if output_type == "np":
        arrays = [_to_numpy(image, kind) for image in images]
        return np.stack(arrays) if stack else arrays
    tensors = [image.detach().cpu().to(torch.bool if kind == "mask" else torch.float32) for image in images]
    return torch.stack(tensors) if stack else tensors
