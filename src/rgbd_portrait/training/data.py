"""Training data: the data folder (rendered by the synthetic studio when missing) and what a step reads.

The trainer reads samples by `(index, epoch)` pairs from `StreamBatchSampler`; the epoch decides which other
image of the identity serves as the reference, so a resumed run sees exactly the pairs the uninterrupted run
would have seen. `PixelSamples` serves images (the VAE encodes them at every step), `LatentSamples` serves
cached latents (see `latent_cache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.training.config import DataConfig
from rgbd_portrait.training.latent_cache import CachedLatents

if TYPE_CHECKING:
    from rgbd_portrait.data.dataset import PortraitDataset


def check_data_folder(data: DataConfig) -> None:
    """A missing data folder is an error unless the config says how to render it."""
    root = Path(data.root)
    if root.exists() and not root.is_dir():
        raise UserInputError(f"data.root: {root} is not a folder")
    if not root.exists() and data.synthesize is None:
        raise UserInputError(f"data.root: {root} not found (set data.synthesize to render a synthetic data set there)")


def render_data_folder(data: DataConfig, *, resolution: int, device: torch.device, show_progress: bool) -> None:
    """Render the synthetic data set described by `data.synthesize` into `data.root`."""
    from rgbd_portrait.data.synth import render_dataset

    settings = data.synthesize
    render_dataset(
        data.root,
        identities=settings.identities,
        samples_per_identity=settings.samples_per_identity,
        size=resolution,
        relights=settings.relights,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
        sequences=settings.sequences,
        sequence_seconds=settings.sequence_seconds,
        seed=settings.seed,
        device="cuda" if device.type == "cuda" else "cpu",
        show_progress=show_progress,
    )


def open_split(data: DataConfig, *, validation: bool, resolution: int, seed: int) -> PortraitDataset:
    """The training or validation data set; an empty one is a one-line error naming the folder and split."""
    from rgbd_portrait.data.dataset import PortraitDataset

    split = data.validation_split if validation else data.train_split
    dataset = PortraitDataset(data.root, split=split, resolution=resolution, seed=seed)
    if len(dataset) == 0:
        if validation:
            raise UserInputError(
                f"data.validation_split: no {split!r} samples in {data.root} (or set the stages' validate_every=0)"
            )
        raise UserInputError(f"data.root: no {split!r} samples in {data.root}")
    return dataset


class PixelSamples(Dataset):
    """Images of `dataset` by (index, epoch): rgb, depth, mask, reference_rgb (see `PortraitDataset`)."""

    def __init__(self, dataset: PortraitDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        item = self.dataset.get(index, epoch=epoch)
        return {name: item[name] for name in ("rgb", "depth", "mask", "reference_rgb")}


class LatentSamples(Dataset):
    """Cached latents by (index, epoch), with the reference the data set picks for that epoch."""

    def __init__(self, latents: CachedLatents, dataset: PortraitDataset):
        if len(latents) != len(dataset):
            raise ValueError(f"the latent cache holds {len(latents)} samples, the data set {len(dataset)}")
        self.latents = latents
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        reference = self.dataset.reference_index(index, epoch=epoch)
        return {
            "rgb_latents": self.latents.rgb[index],
            "depth_latents": self.latents.depth[index],
            "foreground": self.latents.foreground[index],
            "reference_latents": self.latents.rgb[reference],
        }
