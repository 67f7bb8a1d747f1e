"""Validation during training: a fixed set of validation samples, image grids and metrics.

Codec stage: posterior-mode reconstructions of RGB and depth. Joint stage: every task sampled (with the
pipeline's sampler) from the same seeded noise at every validation, so grids of successive steps are
comparable, and the denoising loss of each task at fixed timesteps and noise. Images are written as PNG
grids (one row per sample, captioned columns) under the stage's `validation/` folder.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rgbd_portrait.data.depth_normalization import to_unit_range
from rgbd_portrait.data.image_io import colorize_depth, make_preview
from rgbd_portrait.evaluation.metrics import align_scale_shift, mean_absolute_error, psnr
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.models.layout import Task, expand_masks, task_masks
from rgbd_portrait.models.reference import ReferenceFeatures
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.pipelines.sampling import sample_latents
from rgbd_portrait.training.codec_stage import codec_images
from rgbd_portrait.training.config import JointStageConfig, TaskProbabilities
from rgbd_portrait.training.joint_objective import latent_foreground, make_diffusion_inputs, weighted_mse
from rgbd_portrait.training.seeding import derive_seed, make_generator

VALIDATION_SEED = 1234


def rgb_panel(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] → (H, W, 3) float in [0, 1]."""
    return ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()


def depth_panel(depth: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    """(1, H, W) normalised depth → colourised (H, W, 3) uint8, black outside `mask` (1, H, W) when given."""
    valid = None if mask is None else mask[0].cpu().numpy() > 0.5
    return colorize_depth(to_unit_range(depth.float())[0].cpu().numpy(), mask=valid)


def write_grid(path: Path, rows: list[list[tuple[str, np.ndarray]]], *, height: int = 128) -> Path:
    """Captioned rows of panels stacked into one PNG."""
    images = [make_preview(row, height=height) for row in rows]
    grid = Image.new("RGB", (max(image.width for image in images), sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        grid.paste(image, (0, top))
        top += image.height
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return write_bytes_atomically(path, buffer.getvalue())


@torch.no_grad()
def validate_codec(vae, batch: dict[str, torch.Tensor], path: Path) -> dict[str, float]:
    """Reconstruction metrics of the validation batch, and its grid written to `path`."""
    device = next(vae.parameters()).device
    images = codec_images(batch).to(device=device, dtype=vae.dtype)
    reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1).float().cpu()
    count = batch["rgb"].shape[0]
    rgb, depth = reconstruction[:count], reconstruction[count:].mean(1, keepdim=True)
    mask = batch["mask"]
    rows = [
        [
            ("rgb", rgb_panel(batch["rgb"][index])),
            ("reconstructed", rgb_panel(rgb[index])),
            ("depth", depth_panel(batch["depth"][index], mask[index])),
            ("reconstructed", depth_panel(depth[index], mask[index])),
        ]
        for index in range(count)
    ]
    write_grid(path, rows)
    everywhere = torch.ones_like(mask[:, 0])
    return {
        "rgb_psnr": float(psnr((rgb + 1) / 2, (batch["rgb"] + 1) / 2, everywhere).mean()),
        "depth_mae": float(mean_absolute_error(depth, batch["depth"], everywhere).mean() / 2),
    }


@torch.no_grad()
def sample_task(
    model: RGBDPortraitModel,
    *,
    task: Task,
    known: torch.Tensor,
    reference: ReferenceFeatures,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Clean latents (B, 2C, h, w) of one task, sampled with the pipeline's sampler and the model's scheduler."""
    scheduler = model.make_scheduler()
    scheduler.set_timesteps(steps, device=known.device)
    batch, channels, height, width = known.shape
    masks = task_masks(task, batch_size=batch, height=height, width=width, device=known.device)
    noise = torch.randn(known.shape, generator=generator, device=known.device)
    latents = torch.randn(known.shape, generator=generator, device=known.device) * scheduler.init_noise_sigma
    return sample_latents(
        model,
        latents,
        scheduler.timesteps,
        scheduler=scheduler,
        reference=reference,
        noise=noise,
        known=known,
        known_mask=expand_masks(masks, channels // 2),
        generator=generator,
        progress_bar_config={"disable": True},
    )


@torch.no_grad()
def validate_joint(
    model: RGBDPortraitModel, batch: dict[str, torch.Tensor], path: Path, *, stage: JointStageConfig
) -> dict[str, float]:
    """Sample every task on the validation batch, write the grid, return per-task metrics."""
    device = next(model.denoiser.parameters()).device
    codec = model.codec
    rgb, depth, mask = batch["rgb"].to(device), batch["depth"].to(device), batch["mask"].to(device)
    clean = codec.encode_rgbd(rgb, depth)
    reference_rgb = batch["reference_rgb"].to(device)
    reference_latents = codec.encode_rgb(reference_rgb)
    steps = stage.validation_inference_steps or model.default_steps
    metrics: dict[str, float] = {}

    # Denoising loss of each task at the same timesteps and noise every time.
    scheduler = model.make_scheduler()
    foreground = latent_foreground(mask, tuple(clean.shape[2:]))
    reference = model.encode_reference(reference_latents, reference_rgb=reference_rgb)
    for task in Task:
        only_task = dataclasses.replace(
            stage,
            tasks=TaskProbabilities(**{other.value: float(other == task) for other in Task}),
            reference_dropout=0.0,
        )
        generator = make_generator(derive_seed(VALIDATION_SEED, "loss", task.value), device)
        inputs = make_diffusion_inputs(clean, foreground, scheduler=scheduler, stage=only_task, generator=generator)
        prediction = model.denoise(
            inputs.noisy, inputs.timesteps, known=inputs.known, masks=inputs.masks, reference=reference
        )
        metrics[f"loss_{task.value}"] = float(weighted_mse(prediction, inputs.target, inputs.loss_weights))

    decoded: dict[Task, tuple[torch.Tensor, torch.Tensor]] = {}
    for task in Task:
        generator = make_generator(derive_seed(VALIDATION_SEED, "sample", task.value), device)
        latents = sample_task(model, task=task, known=clean, reference=reference, steps=steps, generator=generator)
        decoded[task] = codec.decode_rgbd(latents)
    on_mask = mask[:, 0]
    predicted_depth = to_unit_range(decoded[Task.IMAGE_TO_DEPTH][1][:, 0])
    aligned = align_scale_shift(predicted_depth, to_unit_range(depth[:, 0]), on_mask).aligned

    target_depth = to_unit_range(depth)
    metrics["image_to_depth_mae"] = float(mean_absolute_error(aligned[:, None], target_depth, on_mask).mean())
    metrics["depth_to_image_psnr"] = float(
        psnr((decoded[Task.DEPTH_TO_IMAGE][0] + 1) / 2, (rgb + 1) / 2, on_mask).mean()
    )

    rows = []
    for index in range(rgb.shape[0]):
        sample_mask = batch["mask"][index]
        rows.append(
            [
                ("reference", rgb_panel(batch["reference_rgb"][index])),
                ("rgb", rgb_panel(batch["rgb"][index])),
                ("depth", depth_panel(batch["depth"][index], sample_mask)),
                ("joint rgb", rgb_panel(decoded[Task.JOINT][0][index])),
                ("joint depth", depth_panel(decoded[Task.JOINT][1][index], None)),
                ("image to depth", depth_panel(decoded[Task.IMAGE_TO_DEPTH][1][index], sample_mask)),
                ("depth to image", rgb_panel(decoded[Task.DEPTH_TO_IMAGE][0][index])),
            ]
        )
    write_grid(path, rows)
    return metrics
