"""The two training stages as recipes the trainer runs: what is trained, its loss, validation, last touches.

* `CodecRecipe`: the VAE (`model.vae`) learns to reconstruct RGB and normalised depth (`codec_stage`).
* `JointRecipe`: the denoiser (`model.denoiser`: backbone + reference net + context) learns the multi-task
  diffusion objective on latents of the frozen VAE (`joint_objective`), from images or cached latents.

A recipe's `module` is what Accelerate wraps for data parallelism; `loss` must call that (wrapped) module.
Its `training_only` network (or None) is part of `module` and trained with it, but kept only in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.autoencoder import decoder_width, widen_decoder
from rgbd_portrait.models.context import ClipImageContext
from rgbd_portrait.models.layout import join_modalities
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.training.codec_stage import (
    CodecTrainingModule,
    PatchDiscriminator,
    calibrate_latent_scale,
    codec_images,
    codec_loss,
    random_crop,
)
from rgbd_portrait.training.config import CodecStageConfig, ExperimentConfig, JointStageConfig
from rgbd_portrait.training.data import calibration_batches
from rgbd_portrait.training.joint_objective import (
    depth_trust,
    latent_foreground,
    make_diffusion_inputs,
    weighted_mse,
)
from rgbd_portrait.training.seeding import derive_seed
from rgbd_portrait.training.validation import validate_codec, validate_joint

Batch = dict[str, torch.Tensor]


def check_stage_settings(config: ExperimentConfig, model: RGBDPortraitModel, *, resolution: int) -> None:
    """Settings that depend on the model, checked before any work starts (one-line errors)."""
    crop_size = config.train.codec.crop_size
    factor = model.codec.downscale_factor
    if "codec" in config.train.stages and crop_size is not None and (crop_size > resolution or crop_size % factor):
        raise UserInputError(
            f"train.codec.crop_size: {crop_size} must be at most the resolution {resolution} and a multiple of "
            f"the VAE's factor {factor}"
        )
    width, present = config.train.codec.decoder_width, decoder_width(model.vae)
    if "codec" in config.train.stages and width > present and width % present:
        raise UserInputError(f"train.codec.decoder_width: {width} is not a multiple of the model's {present}")
    # A CLIP context embeds the reference image itself, which cached latents cannot give back.
    cached_stages = {"joint", "motion"} & set(config.train.stages)
    if cached_stages and config.data.cache_latents and isinstance(model.context, ClipImageContext):
        raise UserInputError("data.cache_latents: the CLIP context needs the reference images; set it to false")


class CodecRecipe:
    """`training_only` is the discriminator, when the stage has one: trained and checkpointed, never saved with
    the model."""

    name = "codec"
    uses_latents = False

    def __init__(self, model: RGBDPortraitModel, stage: CodecStageConfig, *, seed: int):
        if stage.decoder_width > decoder_width(model.vae):
            model.codec.vae = widen_decoder(model.vae, stage.decoder_width)
        model.denoiser.requires_grad_(False)
        model.vae.requires_grad_(True)
        if not stage.train_encoder:
            for part in (model.vae.encoder, model.vae.quant_conv):
                if part is not None:
                    part.requires_grad_(False)
        self.model = model
        self.stage = stage
        self.training_only = None
        if stage.adversarial_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, "codec", "discriminator"))
                self.training_only = PatchDiscriminator().to(model.vae.device)
        self.module = CodecTrainingModule(model.vae, self.training_only)

    def enable_gradient_checkpointing(self) -> None:
        self.model.vae.enable_gradient_checkpointing()

    def loss(self, module: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, Batch]:
        images = codec_images(batch)
        if self.stage.crop_size is not None:
            images = random_crop(images, self.stage.crop_size, generator)
        return codec_loss(
            module(images, generator), images, self.stage, last_layer=self.model.vae.decoder.conv_out.weight
        )

    def validate(self, batch: Batch, path: Path) -> dict[str, float]:
        return validate_codec(self.model.vae, batch, path)

    def finishing_batches(self, samples: Dataset, train_set: Dataset, batch_size: int) -> Iterator[Batch]:
        """The images `finish` calibrates the latent scale on."""
        return calibration_batches(train_set, batch_size)

    def finish(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Calibrate the latent scale on training batches, before the stage's model is saved (a frozen encoder
        keeps the scale it has)."""
        if self.stage.train_encoder:
            shift, scale = calibrate_latent_scale(self.model.vae, batches)
        else:
            shift, scale = self.model.vae.config.shift_factor, self.model.vae.config.scaling_factor
        return {"latent_shift": shift, "latent_scale": scale}


class JointRecipe:
    name = "joint"
    training_only = None

    def __init__(self, model: RGBDPortraitModel, stage: JointStageConfig, *, uses_latents: bool):
        model.vae.requires_grad_(False)
        self.model = model
        self.stage = stage
        self.module = model.denoiser
        self.scheduler = model.make_scheduler()
        self.uses_latents = uses_latents

    def enable_gradient_checkpointing(self) -> None:
        self.model.denoiser.enable_gradient_checkpointing()

    @torch.no_grad()
    def _latents(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean `[rgb, depth]` latents, the latent foreground, the reference latents and the depth observed
        share of each latent cell, of a batch."""
        if self.uses_latents:
            clean = join_modalities(batch["rgb_latents"], batch["depth_latents"])
            return clean, batch["foreground"], batch["reference_latents"], batch["depth_observed"]
        codec = self.model.codec
        clean = codec.encode_rgbd(batch["rgb"], batch["depth"])
        latent_size = tuple(clean.shape[2:])
        foreground = latent_foreground(batch["mask"], latent_size)
        observed = latent_foreground(batch["depth_observed"], latent_size)
        return clean, foreground, codec.encode_rgb(batch["reference_rgb"]), observed

    def loss(self, module: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, Batch]:
        clean, foreground, reference_latents, observed = self._latents(batch)
        inputs = make_diffusion_inputs(
            clean,
            foreground,
            scheduler=self.scheduler,
            stage=self.stage,
            generator=generator,
            depth_weight=depth_trust(batch["pseudo_depth"], observed, self.stage),
        )
        prediction = module(
            inputs.noisy,
            inputs.timesteps,
            reference_latents=reference_latents,
            known=inputs.known,
            masks=inputs.masks,
            drop_reference=inputs.drop_reference,
            reference_rgb=batch.get("reference_rgb"),
        )
        return weighted_mse(prediction, inputs.target, inputs.loss_weights), {}

    def validate(self, batch: Batch, path: Path) -> dict[str, float]:
        return validate_joint(self.model, batch, path, stage=self.stage)

    def finishing_batches(self, samples: Dataset, train_set: Dataset, batch_size: int) -> Iterator[Batch]:
        return iter(())

    def finish(self, batches: Iterable[Batch]) -> dict[str, float]:
        return {}
