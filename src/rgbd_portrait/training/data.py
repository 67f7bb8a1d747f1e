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
    from rgbd_portrait.data.dataset import PortraitDataset, PortraitMixture


def check_data_folder(data: DataConfig) -> None:
    """A missing data folder is an error unless the config says how to render it; mixed-in sources must exist."""
    root = Path(data.root)
    if root.exists() and not root.is_dir():
        raise UserInputError(f"data.root: {root} is not a folder")
    if not root.exists() and data.synthesize is None:
        raise UserInputError(f"data.root: {root} not found (set data.synthesize to render a synthetic data set there)")
    for position, extra in enumerate(data.sources):
        if not Path(extra.root).is_dir():
            raise UserInputError(f"data.sources[{position}].root: {extra.root} is not a folder")


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


def open_split(data: DataConfig, *, validation: bool, resolution: int, seed: int) -> PortraitDataset | PortraitMixture:
    """The training or validation data set of `data.root` and any mixed-in `data.sources`.

    A folder without samples of the split is a one-line error naming the folder and split.
    """
    from rgbd_portrait.data.dataset import PortraitDataset, PortraitMixture

    split = data.validation_split if validation else data.train_split
    folders = [(data.root, "data.root", data.root_weight)] + [
        (extra.root, f"data.sources[{position}].root", extra.weight) for position, extra in enumerate(data.sources)
    ]
    parts = []
    for root, key, _ in folders:
        dataset = PortraitDataset(root, split=split, resolution=resolution, seed=seed)
        if len(dataset) == 0:
            if validation:
                raise UserInputError(
                    f"data.validation_split: no {split!r} samples in {root} (or set the stages' validate_every=0)"
                )
            raise UserInputError(f"{key}: no {split!r} samples in {root}")
        parts.append(dataset)
    if len(parts) == 1:
        return parts[0]
    return PortraitMixture(parts, [weight for _, _, weight in folders])


# What a step reads of an item besides the images: how far to trust its depth (see `joint_objective`).
DEPTH_TRUST_KEYS = ("pseudo_depth", "depth_observed")


class PixelSamples(Dataset):
    """Images of `dataset` by (index, epoch): rgb, depth, mask, reference_rgb and the depth-trust entries."""

    def __init__(self, dataset: PortraitDataset | PortraitMixture):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        item = self.dataset.get(index, epoch=epoch)
        return {name: item[name] for name in ("rgb", "depth", "mask", "reference_rgb", *DEPTH_TRUST_KEYS)}


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
        reference_latents = self.latents.rgb[reference]
        if reference == index:
            # The data set mirrors a lone image to serve as its reference; its latents mirror with it.
            reference_latents = reference_latents.flip(-1)
        return {
            "rgb_latents": self.latents.rgb[index],
            "depth_latents": self.latents.depth[index],
            "foreground": self.latents.foreground[index],
            "reference_latents": reference_latents,
            "pseudo_depth": self.latents.pseudo_depth[index],
            "depth_observed": self.latents.depth_observed[index],
        }
