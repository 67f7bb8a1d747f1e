"""Training data from sample folders or tar shards, as tensors in the model's conventions (DESIGN.md).

`PortraitDataset(root)` finds every sample below `root`: sample folders (`rgbd_portrait.data.sample_format`,
written by `rgbd-portrait synth` or `rgbd-portrait prepare`) and shards (`*.tar`,
`rgbd_portrait.data.shards`). Frames of talking sequences are left out unless `include_sequences=True`.
Each item pairs the sample with a reference: another sample of the same identity, chosen per epoch (the
sample's mirror image when its identity has no other). `PortraitMixture` joins several such data sets, each
with a share of the training stream. Every item also comes on a flat backdrop (`on_backdrop`), for training
on cut-out photos.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.spatial import ConvexHull, QhullError
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

    def read_meta(self) -> dict[str, Any]:
        if isinstance(self.source, ShardedSample):
            return self.source.read_meta()
        return read_meta(self.source)

    def stamp(self) -> str:
        """The sizes and modification times of the sample's stored files (its shard's, for a sharded sample): a
        sample written again, under the same name, gets a new stamp."""
        files = [self.source.shard] if isinstance(self.source, ShardedSample) else sorted(self.source.iterdir())
        return ";".join(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}" for path in files for stat in [path.stat()])


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


def observed_depth_region(meta: dict[str, Any], mask: torch.Tensor, stored_size: int) -> torch.Tensor:
    """Where a sample's depth was observed rather than extrapolated, (1, H, W) in {0, 1} at `mask`'s size.

    Exact depth is observed everywhere. Face-mesh pseudo-depth is observed on the face, the outline of the
    landmarks stored by `rgbd-portrait prepare` (scaled from the stored side `stored_size`); elsewhere on the
    person it is a smooth fill. Pseudo-depth without landmarks counts as observed.
    """
    landmarks = np.asarray(meta.get("face_landmarks", []), dtype=np.float64).reshape(-1, 3)
    if meta.get("depth_source") != "pseudo" or len(landmarks) < 3:
        return torch.ones_like(mask)
    size = mask.shape[-1]
    # Pixel centres are at integers in both the stored crop and the resized one.
    points = (landmarks[:, :2] + 0.5) * (size / stored_size) - 0.5
    try:
        outline = points[ConvexHull(points).vertices]
    except QhullError:
        return torch.ones_like(mask)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(point) for point in outline], fill=1)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32))[None] * mask


def backdrop_colour(key: str) -> torch.Tensor:
    """The flat backdrop (3,) in [-1, 1] of the sample `key`: black for half the keys, as depth cameras and
    background removers leave it, a random colour for the others; fixed per key, so cached latents hold."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    if rng.random() < 0.5:
        return torch.full((3,), -1.0)
    return torch.from_numpy(rng.uniform(-1.0, 1.0, size=3)).float()


def on_backdrop(rgb: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """The person of `rgb` (3, H, W) on the flat `colour` (3,) outside `mask` (1, H, W)."""
    return rgb * mask + colour.view(3, 1, 1) * (1.0 - mask)


class PortraitDataset(Dataset):
    """Samples of one split as dicts of tensors, each with a reference image of the same identity.

    Items (default collation works on them):
        rgb            (3, H, W) float in [-1, 1]
        depth          (1, H, W) float in [-1, 1]: `normalize_depth` on the mask, background +1 (far)
        mask           (1, H, W) float, 1 on the person
        depth_range    (2,) the depths (in the sample's units) that map to -1 and +1
        reference_rgb  (3, H, W) another sample of the same identity (its mirror image if the identity has one)
        rgb_on_backdrop, reference_rgb_on_backdrop   both on their `backdrop_colour` (`on_backdrop`)
        pseudo_depth   () float, 1 when the depth is pseudo-depth (`meta["depth_source"] == "pseudo"`)
        depth_observed (1, H, W) float, 1 where the depth was observed (`observed_depth_region`)
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

    def _load(self, index: int) -> tuple[PortraitSample, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The sample, its rgb, depth and mask tensors at the data set's resolution, and its stored side."""
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
        return sample, rgb, depth, mask, width

    def get(self, index: int, *, epoch: int | None = None) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} samples")
        sample, rgb, depth, mask, stored_size = self._load(index)
        normalized, near, far = normalize_depth(depth[None], mask[None] > 0.5)
        reference = self.reference_index(index, epoch=epoch)
        rgb_on_backdrop = on_backdrop(rgb, mask, backdrop_colour(self.entries[index].key))
        # A lone image is its own reference only mirrored, so the reference is never a pixel copy of the target.
        if reference == index:
            reference_rgb, reference_rgb_on_backdrop = rgb.flip(-1), rgb_on_backdrop.flip(-1)
        else:
            _, reference_rgb, _, reference_mask, _ = self._load(reference)
            reference_colour = backdrop_colour(self.entries[reference].key)
            reference_rgb_on_backdrop = on_backdrop(reference_rgb, reference_mask, reference_colour)
        depth_source = str(sample.meta.get("depth_source", "unknown"))
        return {
            "rgb": rgb,
            "depth": normalized[0],
            "mask": mask,
            "depth_range": torch.stack((near[0], far[0])),
            "reference_rgb": reference_rgb,
            "rgb_on_backdrop": rgb_on_backdrop,
            "reference_rgb_on_backdrop": reference_rgb_on_backdrop,
            "pseudo_depth": torch.tensor(float(depth_source == "pseudo")),
            "depth_observed": observed_depth_region(sample.meta, mask, stored_size),
            "identity": self.entries[index].identity,
            "key": self.entries[index].key,
            "depth_source": depth_source,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)


class PortraitMixture(Dataset):
    """Several `PortraitDataset`s read as one, each with a share of the training stream.

    Items come from the parts in turn (the first item of each part, then the second, ...), so the first few
    items, such as a fixed validation batch, show every part. `sample_weights` gives each item its part's
    weight divided by the part's size: drawn by these weights, a part's share of the draws is its weight's
    share, however many samples it holds. References stay within a part.
    """

    def __init__(self, parts: list[PortraitDataset], weights: list[float]):
        if len(parts) != len(weights) or not parts:
            raise ValueError("a mixture needs one weight per part and at least one part")
        resolutions = {part.resolution for part in parts}
        if len(resolutions) > 1:
            raise ValueError(f"the parts of a mixture must share one resolution, got {sorted(resolutions, key=str)}")
        self.parts = parts
        self.resolution = parts[0].resolution
        self.locations: list[tuple[int, int]] = []  # (part, index in the part) per item
        for position in range(max(len(part) for part in parts)):
            self.locations += [(number, position) for number, part in enumerate(parts) if position < len(part)]
        self.entries = [
            SampleEntry(
                key=f"{parts[number].root}:{parts[number].entries[index].key}",
                identity=f"{parts[number].root}:{parts[number].entries[index].identity}",
                split=parts[number].entries[index].split,
                source=parts[number].entries[index].source,
            )
            for number, index in self.locations
        ]
        self._item_of = {location: item for item, location in enumerate(self.locations)}
        self.sample_weights = torch.tensor(
            [weights[number] / len(parts[number]) if len(parts[number]) else 0.0 for number, _ in self.locations],
            dtype=torch.float64,
        )

    def __len__(self) -> int:
        return len(self.locations)

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def reference_index(self, index: int, *, epoch: int | None = None) -> int:
        number, local = self.locations[index]
        return self._item_of[(number, self.parts[number].reference_index(local, epoch=epoch))]

    def get(self, index: int, *, epoch: int | None = None) -> dict[str, Any]:
        if not 0 <= index < len(self.locations):
            raise IndexError(f"index {index} out of range for {len(self.locations)} samples")
        number, local = self.locations[index]
        item = self.parts[number].get(local, epoch=epoch)
        return item | {"key": self.entries[index].key, "identity": self.entries[index].identity}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)
