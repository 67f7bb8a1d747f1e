"""Samplers: plain functions of (model, latents, timesteps, ...) that run one denoising loop on `[rgb, depth]`.

Known content (an input image, an input depth, a region of either) is given as clean latents `known`
(B, 2C, h, w) and a per-channel weight `known_mask` (B, 2C, h, w) in [0, 1], 1 = known. Before every backbone
call the known part of the noisy latents is replaced by the known latents noised to the current timestep (with
the same noise as the start), and after the last step by the clean known latents. This is what the trainer
shows the backbone for a known modality, and it is the whole conditioning of the **training-free** variant.

The two variants differ only in what the backbone is told:

* `"channels"` (channel-wise inpainting, the trained tasks): the masks of the layout say which modality is
  known and the known channels carry its clean latents (image→depth, depth→image);
* `"replacement"` (training-free, RePaint-style latent replacement): the backbone runs the joint task (no
  masks, no known channels) and sees the known content only through the replaced noisy latents; this works for
  any region and needs no task-specific training.

A `steer` function, if given, moves the clean latents each step's prediction implies (mouth guidance:
`rgbd_portrait.models.mouth_guide`); the prediction is rewritten to imply the moved ones, so any scheduler of the
variance-preserving family (DDIM, DDPM, DPM-Solver: `init_noise_sigma` 1) steps from it.

Classifier-free guidance is over the reference: the unconditional branch drops it (attends only to itself,
dropped context), as reference dropout does in training. Reference features are computed by the caller once
and reused at every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import MODALITIES
from rgbd_portrait.models.reference import ReferenceFeatures
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel

Conditioning = Literal["channels", "replacement"]
CONDITIONINGS = ("channels", "replacement")


def with_unconditional_branch(model: RGBDPortraitModel, reference: ReferenceFeatures) -> ReferenceFeatures:
    """Features for a doubled batch `[unconditional, conditional]`, without running the reference net again.

    The unconditional half reuses the bank (its tokens are masked out by `drop`) and gets the dropped context.
    """
    batch_size = reference.batch_size
    dropped = torch.ones(batch_size, dtype=torch.bool, device=reference.drop.device)
    dropped_context = model.context(batch_size=batch_size, drop=dropped).to(reference.context)
    return ReferenceFeatures(
        bank={name: torch.cat([tokens, tokens]) for name, tokens in reference.bank.items()},
        drop=torch.cat([dropped, reference.drop]),
        context=torch.cat([dropped_context, reference.context]),
        latent_size=reference.latent_size,
    )


def modality_masks(known_mask: torch.Tensor) -> torch.Tensor:
    """Per-channel known weights (B, 2C, h, w) → the layout's masks (B, 2, h, w): 1 where all channels of a
    modality are known at that position."""
    return torch.stack([part.amin(dim=1) for part in known_mask.chunk(len(MODALITIES), dim=1)], dim=1)


def _repeat_timestep(timestep: torch.Tensor, batch_size: int) -> torch.Tensor:
    return timestep.reshape(1).repeat(batch_size)


def guided_prediction(
    model: RGBDPortraitModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    *,
    known: torch.Tensor,
    masks: torch.Tensor,
    reference: ReferenceFeatures,
    guidance_scale: float,
) -> torch.Tensor:
    """One backbone evaluation; with guidance (`reference` then covers the doubled batch of
    `with_unconditional_branch`) it is `uncond + scale · (cond − uncond)`."""
    guided = reference.batch_size == 2 * latents.shape[0]
    if guided:
        latents, known, masks = (torch.cat([tensor, tensor]) for tensor in (latents, known, masks))
    prediction = model.denoise(
        latents, _repeat_timestep(timestep, latents.shape[0]), known=known, masks=masks, reference=reference
    )
    if not guided:
        return prediction
    unconditional, conditional = prediction.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


def steered_prediction(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    prediction: torch.Tensor,
    timestep: torch.Tensor,
    steer: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The prediction (ε, v or x0, the scheduler's type) at `timestep` that implies `steer` of the clean latents
    that `prediction` implies for the noisy `latents`. Left as it is where ε does not fix them (no signal left)."""
    alpha = scheduler.alphas_cumprod[int(timestep)].to(latents.device, torch.float64)
    signal, noise = alpha.sqrt(), (1.0 - alpha).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return steer(prediction)
    # ε implies no clean latents where no signal is left (zero terminal SNR), v none where no noise is.
    if float(alpha) >= 1.0 or (kind == "epsilon" and float(alpha) < 1e-6):
        return prediction
    signal, noise = signal.to(latents.dtype), noise.to(latents.dtype)
    if kind == "epsilon":
        clean = (latents - noise * prediction) / signal
        return (latents - signal * steer(clean)) / noise
    if kind == "v_prediction":
        clean = signal * latents - noise * prediction
        return (signal * latents - steer(clean)) / noise
    raise ValueError(f"unsupported prediction type {kind!r}; use epsilon, v_prediction or sample")


def sample_latents(
    model: RGBDPortraitModel,
    latents: torch.Tensor,
    timesteps: Sequence[torch.Tensor] | torch.Tensor,
    *,
    scheduler: SchedulerMixin,
    reference: ReferenceFeatures,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    conditioning: Conditioning = "channels",
    guidance_scale: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress_bar_config: dict | None = None,
    steer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise `latents` (B, 2C, h, w), the noisy state at `timesteps[0]`, along `timesteps` (from
    `scheduler.set_timesteps`, possibly a tail of them); returns the clean latents.

    `noise` (B, 2C, h, w) is the noise that re-noises the known latents. `reference` comes from
    `model.encode_reference` (passed through `with_unconditional_branch` when `guidance_scale` > 1). `steer` maps
    each step's clean-latent estimate (B, 2C, h, w) to where it should be (see the module text).
    """
    if steer is not None and getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:
        raise UserInputError(f"steering needs a variance-preserving scheduler, not {type(scheduler).__name__}")
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}")
    batch_size = latents.shape[0]
    if known is None or known_mask is None:
        known = torch.zeros_like(latents)
        known_mask = torch.zeros_like(latents)
    known_mask = known_mask.to(latents)
    backbone_known = known if conditioning == "channels" else torch.zeros_like(known)
    masks = modality_masks(known_mask) if conditioning == "channels" else latents.new_zeros(batch_size, 2, 1, 1)
    masks = masks.expand(-1, -1, *latents.shape[2:])
    has_known = bool(known_mask.any())

    for timestep in tqdm(timesteps, desc="denoising", **(progress_bar_config or {})):
        if has_known:
            renoised = scheduler.add_noise(known, noise, _repeat_timestep(timestep, batch_size))
            latents = known_mask * renoised + (1.0 - known_mask) * latents
        model_input = scheduler.scale_model_input(latents, timestep)
        prediction = guided_prediction(
            model,
            model_input,
            timestep,
            known=backbone_known,
            masks=masks,
            reference=reference,
            guidance_scale=guidance_scale,
        )
        if steer is not None:
            prediction = steered_prediction(scheduler, latents, prediction, timestep, steer)
        latents = scheduler.step(prediction, timestep, latents, generator=generator).prev_sample
    if has_known:
        latents = known_mask * known + (1.0 - known_mask) * latents
    return latents
