"""Training data: the data folder (rendered by the synthetic studio when missing) and what a step reads.

The trainer reads samples by `(index, epoch)` pairs from `StreamBatchSampler`; the epoch decides which other
image of the identity serves as the reference, so a resumed run sees exactly the pairs the uninterrupted run
would have seen. `PixelSamples` serves images (the VAE encodes them at every step), `LatentSamples` serves
cached latents (see `latent_cache`). With a `backdrop_fraction`, that share of the samples (drawn by seed, epoch
and index) is served, reference included, on the flat backdrop of `rgbd_portrait.data.dataset.on_backdrop`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

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


# Keeps the backdrop draws apart from the other draws seeded by (seed, epoch, index).
_BACKDROP_STREAM = 0xBD


def on_backdrop_this_epoch(fraction: float, *, seed: int, epoch: int, index: int) -> bool:
    """Whether sample `index` is served on its flat backdrop in `epoch` (a `fraction` of the draws)."""
    return fraction > 0 and bool(np.random.default_rng([seed, epoch, index, _BACKDROP_STREAM]).random() < fraction)


class PixelSamples(Dataset):
    """Images of `dataset` by (index, epoch): rgb, depth, mask, reference_rgb and the depth-trust entries.

    `with_backdrops` also serves both images on their backdrops (`rgb_on_backdrop`, what the latent cache
    encodes); otherwise a `backdrop_fraction` of the samples come on their backdrops in place of their images.
    """

    def __init__(
        self,
        dataset: PortraitDataset | PortraitMixture,
        *,
        backdrop_fraction: float = 0.0,
        seed: int = 0,
        with_backdrops: bool = False,
    ):
        self.dataset = dataset
        self.backdrop_fraction = backdrop_fraction
        self.seed = seed
        self.with_backdrops = with_backdrops

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        item = self.dataset.get(index, epoch=epoch)
        names = ["rgb", "depth", "mask", "reference_rgb", *DEPTH_TRUST_KEYS]
        if self.with_backdrops:
            return {name: item[name] for name in (*names, "rgb_on_backdrop", "reference_rgb_on_backdrop")}
        served = {name: item[name] for name in names}
        if on_backdrop_this_epoch(self.backdrop_fraction, seed=self.seed, epoch=epoch, index=index):
            served["rgb"], served["reference_rgb"] = item["rgb_on_backdrop"], item["reference_rgb_on_backdrop"]
        return served


class EpochZero(Dataset):
    """Items (i, 0) of a dataset read by (index, epoch) pairs, under plain indices."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[(index, 0)]


# Images a codec's latent scale is calibrated on after its stage.
CALIBRATION_SAMPLES = 256


def calibration_batches(train_set: PortraitDataset | PortraitMixture, batch_size: int) -> Iterator[dict]:
    """The first `CALIBRATION_SAMPLES` training images (epoch 0), in batches."""
    count = min(len(train_set), CALIBRATION_SAMPLES)
    yield from DataLoader(Subset(EpochZero(PixelSamples(train_set)), range(count)), batch_size=batch_size)


class LatentSamples(Dataset):
    """Cached latents by (index, epoch), with the reference the data set picks for that epoch; a
    `backdrop_fraction` of the samples as `PixelSamples` serves them."""

    def __init__(
        self,
        latents: CachedLatents,
        dataset: PortraitDataset | PortraitMixture,
        *,
        backdrop_fraction: float = 0.0,
        seed: int = 0,
    ):
        if len(latents) != len(dataset):
            raise ValueError(f"the latent cache holds {len(latents)} samples, the data set {len(dataset)}")
        self.latents = latents
        self.dataset = dataset
        self.backdrop_fraction = backdrop_fraction
        self.seed = seed

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        reference = self.dataset.reference_index(index, epoch=epoch)
        on_backdrop = on_backdrop_this_epoch(self.backdrop_fraction, seed=self.seed, epoch=epoch, index=index)
        latents = self.latents
        rgb = latents["rgb_on_backdrop" if on_backdrop else "rgb"]
        if reference == index:
            # The data set mirrors a lone image to serve as its reference: the mirrored image's latents.
            reference_latents = latents["rgb_on_backdrop_mirrored" if on_backdrop else "rgb_mirrored"][index]
        else:
            reference_latents = rgb[reference]
        return {
            "rgb_latents": rgb[index],
            "depth_latents": latents["depth"][index],
            "foreground": latents["foreground"][index],
            "reference_latents": reference_latents,
            "pseudo_depth": latents["pseudo_depth"][index],
            "depth_observed": latents["depth_observed"][index],
        }
