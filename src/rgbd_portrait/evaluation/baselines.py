"""Image→depth baselines, scored by the same code as the model.

A baseline is a callable like the model's image→depth: images (..., 3, H, W) → affine-invariant depth
(..., H, W) in [0, 1]. `depth_metrics` aligns its output to the ground truth by least squares, exactly as it
does a prediction, so the numbers are directly comparable.

- `flat_plane_depth`: the same depth everywhere. Aligned, it becomes the target's mean on the mask.
- `radial_depth`: the distance from the face's centre. It knows where the face is and nothing of its
  shape: a cone, nearest at the centre. On real photos it is the first thing a depth model must beat.
- `MeanFaceTemplate`: the average normalised depth of the training faces at each pixel. The synthetic
  studio's samples are face-centred crops, so one template is image-aligned with every test face.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rgbd_portrait.data.depth_normalization import normalize_depth, to_unit_range
from rgbd_portrait.data.sample_format import find_samples, read_meta, read_sample
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import write_bytes_atomically

# The model's background value in unit-range depth (far); the template uses it where no face ever was.
FAR_DEPTH = 1.0


def flat_plane_depth(images: torch.Tensor) -> torch.Tensor:
    """A constant depth for every pixel of images (..., 3, H, W) → (..., H, W)."""
    return torch.full(images.shape[:-3] + images.shape[-2:], 0.5, dtype=torch.float32, device=images.device)


def radial_depth(shape: tuple[int, int], centre: tuple[float, float]) -> torch.Tensor:
    """Distance in pixels of every pixel of an (H, W) image from `centre` (x, y; pixel centres at integers)."""
    height, width = shape
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    columns = torch.arange(width, dtype=torch.float32)[None, :]
    return torch.hypot(columns - centre[0], rows - centre[1])


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an (H, W) map; antialiased so that shrinking averages rather than skips pixels."""
    if tuple(image.shape) == size:
        return image
    return F.interpolate(image[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]


def find_split(data_dir: str | os.PathLike, *, split: str) -> list[Path]:
    """The sample folders of one split under `data_dir` (frames of talking sequences left out)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserInputError(f"{data_dir}: data folder does not exist")
    return [folder for folder in find_samples(data_dir) if read_meta(folder).get("split") == split]


class MeanFaceTemplate:
    """The mean-face depth baseline: one (H, W) unit-range depth map, resized to each image it predicts for."""

    def __init__(self, depth: torch.Tensor | np.ndarray) -> None:
        depth = torch.as_tensor(depth, dtype=torch.float32)
        if depth.ndim != 2 or not torch.isfinite(depth).all():
            raise UserInputError(f"template depth must be a finite (H, W) map, got shape {tuple(depth.shape)}")
        self.depth = depth

    @classmethod
    def from_data(
        cls,
        data_dir: str | os.PathLike,
        *,
        split: str = "train",
        size: tuple[int, int] | None = None,
        show_progress: bool = True,
    ) -> MeanFaceTemplate:
        """Average the normalised depth of every `split` sample under `data_dir`, pixel by pixel, on the masks.

        Each depth map is normalised as the model sees it (`normalize_depth`, then unit range), so faces at
        other distances average sensibly. Maps are resized to `size` (default: the first sample's) with
        their masks as weights. Pixels that no mask covers get the far value.
        """
        folders = find_split(data_dir, split=split)
        if not folders:
            raise UserInputError(f"{data_dir}: no sample with split '{split}' in its meta.json")
        depth_sum = mask_sum = None
        for folder in tqdm(folders, desc="mean-face template", unit="sample", disable=not show_progress):
            sample = read_sample(folder, extras=False)
            depth = torch.from_numpy(sample.depth)
            mask = torch.from_numpy(sample.mask)
            normalized, _, _ = normalize_depth(depth[None, None], mask[None, None])
            unit_depth = to_unit_range(normalized)[0, 0]
            if depth_sum is None:
                size = size or tuple(depth.shape)
                depth_sum, mask_sum = torch.zeros(size), torch.zeros(size)
            weight = mask.float()
            depth_sum += _resize(unit_depth * weight, size)
            mask_sum += _resize(weight, size)
        # A weight of ~0 is rounding noise of the resize; dividing by it would give noise.
        covered = mask_sum > 1e-6
        return cls(torch.where(covered, depth_sum / mask_sum.clamp_min(1e-6), FAR_DEPTH))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MeanFaceTemplate:
        path = Path(path)
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UserInputError(f"{path}: cannot read the mean-face template ({error})") from error
        if not np.issubdtype(depth.dtype, np.floating):
            raise UserInputError(f"{path}: the mean-face template must be a float array, got {depth.dtype}")
        try:
            return cls(depth)
        except UserInputError as error:
            raise UserInputError(f"{path}: {error}") from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write the template as a float32 (H, W) .npy file (atomically)."""
        buffer = io.BytesIO()
        np.save(buffer, self.depth.numpy(), allow_pickle=False)
        return write_bytes_atomically(path, buffer.getvalue())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The template at the images' size, for each of images (..., 3, H, W) → (..., H, W)."""
        depth = _resize(self.depth, tuple(images.shape[-2:])).to(images.device)
        return depth.expand(images.shape[:-3] + depth.shape)
