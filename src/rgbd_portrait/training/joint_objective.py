"""The joint stage's diffusion objective on `[rgb, depth]` latents, with one task per sample.

For a batch of clean latents x0 (B, 2C, h, w) the objective draws, from one seeded generator:

* a task per sample (joint / image→depth / depth→image, with the configured probabilities),
* a timestep per sample, uniform over the training schedule, and Gaussian noise ε,
* a reference-dropout flag per sample (the sample then ignores its reference: the unconditional branch of
  classifier-free guidance),
* with `image_to_depth_terminal_fraction` > 0, which image→depth samples move to the last timestep: one-step
  image→depth starts there, and a uniform draw lands there once in a thousand.

Both modalities are noised to x_t at the sample's timestep, including a known one: the sampler does the same,
replacing the known modality's noisy channels by the known latent noised to the current timestep, so the
backbone always sees a consistent x_t. The known channels carry the clean known latent. The target is ε,
v = α·ε − σ·x0 or x0 (the scheduler's `prediction_type`), and the loss is a weighted mean squared error
over the *unknown* modalities only, with background latents weighted by `background_loss_weight`. The depth
channels are further weighted by how far the sample's depth is to be trusted (`depth_trust`): exact depth in
full, pseudo-depth by `pseudo_depth_weight`, and its extrapolated part (outside the face mesh) by
`extrapolated_depth_weight` on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from rgbd_portrait.models.layout import Task, expand_masks, task_masks
from rgbd_portrait.training.config import JointStageConfig, MotionStageConfig, TaskProbabilities


def latent_foreground(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (B, 1, H, W) in {0, 1} → the foreground fraction of each latent cell (B, 1, h, w)."""
    return F.adaptive_avg_pool2d(mask.float(), latent_size)


def sample_tasks(probabilities: TaskProbabilities, batch_size: int, generator: torch.Generator) -> list[Task]:
    tasks = list(Task)
    weights = torch.tensor([getattr(probabilities, task.value) for task in tasks], device=generator.device)
    choices = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    return [tasks[index] for index in choices.tolist()]


def diffusion_target(
    scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the backbone learns to predict from x_t: ε, v = α·ε − σ·x0 or x0 (the scheduler's prediction type)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unsupported prediction type {prediction_type!r}; use epsilon, v_prediction or sample")


@dataclass
class DiffusionInputs:
    """Everything one training forward pass needs besides the reference latents."""

    noisy: torch.Tensor  # (B, 2C, h, w) x_t of both modalities
    known: torch.Tensor  # (B, 2C, h, w) clean latents (the layout zeroes the unknown modality)
    masks: torch.Tensor  # (B, 2, h, w) 1 where a modality is known
    timesteps: torch.Tensor  # (B,) int64
    drop_reference: torch.Tensor  # (B,) bool
    target: torch.Tensor  # (B, 2C, h, w) ε, v or x0
    loss_weights: torch.Tensor  # (B, 2C, h, w) zero on known modalities
    tasks: list[Task]


def depth_trust(
    pseudo_depth: torch.Tensor, depth_observed: torch.Tensor, stage: JointStageConfig | MotionStageConfig
) -> torch.Tensor:
    """Depth loss weight per latent cell (B, 1, h, w) from the batch's `pseudo_depth` (B,) flags and the
    observed share of each cell `depth_observed` (B, 1, h, w), with the stage's `pseudo_depth_weight` and
    `extrapolated_depth_weight`; 1 for exact depth."""
    pseudo = pseudo_depth.to(depth_observed.dtype).view(-1, 1, 1, 1)
    extrapolated = 1.0 - depth_observed
    pseudo_weight = stage.pseudo_depth_weight * (depth_observed + stage.extrapolated_depth_weight * extrapolated)
    return (1.0 - pseudo) + pseudo * pseudo_weight


def make_diffusion_inputs(
    clean: torch.Tensor,
    foreground: torch.Tensor,
    *,
    scheduler: DDPMScheduler,
    stage: JointStageConfig,
    generator: torch.Generator,
    depth_weight: torch.Tensor | None = None,
) -> DiffusionInputs:
    """Draw tasks, timesteps, noise and reference dropout for clean latents `clean` (B, 2C, h, w).

    `generator` lives on `clean`'s device; `foreground` (B, 1, h, w) is `latent_foreground` of the pixel mask;
    `depth_weight` (B, 1, h, w), e.g. `depth_trust`, scales the depth channels' loss (None: 1).
    """
    batch, channels, height, width = clean.shape
    device = clean.device
    tasks = sample_tasks(stage.tasks, batch, generator)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device, dtype=torch.int64
    )
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    drop_reference = torch.rand(batch, generator=generator, device=device) < stage.reference_dropout
    image_to_depth = torch.tensor([task == Task.IMAGE_TO_DEPTH for task in tasks], device=device)
    # Drawn only when asked for, so that runs without it keep their random stream.
    if stage.image_to_depth_reference_dropout > 0:
        unreferenced = torch.rand(batch, generator=generator, device=device) < stage.image_to_depth_reference_dropout
        drop_reference = drop_reference | (image_to_depth & unreferenced)
    if stage.image_to_depth_terminal_fraction > 0:
        terminal = torch.rand(batch, generator=generator, device=device) < stage.image_to_depth_terminal_fraction
        last = scheduler.config.num_train_timesteps - 1
        timesteps = torch.where(image_to_depth & terminal, torch.full_like(timesteps, last), timesteps)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = diffusion_target(scheduler, clean, noise, timesteps)
    masks = task_masks(tasks, batch_size=batch, height=height, width=width, device=device, dtype=clean.dtype)
    background = stage.background_loss_weight
    spatial = background + (1.0 - background) * foreground.to(clean.dtype)
    loss_weights = (1.0 - expand_masks(masks, channels // 2)) * spatial
    if depth_weight is not None:
        modality_weights = torch.cat([torch.ones_like(depth_weight), depth_weight.to(clean.dtype)], dim=1)
        loss_weights = loss_weights * modality_weights.repeat_interleave(channels // 2, dim=1)
    return DiffusionInputs(
        noisy=noisy,
        known=clean,
        masks=masks,
        timesteps=timesteps,
        drop_reference=drop_reference,
        target=target,
        loss_weights=loss_weights,
        tasks=tasks,
    )


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·(prediction − target)² / Σ w, computed in float32."""
    squared = (prediction.float() - target.float()).square()
    return (weights * squared).sum() / weights.sum().clamp_min(1e-8)
