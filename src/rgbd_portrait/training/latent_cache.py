"""Latents of a fixed data set, encoded once by the frozen VAE and stored as safetensors shards.

With the VAE frozen in the joint stage, encoding the same images at every epoch is wasted work, and on a CPU
it is most of the work. A cache folder holds::

    index.json               what was encoded (fingerprint), how many samples, the shard files
    shard-00000.safetensors  rgb, rgb_on_backdrop (the image on its flat backdrop), depth (n, C, h, w): scaled
                             latents; foreground and
                             depth_observed (n, 1, h, w): each latent cell's share of the person and of
                             observed depth; pseudo_depth (n,): 1 for pseudo-depth samples

The folder name is a fingerprint of the VAE weights and config, the data set's sample list and the
resolution, so a changed VAE or data set never reads stale latents. Shards are written to temporary names and
renamed, and `index.json` comes last: a cache is either complete or ignored.
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
CACHE_FORMAT = 3


def cache_fingerprint(codec: LatentCodec, sample_names: Sequence[str], resolution: int) -> str:
    """A short hash of everything the cached latents depend on."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "resolution": resolution}).encode())
    digest.update(json.dumps(dict(codec.vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(codec.vae.state_dict().items()):
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
    codec: LatentCodec, dataset: Dataset, indices: Sequence[int], *, batch_size: int, num_workers: int, progress
) -> dict[str, torch.Tensor]:
    """Latents of `dataset[i]` for i in `indices`, in that order."""
    device = next(codec.parameters()).device
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers)
    parts: dict[str, list[torch.Tensor]] = {
        "rgb": [],
        "rgb_on_backdrop": [],
        "depth": [],
        "foreground": [],
        "depth_observed": [],
        "pseudo_depth": [],
    }
    for batch in loader:
        rgb = batch["rgb"].to(device)
        latents = codec.encode_rgbd(rgb, batch["depth"].to(device)).float().cpu()
        rgb_latents, depth_latents = latents.chunk(2, dim=1)
        latent_size = tuple(latents.shape[2:])
        parts["rgb"].append(rgb_latents)
        parts["rgb_on_backdrop"].append(codec.encode_rgb(batch["rgb_on_backdrop"].to(device)).float().cpu())
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
) -> Path:
    """Encode `dataset` into `directory`, the processes sharing the shards; a complete cache is reused."""
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
            tensors = encode_shard(
                codec, dataset, indices, batch_size=batch_size, num_workers=num_workers, progress=progress
            )
            with atomic_file(path) as temporary:
                save_file(tensors, temporary)
        codec.train(was_training)
        progress.close()
        barrier()
        if rank == 0:
            index = {
                "format": CACHE_FORMAT,
                "fingerprint": fingerprint,
                "num_samples": total,
                "shards": [_shard_name(shard) for shard in range(shard_count)],
            }
            write_bytes_atomically(directory / INDEX_FILE, (json.dumps(index, indent=1) + "\n").encode())
    barrier()
    return directory


class CachedLatents:
    """All tensors of a complete cache, in memory, under the shards' names (see the module text)."""

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        index = json.loads((directory / INDEX_FILE).read_text())
        shards = [load_file(directory / name) for name in index["shards"]]
        self.rgb = torch.cat([shard["rgb"] for shard in shards])
        self.rgb_on_backdrop = torch.cat([shard["rgb_on_backdrop"] for shard in shards])
        self.depth = torch.cat([shard["depth"] for shard in shards])
        self.foreground = torch.cat([shard["foreground"] for shard in shards])
        self.depth_observed = torch.cat([shard["depth_observed"] for shard in shards])
        self.pseudo_depth = torch.cat([shard["pseudo_depth"] for shard in shards])
        if self.rgb.shape[0] != index["num_samples"]:
            raise ValueError(
                f"{directory}: cache holds {self.rgb.shape[0]} samples, its index says {index['num_samples']}"
            )

    def __len__(self) -> int:
        return self.rgb.shape[0]
