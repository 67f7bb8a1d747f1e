"""`RGBDPortraitModel`: backbone, reference net, context and codec, with settings, config and checkpoints.

Two objects, so that training and sampling share one code path:

* `RGBDDenoiser` (an `nn.Module`) holds everything trainable: the expanded backbone, the reference net and the
  context. Its `forward` is one training step's network call (reference features + denoising), which is what
  Accelerate/DDP must wrap: `accelerator.prepare(model.denoiser, ...)`. Every parameter gets a gradient each
  step (reference dropout masks attention instead of skipping the reference), so DDP needs no
  `find_unused_parameters`. A frozen CLIP encoder has `requires_grad=False` and is ignored by DDP.
* `RGBDPortraitModel` adds the frozen `LatentCodec` (VAE) and the `ModelSettings`, builds models (from a YAML
  `model:` section, a local Stable Diffusion folder or a checkpoint) and saves them (see `checkpoint`).
  A talking-head model also holds `motion` (`MotionLayers`: temporal and audio layers, run by hooks on the
  backbone; see `rgbd_portrait.models.motion`), added with `add_motion_layers` and saved with the rest.

Sampling: compute `encode_reference` once, then call `denoise` at every step with the same features.

The `model:` section of a config takes either `pretrained: CHECKPOINT_DIR` alone, or an architecture and
settings::

    stable_diffusion: SD_FOLDER   # optional: weights and architecture from a local diffusers SD folder
    backbone: {...}               # UNet2DConditionModel arguments of the base (C-channel) UNet
    vae: {...}                    # AutoencoderKL arguments; with decoder_width, a WideDecoderAutoencoderKL
    context: {type: learned, num_tokens: 4} | {type: clip, path: CLIP_FOLDER, train_encoder: false}
    prediction_type: v_prediction
    scheduler: {class_name: DDIMScheduler, ...}   # merged over settings.DEFAULT_SCHEDULER
    default_steps: 20
    resolution: 512               # default: the UNet's sample_size × the VAE's downscale factor
    depth_steps: 4                # image→depth; default: 4 with trailing timesteps, else default_steps
    ensemble_size: 1              # image→depth predictions aligned and combined per image
    depth_self_reference: true    # image→depth runs the reference net on the image itself (false: no reference)

With `stable_diffusion`, `backbone` and `vae` entries are checked against the folder's configs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from rgbd_portrait import __version__
from rgbd_portrait.devices import placement
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.autoencoder import WideDecoderAutoencoderKL
from rgbd_portrait.models.backbone import backbone_latent_channels, check_supported_unet, expand_unet
from rgbd_portrait.models.checkpoint import (
    COMPONENT_NAMES,
    FORMAT_VERSION,
    INDEX_NAME,
    MODEL_CLASS_NAME,
    OPTIONAL_COMPONENT_NAMES,
    atomic_directory,
    index_entry,
    load_component,
    read_index,
    read_json,
    save_component,
)
from rgbd_portrait.models.codec import LatentCodec
from rgbd_portrait.models.context import ClipImageContext, LearnedContext
from rgbd_portrait.models.layout import Task, build_backbone_input, input_layout, output_layout, task_masks
from rgbd_portrait.models.motion import MotionLayers
from rgbd_portrait.models.reference import ReferenceFeatures, ReferenceNet, install_reference_reading
from rgbd_portrait.models.settings import SETTING_KEYS, ModelSettings

ARCHITECTURE_KEYS = ("stable_diffusion", "backbone", "vae", "context")
CONTEXT_TYPES = ("learned", "clip")


class RGBDDenoiser(nn.Module):
    """The trainable network: expanded backbone + reference net + cross-attention context."""

    def __init__(
        self, backbone: UNet2DConditionModel, reference_net: ReferenceNet, context: LearnedContext | ClipImageContext
    ):
        super().__init__()
        self.latent_channels = backbone_latent_channels(backbone)
        if reference_net.latent_channels != self.latent_channels:
            raise UserInputError(
                f"reference_net: takes {reference_net.latent_channels}-channel latents, the backbone "
                f"{self.latent_channels}-channel ones"
            )
        width = backbone.config.cross_attention_dim
        for name, component_width in (
            ("reference_net", reference_net.unet.config.cross_attention_dim),
            ("context", context.cross_attention_dim),
        ):
            if component_width != width:
                raise UserInputError(f"{name}: cross-attention width {component_width}, the backbone's is {width}")
        layer_names = install_reference_reading(backbone)
        if sorted(layer_names) != sorted(reference_net.layer_names):
            raise UserInputError("reference_net: its self-attention layers do not pair by name with the backbone's")
        self.backbone = backbone
        self.reference_net = reference_net
        self.context = context

    def encode_reference(
        self,
        reference_latents: torch.Tensor,
        *,
        drop: torch.Tensor | Sequence[bool] | None = None,
        reference_rgb: torch.Tensor | None = None,
    ) -> ReferenceFeatures:
        """Run the reference net once on clean reference latents (B, C, h, w).

        `drop` (B,) marks samples that must ignore the reference (the unconditional branch of guidance,
        reference dropout). `reference_rgb` (B, 3, H, W) in [-1, 1] is needed by a CLIP context only.
        """
        if reference_latents.ndim != 4 or reference_latents.shape[1] != self.latent_channels:
            raise UserInputError(
                f"reference latents: expected (B, {self.latent_channels}, h, w), got {tuple(reference_latents.shape)}"
            )
        batch_size = reference_latents.shape[0]
        device = reference_latents.device
        if drop is None:
            drop = torch.zeros(batch_size, dtype=torch.bool, device=device)
        drop = torch.as_tensor(drop, device=device).to(torch.bool).reshape(-1)
        if drop.shape[0] != batch_size:
            raise UserInputError(f"drop: {drop.shape[0]} flags for a batch of {batch_size} reference latents")
        context = self.context(batch_size=batch_size, reference_rgb=reference_rgb, drop=drop)
        bank = self.reference_net(reference_latents.to(placement(self.reference_net)[1]), context)
        return ReferenceFeatures(bank=bank, drop=drop, context=context, latent_size=tuple(reference_latents.shape[2:]))

    def no_reference(self, batch_size: int, latent_size: tuple[int, int], *, device: torch.device) -> ReferenceFeatures:
        """Features of no reference, without running the reference net: the backbone attends only to itself and
        reads the dropped context, exactly as for a reference dropped in training."""
        drop = torch.ones(batch_size, dtype=torch.bool, device=device)
        context = self.context(batch_size=batch_size, drop=drop)
        return ReferenceFeatures(bank={}, drop=drop, context=context, latent_size=tuple(latent_size))

    def denoise(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor | float,
        *,
        known: torch.Tensor | None = None,
        task: Task | str | Sequence[Task | str] | None = None,
        masks: torch.Tensor | None = None,
        reference: ReferenceFeatures | None = None,
    ) -> torch.Tensor:
        """One backbone call: noisy latents `[rgb, depth]` (B, 2C, h, w) → prediction (B, 2C, h, w).

        Give the task as `task` (one for the batch or one per sample) or as `masks` (B, 2, h, w), 1 = known.
        `known` holds the clean latents of the known modalities (unknown ones are zeroed; None = all zero).
        Without `reference` the backbone attends only to itself and the context is the dropped one.
        """
        expected_channels = 2 * self.latent_channels
        if noisy.ndim != 4 or noisy.shape[1] != expected_channels:
            raise UserInputError(f"noisy latents: expected (B, {expected_channels}, h, w), got {tuple(noisy.shape)}")
        batch_size, _, height, width = noisy.shape
        if (task is None) == (masks is None):
            raise UserInputError("denoise: give exactly one of task and masks")
        if masks is None:
            masks = task_masks(task, batch_size=batch_size, height=height, width=width, device=noisy.device)
        if known is None:
            known = torch.zeros_like(noisy)
        if reference is None:
            reference = self.no_reference(batch_size, (height, width), device=noisy.device)
        else:
            if reference.batch_size != batch_size:
                raise UserInputError(
                    f"reference features are for a batch of {reference.batch_size}, the noisy latents of {batch_size}"
                )
            if tuple(reference.latent_size) != (height, width):
                raise UserInputError(
                    f"reference latents are {reference.latent_size[0]}×{reference.latent_size[1]}, "
                    f"the noisy latents {height}×{width}; encode the reference at the same resolution"
                )
        context = reference.context
        _, dtype = placement(self.backbone)
        return self.backbone(
            build_backbone_input(noisy, known, masks).to(dtype),
            timesteps,
            encoder_hidden_states=context.to(dtype),
            cross_attention_kwargs={"reference": reference},
        ).sample

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        reference_latents: torch.Tensor,
        known: torch.Tensor | None = None,
        task: Task | str | Sequence[Task | str] | None = None,
        masks: torch.Tensor | None = None,
        drop_reference: torch.Tensor | None = None,
        reference_rgb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training call: `encode_reference` then `denoise`, in one forward pass (as DDP requires)."""
        reference = self.encode_reference(reference_latents, drop=drop_reference, reference_rgb=reference_rgb)
        return self.denoise(noisy, timesteps, known=known, task=task, masks=masks, reference=reference)

    def enable_gradient_checkpointing(self) -> None:
        self.backbone.enable_gradient_checkpointing()
        self.reference_net.enable_gradient_checkpointing()


def _plain(section: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    if section is None:
        return {}
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    return dict(section)


def read_model_section(path: str | os.PathLike) -> dict[str, Any]:
    """The `model:` section of a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: config file not found")
    try:
        content = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # yaml and omegaconf raise many types; all mean the same to the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"{path}: cannot parse YAML ({first_line})") from error
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        raise UserInputError(f"{path}: no model: section")
    return content["model"]


def build_context(
    section: Mapping[str, Any] | None, *, cross_attention_dim: int, source: str
) -> LearnedContext | ClipImageContext:
    """The context component described by a config's `context:` entry (default: 4 learned tokens)."""
    settings = dict(section or {})
    context_type = settings.pop("type", "learned")
    if context_type == "learned":
        allowed = {"num_tokens"}
    elif context_type == "clip":
        allowed = {"path", "train_encoder"}
    else:
        raise UserInputError(f"{source}: context.type must be one of {', '.join(CONTEXT_TYPES)}, got {context_type!r}")
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise UserInputError(f"{source}: context ({context_type}) does not take {', '.join(unknown)}")
    if context_type == "learned":
        return LearnedContext(cross_attention_dim=cross_attention_dim, num_tokens=settings.get("num_tokens", 4))
    if "path" not in settings:
        raise UserInputError(f"{source}: context.path (a local CLIP vision model folder) is required for type clip")
    return ClipImageContext.from_clip_folder(
        settings["path"], cross_attention_dim=cross_attention_dim, train_encoder=settings.get("train_encoder", False)
    )


def _check_against_base(section: Mapping[str, Any], config: Mapping[str, Any], *, name: str, source: str) -> None:
    """Config entries given next to `stable_diffusion` must agree with the folder's component config."""
    for key, value in section.items():
        base_value = config.get(key)
        normalise = lambda item: list(item) if isinstance(item, list | tuple) else item
        if normalise(value) != normalise(base_value):
            raise UserInputError(
                f"{source}: {name}.{key} is {value!r}, but the Stable Diffusion {name} has {base_value!r}"
            )


class RGBDPortraitModel(nn.Module):
    """The whole model: `denoiser` (trainable), `codec` (frozen VAE), `settings`, and optionally `motion`."""

    def __init__(
        self,
        *,
        denoiser: RGBDDenoiser,
        codec: LatentCodec,
        settings: ModelSettings,
        motion: MotionLayers | None = None,
    ):
        super().__init__()
        if codec.latent_channels != denoiser.latent_channels:
            raise UserInputError(
                f"vae: {codec.latent_channels} latent channels, the backbone expects {denoiser.latent_channels}"
            )
        settings.check(source="settings")
        if settings.resolution % codec.downscale_factor:
            raise UserInputError(
                f"resolution {settings.resolution} is not a multiple of the VAE's factor {codec.downscale_factor}"
            )
        self.denoiser = denoiser
        self.codec = codec
        self.settings = settings
        codec.requires_grad_(False)
        self.motion: MotionLayers | None = None
        if motion is not None:
            self.add_motion_layers(motion)

    def add_motion_layers(self, motion: MotionLayers) -> None:
        """Insert temporal and audio layers into the backbone (they act only inside `motion.frames`)."""
        if self.motion is not None:
            raise UserInputError("the model already has motion layers")
        try:
            motion.attach(self.backbone)
        except UserInputError as error:
            raise UserInputError(f"motion: {error}") from error
        # nn.Module's `to`: diffusers' warns about float32-only modules whenever a dtype is given, even with none.
        self.motion = nn.Module.to(motion, device=self.backbone.device, dtype=self.backbone.dtype)

    # -- parts and settings ---------------------------------------------------------------------------------
    @property
    def backbone(self) -> UNet2DConditionModel:
        return self.denoiser.backbone

    @property
    def reference_net(self) -> ReferenceNet:
        return self.denoiser.reference_net

    @property
    def context(self) -> LearnedContext | ClipImageContext:
        return self.denoiser.context

    @property
    def vae(self) -> AutoencoderKL:
        return self.codec.vae

    @property
    def latent_channels(self) -> int:
        return self.denoiser.latent_channels

    @property
    def prediction_type(self) -> str:
        return self.settings.prediction_type

    @property
    def default_steps(self) -> int:
        return self.settings.default_steps

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    def make_scheduler(self) -> SchedulerMixin:
        return self.settings.make_scheduler()

    def encode_reference(self, reference_latents: torch.Tensor, **options: Any) -> ReferenceFeatures:
        """See `RGBDDenoiser.encode_reference`."""
        return self.denoiser.encode_reference(reference_latents, **options)

    def no_reference(self, batch_size: int, latent_size: tuple[int, int], *, device: torch.device) -> ReferenceFeatures:
        """See `RGBDDenoiser.no_reference`."""
        return self.denoiser.no_reference(batch_size, latent_size, device=device)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor | float, **options: Any) -> torch.Tensor:
        """See `RGBDDenoiser.denoise`."""
        return self.denoiser.denoise(noisy, timesteps, **options)

    # -- building -------------------------------------------------------------------------------------------
    @classmethod
    def from_base_unet(
        cls,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        *,
        context: LearnedContext | ClipImageContext | None = None,
        settings: ModelSettings | None = None,
    ) -> RGBDPortraitModel:
        """Expand a C-channel `unet` into the backbone and copy it into the reference net (`unet` is unchanged)."""
        check_supported_unet(unet)
        if context is None:
            context = LearnedContext(cross_attention_dim=unet.config.cross_attention_dim)
        codec = LatentCodec(vae)
        if settings is None:
            settings = ModelSettings(resolution=unet.config.sample_size * codec.downscale_factor)
        denoiser = RGBDDenoiser(expand_unet(unet), ReferenceNet.from_unet(unet), context)
        return cls(denoiser=denoiser, codec=codec, settings=settings)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | DictConfig, *, source: str = "model") -> RGBDPortraitModel:
        """Build from a config's `model:` section (see the module docstring); random weights unless a folder."""
        section = _plain(section)
        unknown = sorted(set(section) - {"pretrained", *ARCHITECTURE_KEYS, *SETTING_KEYS})
        if unknown:
            raise UserInputError(f"{source}: unknown model entries {', '.join(unknown)}")
        if "pretrained" in section:
            if len(section) > 1:
                raise UserInputError(f"{source}: pretrained excludes other model entries")
            return cls.from_pretrained(section["pretrained"])
        if section.get("stable_diffusion"):
            return cls.from_stable_diffusion(section["stable_diffusion"], section=section, source=source)
        for key in ("backbone", "vae"):
            if not isinstance(section.get(key), dict):
                raise UserInputError(f"{source}: {key} (a mapping of constructor arguments) is required")
        try:
            vae_class = WideDecoderAutoencoderKL if "decoder_width" in section["vae"] else AutoencoderKL
            vae = vae_class(**section["vae"])
        except (TypeError, ValueError) as error:
            raise UserInputError(f"{source}: vae: {error}") from error
        latent_channels = vae.config.latent_channels
        backbone_section = {"in_channels": latent_channels, "out_channels": latent_channels} | section["backbone"]
        try:
            unet = UNet2DConditionModel(**backbone_section)
        except (TypeError, ValueError) as error:
            raise UserInputError(f"{source}: backbone: {error}") from error
        if unet.config.in_channels != latent_channels or unet.config.out_channels != latent_channels:
            raise UserInputError(f"{source}: backbone in/out channels must equal vae.latent_channels={latent_channels}")
        return cls._assemble(unet, vae, section, source=source)

    @classmethod
    def _assemble(
        cls,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        section: Mapping[str, Any],
        *,
        source: str,
        base_scheduler: Mapping[str, Any] | None = None,
    ) -> RGBDPortraitModel:
        check_supported_unet(unet, source=f"{source}: backbone")
        codec = LatentCodec(vae)
        defaults = {"resolution": unet.config.sample_size * codec.downscale_factor}
        settings = ModelSettings.from_mapping(defaults | section, source=source, base_scheduler=base_scheduler)
        context = build_context(
            section.get("context"), cross_attention_dim=unet.config.cross_attention_dim, source=source
        )
        return cls.from_base_unet(unet, vae, context=context, settings=settings)

    @classmethod
    def from_stable_diffusion(
        cls,
        folder: str | os.PathLike,
        *,
        section: Mapping[str, Any] | DictConfig | None = None,
        source: str = "model",
        show_progress: bool = False,
    ) -> RGBDPortraitModel:
        """Build from a local diffusers Stable Diffusion folder (`unet/`, `vae/`, optional `scheduler/`).

        `section` supplies the settings and context (a config's `model:` section; its `backbone`/`vae` entries
        must agree with the folder). The noise schedule's betas come from the folder's scheduler.
        """
        folder = Path(folder)
        section = _plain(section)
        if not folder.is_dir():
            raise UserInputError(f"{folder}: Stable Diffusion folder not found")
        with tqdm(total=3, desc="loading Stable Diffusion", disable=not show_progress) as progress:
            unet = load_component(folder / "unet", "UNet2DConditionModel", slot="backbone")
            progress.update()
            vae = load_component(folder / "vae", "AutoencoderKL", slot="vae")
            progress.update()
            scheduler_path = folder / "scheduler" / "scheduler_config.json"
            base_scheduler = read_json(scheduler_path, what="scheduler config") if scheduler_path.exists() else None
            for name, component in (("backbone", unet), ("vae", vae)):
                _check_against_base(section.get(name) or {}, component.config, name=name, source=source)
            progress.set_description("expanding")
            model = cls._assemble(unet, vae, section, source=source, base_scheduler=base_scheduler)
            progress.update()
        return model

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | os.PathLike, *, overwrite: bool = False, dtype: torch.dtype | None = None
    ) -> Path:
        """Write the checkpoint folder atomically (see `rgbd_portrait.models.checkpoint`).

        `dtype` (e.g. `torch.float16`) stores the weights in that precision; `from_pretrained` computes in
        float32 unless told otherwise.
        """
        components = {name: getattr(self, name) for name in COMPONENT_NAMES}
        optional = {name: getattr(self, name) for name in OPTIONAL_COMPONENT_NAMES}
        components |= {name: component for name, component in optional.items() if component is not None}
        index = {
            "_class_name": MODEL_CLASS_NAME,
            "format_version": FORMAT_VERSION,
            "rgbd_portrait_version": __version__,
            **{name: index_entry(component) for name, component in components.items()},
            "latent_channels": self.latent_channels,
            "input_layout": input_layout(self.latent_channels),
            "output_layout": output_layout(self.latent_channels),
            **self.settings.to_dict(),
        }
        with atomic_directory(directory, overwrite=overwrite) as temporary:
            for name, component in components.items():
                save_component(component, temporary / name, dtype=dtype)
            (temporary / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RGBDPortraitModel:
        """Load a checkpoint folder strictly (every weight present, nothing extra); in eval mode.

        The model computes in `dtype` whatever the stored precision (the shipped default is stored in fp16).
        """
        directory = Path(directory)
        index = read_index(directory)
        index_path = directory / INDEX_NAME
        latent_channels = index.get("latent_channels")
        if not isinstance(latent_channels, int) or latent_channels <= 0:
            raise UserInputError(f"{index_path}: latent_channels must be a positive integer, got {latent_channels!r}")
        for key, layout in (("input_layout", input_layout), ("output_layout", output_layout)):
            if index.get(key) != layout(latent_channels):
                raise UserInputError(f"{index_path}: {key} {index.get(key)} differs from this version's layout")
        settings = ModelSettings.from_mapping(index, source=str(index_path))
        present = (*COMPONENT_NAMES, *(name for name in OPTIONAL_COMPONENT_NAMES if name in index))
        components = {name: load_component(directory / name, index[name][1], slot=name) for name in present}
        try:
            denoiser = RGBDDenoiser(components["backbone"], components["reference_net"], components["context"])
            model = cls(
                denoiser=denoiser,
                codec=LatentCodec(components["vae"]),
                settings=settings,
                motion=components.get("motion"),
            )
        except UserInputError as error:
            raise UserInputError(f"{directory}: {error}") from error
        return model.to(device=device, dtype=dtype).eval()
