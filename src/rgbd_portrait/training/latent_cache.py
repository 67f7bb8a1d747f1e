"""Latents of a fixed data set, encoded once by the frozen VAE and stored as safetensors shards.

With the VAE frozen in the joint stage, encoding the same images at every epoch is wasted work, and on a CPU
it is most of the work. A cache folder holds::

    index.json               what was encoded (fingerprint), how many samples, the shard files
    shard-00000.safetensors  rgb, rgb_on_backdrop (the image on its flat backdrop), depth (n, C, h, w): scaled
                             latents; rgb_mirrored, rgb_on_backdrop_mirrored: those of the mirrored images
                             (a lone image's reference; a latent mirrored is not the mirrored image's latent);
                             foreground and
                             depth_observed (n, 1, h, w): each latent cell's share of the person and of
                             observed depth; pseudo_depth (n,): 1 for pseudo-depth samples

A training mixture of several folders keeps one cache per folder (`CachedLatents.gather` joins them in the
mixture's order), so adding a folder encodes that folder alone. The folder name is a fingerprint
of the VAE's config and encoder weights, the folder's samples (names, and the sizes and modification times of
their files) and the resolution, so a changed encoder or data set, or a folder prepared again in place, never
reads stale latents, while a new decoder (trained with the encoder frozen) keeps them.
Shards are written to temporary names and renamed, and `index.json` comes last: a cache is either complete
or ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from rgbd_portrait.files import atomic_file, write_bytes_atomically
from rgbd_portrait.models.codec import LatentCodec
from rgbd_portrait.training.joint_objective import latent_foreground

INDEX_FILE = "index.json"
CACHE_FORMAT = 4
# The VAE weights that make the latents; the decoder's do not.
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
# What the joint stage reads of an image; the motion stage reads only `FRAME_TENSORS` of a video frame.
CACHED_TENSORS = (
    "rgb",
    "rgb_on_backdrop",
    "rgb_mirrored",
    "rgb_on_backdrop_mirrored",
    "depth",
    "foreground",
    "depth_observed",
    "pseudo_depth",
)
FRAME_TENSORS = ("rgb", "depth", "foreground", "depth_observed", "pseudo_depth")


def cache_fingerprint(
    codec: LatentCodec, sample_names: Sequence[str], resolution: int, tensors: Sequence[str] = CACHED_TENSORS
) -> str:
    """A short hash of everything the cached latents depend on."""
    settings: dict = {"format": CACHE_FORMAT, "resolution": resolution}
    if tuple(tensors) != CACHED_TENSORS:  # frame caches; image caches hash no list, so earlier ones stay valid
        settings["tensors"] = list(tensors)
    digest = hashlib.sha256()
    digest.update(json.dumps(settings).encode())
    digest.update(json.dumps(dict(codec.vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(codec.vae.state_dict().items()):
        if not name.startswith(ENCODER_PREFIXES):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update("\n".join(sample_names).encode())
    return digest.hexdigest()[:16]


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def is_complete(directory: Path) -> bool:
    return (directory / INDEX_FILE).is_file()


@torch.no_grad()
def encode_shard(
    codec: LatentCodec,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int,
    num_workers: int,
    progress,
    tensors: Sequence[str] = CACHED_TENSORS,
) -> dict[str, torch.Tensor]:
    """The `tensors` of `dataset[i]` for i in `indices`, in that order."""
    device = next(codec.parameters()).device
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in tensors}
    for batch in loader:
        rgb = batch["rgb"].to(device)
        latents = codec.encode_rgbd(rgb, batch["depth"].to(device)).float().cpu()
        rgb_latents, depth_latents = latents.chunk(2, dim=1)
        latent_size = tuple(latents.shape[2:])
        parts["rgb"].append(rgb_latents)
        for name in ("rgb_on_backdrop", "rgb_mirrored", "rgb_on_backdrop_mirrored"):
            if name in parts:
                image = batch[name.removesuffix("_mirrored")].to(device)
                image = image.flip(-1) if name.endswith("_mirrored") else image
                parts[name].append(codec.encode_rgb(image).float().cpu())
        parts["depth"].append(depth_latents)
        parts["foreground"].append(latent_foreground(batch["mask"], latent_size))
        parts["depth_observed"].append(latent_foreground(batch["depth_observed"], latent_size))
        parts["pseudo_depth"].append(batch["pseudo_depth"].float())
        progress.update(rgb.shape[0])
    return {key: torch.cat(values).contiguous() for key, values in parts.items()}


def build_latent_cache(
    directory: str | os.PathLike,
    *,
    codec: LatentCodec,
    dataset: Dataset,
    fingerprint: str,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    batch_size: int = 16,
    shard_size: int = 1024,
    num_workers: int = 0,
    show_progress: bool = True,
    tensors: Sequence[str] = CACHED_TENSORS,
) -> Path:
    """Encode `tensors` of `dataset` into `directory`, the processes sharing the shards; a complete cache is
    reused."""
    directory = Path(directory)
    if not is_complete(directory):
        directory.mkdir(parents=True, exist_ok=True)
        total = len(dataset)
        shard_count = (total + shard_size - 1) // shard_size
        mine = [shard for shard in range(shard_count) if shard % world_size == rank]
        mine_total = sum(min(shard_size, total - shard * shard_size) for shard in mine)
        progress = tqdm(
            total=mine_total, desc="caching latents", unit="sample", disable=not show_progress, dynamic_ncols=True
        )
        was_training = codec.training
        codec.eval()
        for shard in mine:
            path = directory / _shard_name(shard)
            if path.is_file():
                progress.update(min(shard_size, total - shard * shard_size))
                continue
            indices = range(shard * shard_size, min(total, (shard + 1) * shard_size))
            encoded = encode_shard(
                codec,
                dataset,
                indices,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
                tensors=tensors,
            )
            with atomic_file(path) as temporary:
                save_file(encoded, temporary)
        codec.train(was_training)
        progress.close()
        barrier()
        if rank == 0:
            index = {
                "format": CACHE_FORMAT,
                "fingerprint": fingerprint,
                "num_samples": total,
                "tensors": list(tensors),
                "shards": [_shard_name(shard) for shard in range(shard_count)],
            }
            write_bytes_atomically(directory / INDEX_FILE, (json.dumps(index, indent=1) + "\n").encode())
    barrier()
    return directory


class CachedLatents:
    """Cached tensors in memory by name (`CACHED_TENSORS` or `FRAME_TENSORS`; see the module text), sample-major."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CachedLatents:
        """All shards of a complete cache folder."""
        directory = Path(directory)
        index = json.loads((directory / INDEX_FILE).read_text())
        shards = [load_file(directory / name) for name in index["shards"]]
        names = index.get("tensors", CACHED_TENSORS)  # image caches written before frame caches existed name none
        latents = cls({name: torch.cat([shard[name] for shard in shards]) for name in names})
        if len(latents) != index["num_samples"]:
            raise ValueError(f"{directory}: cache holds {len(latents)} samples, its index says {index['num_samples']}")
        return latents

    @classmethod
    def gather(cls, parts: Sequence[CachedLatents], locations: Sequence[tuple[int, int]]) -> CachedLatents:
        """The latents of a mixture whose item i is sample `locations[i] = (part, index)` of `parts`."""
        offsets = [0]
        for part in parts[:-1]:
            offsets.append(offsets[-1] + len(part))
        order = torch.tensor([offsets[part] + index for part, index in locations], dtype=torch.long)
        names = parts[0].tensors
        return cls({name: torch.cat([part[name] for part in parts])[order] for name in names})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))
