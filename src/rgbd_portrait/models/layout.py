"""The channel layout of the joint RGB-D backbone and the three tasks it solves.

With `C` latent channels per modality (4 for a Stable Diffusion VAE) the backbone reads `4C + 2` channels::

    [noisy_rgb (C), noisy_depth (C), known_rgb (C), known_depth (C), mask_rgb (1), mask_depth (1)]

and predicts `2C` channels, `[rgb (C), depth (C)]` (ε or v, per the model's prediction type). A mask is 1 where
its modality is KNOWN, so the task is nothing but the masks:

    joint           both masks 0   generate RGB and depth together
    image_to_depth  mask_rgb 1     RGB given, predict depth
    depth_to_image  mask_depth 1   depth given, predict RGB

The known latent of an unknown modality is zeroed by `build_backbone_input`, so a caller may pass any tensor
there (the clean latents of both modalities, typically).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch

from rgbd_portrait.errors import UserInputError

MODALITIES = ("rgb", "depth")


class Task(StrEnum):
    JOINT = "joint"
    IMAGE_TO_DEPTH = "image_to_depth"
    DEPTH_TO_IMAGE = "depth_to_image"

    @property
    def known(self) -> tuple[bool, bool]:
        """Whether (rgb, depth) is given for this task."""
        return {
            Task.JOINT: (False, False),
            Task.IMAGE_TO_DEPTH: (True, False),
            Task.DEPTH_TO_IMAGE: (False, True),
        }[self]


def input_layout(latent_channels: int) -> dict[str, int]:
    """Backbone input blocks in order, with their channel counts (recorded in checkpoints)."""
    blocks = {f"{role}_{modality}": latent_channels for role in ("noisy", "known") for modality in MODALITIES}
    return blocks | {f"mask_{modality}": 1 for modality in MODALITIES}


def output_layout(latent_channels: int) -> dict[str, int]:
    """Backbone output blocks in order, with their channel counts."""
    return {modality: latent_channels for modality in MODALITIES}


def input_channel_count(latent_channels: int) -> int:
    return sum(input_layout(latent_channels).values())


def output_channel_count(latent_channels: int) -> int:
    return sum(output_layout(latent_channels).values())


def task_masks(
    tasks: Task | str | Sequence[Task | str],
    *,
    batch_size: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Masks (B, 2, h, w) for one task shared by the batch or one task per sample."""
    if isinstance(tasks, Task | str):
        tasks = [tasks] * batch_size
    if len(tasks) != batch_size:
        raise UserInputError(f"tasks: got {len(tasks)} tasks for a batch of {batch_size}")
    try:
        known = torch.tensor([Task(task).known for task in tasks], dtype=dtype, device=device)
    except ValueError as error:
        choices = ", ".join(task.value for task in Task)
        raise UserInputError(f"tasks: {error}; use one of {choices}") from error
    return known.view(batch_size, len(MODALITIES), 1, 1).expand(-1, -1, height, width).contiguous()


def split_modalities(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, h, w) → rgb (B, C, h, w), depth (B, C, h, w)."""
    if latents.ndim != 4 or latents.shape[1] % 2:
        raise UserInputError(f"latents: expected (B, 2C, h, w), got {tuple(latents.shape)}")
    rgb, depth = latents.chunk(2, dim=1)
    return rgb, depth


def join_modalities(rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """rgb (B, C, h, w), depth (B, C, h, w) → (B, 2C, h, w)."""
    if rgb.shape != depth.shape:
        raise UserInputError(f"rgb latents {tuple(rgb.shape)} and depth latents {tuple(depth.shape)} differ in shape")
    return torch.cat([rgb, depth], dim=1)


def expand_masks(masks: torch.Tensor, latent_channels: int) -> torch.Tensor:
    """Masks (B, 2, h, w) → per-channel masks (B, 2C, h, w) matching `[rgb, depth]` latents."""
    return masks.repeat_interleave(latent_channels, dim=1)


def build_backbone_input(noisy: torch.Tensor, known: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Concatenate `[noisy (2C), known * mask (2C), masks (2)]` into the backbone input (B, 4C + 2, h, w)."""
    if noisy.ndim != 4 or noisy.shape[1] % 2:
        raise UserInputError(f"noisy latents: expected (B, 2C, h, w), got {tuple(noisy.shape)}")
    if known.shape != noisy.shape:
        raise UserInputError(f"known latents {tuple(known.shape)} must match noisy latents {tuple(noisy.shape)}")
    expected_masks = (noisy.shape[0], len(MODALITIES), *noisy.shape[2:])
    if tuple(masks.shape) != expected_masks:
        raise UserInputError(f"masks: expected {expected_masks}, got {tuple(masks.shape)}")
    masks = masks.to(noisy.dtype)
    known = known.to(noisy.dtype) * expand_masks(masks, noisy.shape[1] // 2)
    return torch.cat([noisy, known, masks], dim=1)
