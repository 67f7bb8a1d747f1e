"""Training data from sample folders or tar shards, as tensors in the model's conventions (DESIGN.md).

`PortraitDataset(root)` finds every sample below `root`: sample folders (`rgbd_portrait.data.sample_format`,
written by `rgbd-portrait synth` or `rgbd-portrait prepare`) and shards (`*.tar`,
`rgbd_portrait.data.shards`). Frames of talking sequences are left out unless `include_sequences=True`.
Each item pairs the sample with a reference: another sample of the same identity, chosen per epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rgbd_portrait.data.depth_normalization import normalize_depth
from rgbd_portrait.data.sample_format import PortraitSample, find_samples, read_meta, read_sample
from rgbd_portrait.data.shards import SHARD_SUFFIX, ShardedSample, index_shard
from rgbd_portrait.errors import UserInputError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SampleEntry:
    """One sample of the data set: where it is and whose it is."""

    key: str  # unique within the data set: the folder relative to the root, or shard:key
    identity: str
    split: str
    source: Path | ShardedSample

    def read(self) -> PortraitSample:
        if isinstance(self.source, ShardedSample):
            return self.source.read(extras=False)
        return read_sample(self.source, extras=False)


def _entry(key: str, meta: dict[str, Any], source: Path | ShardedSample) -> SampleEntry:
    # A sample without an identity is its own identity; without a split it is training data.
    return SampleEntry(
        key=key, identity=str(meta.get("identity", key)), split=str(meta.get("split", "train")), source=source
    )


def discover_samples(root: str | os.PathLike, *, include_sequences: bool = False) -> list[SampleEntry]:
    """Every sample folder and sharded sample at or below `root` (a folder or one `.tar` shard), by key."""
    root = Path(root)
    if not root.exists():
        raise UserInputError(f"{root}: data folder not found")
    if root.is_file():
        if root.suffix != SHARD_SUFFIX:
            raise UserInputError(f"{root}: expected a data folder or a {SHARD_SUFFIX} shard")
        shards, folders = [root], []
    else:
        shards = sorted(path for path in root.rglob(f"*{SHARD_SUFFIX}") if not path.name.startswith("."))
        folders = find_samples(root, include_sequences=include_sequences)
    entries = [_entry(str(folder.relative_to(root)), read_meta(folder), folder) for folder in folders]
    for shard in shards:
        entries += [_entry(f"{shard.name}:{sample.key}", sample.read_meta(), sample) for sample in index_shard(shard)]
    return sorted(entries, key=lambda entry: entry.key)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → float (3, H, W) in [-1, 1]."""
    return torch.tensor(image).permute(2, 0, 1).float() / 127.5 - 1.0


def resize_sample_tensors(
    rgb: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resize rgb (3, H, W), depth and mask (1, H, W) to size x size without mixing depth across the
    mask's edge: shrinking averages depth over the masked part of each output pixel (which is valid when
    at least half covered); enlarging repeats the nearest pixel."""
    if rgb.shape[-2:] == (size, size):
        return rgb, depth, mask
    rgb = F.interpolate(rgb[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if size < depth.shape[-1]:
        coverage = F.interpolate(mask[None], size=(size, size), mode="area")[0]
        depth_sum = F.interpolate((depth * mask)[None], size=(size, size), mode="area")[0]
        new_mask = (coverage >= 0.5).float()
        depth = torch.where(new_mask > 0, depth_sum / coverage.clamp_min(1e-6), torch.zeros_like(depth_sum))
        return rgb.clamp(-1.0, 1.0), depth, new_mask
    depth = F.interpolate(depth[None], size=(size, size), mode="nearest")[0]
    mask = F.interpolate(mask[None], size=(size, size), mode="nearest")[0]
    return rgb.clamp(-1.0, 1.0), depth, mask


class PortraitDataset(Dataset):
    """Samples of one split as dicts of tensors, each with a reference image of the same identity.

    Items (default collation works on them):
        rgb            (3, H, W) float in [-1, 1]
        depth          (1, H, W) float in [-1, 1]: `normalize_depth` on the mask, background +1 (far)
        mask           (1, H, W) float, 1 on the person
        depth_range    (2,) the depths (in the sample's units) that map to -1 and +1
        reference_rgb  (3, H, W) another sample of the same identity (itself if the identity has one)
        identity, key, depth_source   strings

    `resolution` resizes to a square of that side (None keeps the stored size; all samples must then share
    it to be batched). `split=None` takes every split. The reference of item i in epoch e is fixed by
    (seed, e, i): call `set_epoch` per epoch, or `get(i, epoch=e)`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = "train",
        resolution: int | None = None,
        seed: int = 0,
        include_sequences: bool = False,
    ):
        if split is not None and split not in SPLITS:
            raise UserInputError(f"split {split!r}: expected one of {', '.join(SPLITS)} (or None for all)")
        if resolution is not None and (resolution < 8 or resolution % 8):
            raise UserInputError(f"resolution must be a positive multiple of 8, got {resolution}")
        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        self.seed = seed
        self.epoch = 0
        self.entries = [
            entry
            for entry in discover_samples(self.root, include_sequences=include_sequences)
            if split is None or entry.split == split
        ]
        self._same_identity: dict[str, list[int]] = {}
        for index, entry in enumerate(self.entries):
            self._same_identity.setdefault(entry.identity, []).append(index)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def identities(self) -> list[str]:
        return sorted(self._same_identity)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def reference_index(self, index: int, *, epoch: int | None = None) -> int:
        """Another sample of the same identity, chosen by (seed, epoch, index); `index` itself if none."""
        epoch = self.epoch if epoch is None else epoch
        others = [other for other in self._same_identity[self.entries[index].identity] if other != index]
        if not others:
            return index
        return others[int(np.random.default_rng([self.seed, epoch, index]).integers(len(others)))]

    def _load(self, index: int) -> tuple[PortraitSample, torch.Tensor, torch.Tensor, torch.Tensor]:
        entry = self.entries[index]
        sample = entry.read()
        height, width = sample.depth.shape
        if self.resolution is not None and height != width:
            raise UserInputError(f"{entry.key}: image is {width}x{height}; resizing needs square samples")
        rgb = _image_tensor(sample.rgb)
        depth = torch.from_numpy(sample.depth)[None].float()
        mask = torch.from_numpy(sample.mask)[None].float()
        if self.resolution is not None:
            rgb, depth, mask = resize_sample_tensors(rgb, depth, mask, self.resolution)
        return sample, rgb, depth, mask

    def get(self, index: int, *, epoch: int | None = None) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} samples")
        sample, rgb, depth, mask = self._load(index)
        normalized, near, far = normalize_depth(depth[None], mask[None] > 0.5)
        reference = self.reference_index(index, epoch=epoch)
        reference_rgb = rgb if reference == index else self._load(reference)[1]
        return {
            "rgb": rgb,
            "depth": normalized[0],
            "mask": mask,
            "depth_range": torch.stack((near[0], far[0])),
            "reference_rgb": reference_rgb,
            "identity": self.entries[index].identity,
            "key": self.entries[index].key,
            "depth_source": str(sample.meta.get("depth_source", "unknown")),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)
