"""`RGBDPortraitPipeline`: one object holding the model, with one method per task.

    pipe = RGBDPortraitPipeline.from_pretrained("path/to/model").to("cuda")
    out = pipe.generate("reference.jpg", num_samples=2, generator=torch.Generator().manual_seed(0))
    out = pipe.predict_depth(["a.jpg", "b.png"], output_type="np", match_input_size=True)
    out = pipe.render("depth.npy", reference="reference.jpg")
    out = pipe.relight("photo.jpg", "studio")          # depth predicted; or depth="depth.npy"

Every task runs one denoising loop of the joint backbone (`rgbd_portrait.pipelines.sampling`) with the
reference features computed once per call. Inputs of any size are fitted to the model's square resolution
(`rgbd_portrait.pipelines.inputs`); `match_input_size=True` maps results back to each input's size (only
for tasks with an input image or depth). Results are `RGBDPortraitOutput` dataclasses
(`rgbd_portrait.pipelines.output`), or a tuple of their fields with `return_dict=False`.

Known content enters the loop in one of two ways (`conditioning`): "channels", the trained channel-wise
inpainting tasks, or "replacement", the training-free latent replacement on the joint task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import cpu_offload_with_hook
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from rgbd_portrait.data.depth_normalization import normalize_depth, to_unit_range
from rgbd_portrait.data.image_io import SquareFit, require_same_size
from rgbd_portrait.devices import placement
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.normals import normals_from_relative_depth
from rgbd_portrait.geometry.relighting import DEFAULT_AMBIENT, DirectionalLight, Lighting, relight, resolve_lighting
from rgbd_portrait.models.layout import join_modalities, split_modalities
from rgbd_portrait.models.reference import ReferenceFeatures
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.pipelines.ensemble import ensemble_depth
from rgbd_portrait.pipelines.inputs import (
    DepthInput,
    FaceCentres,
    FitMode,
    ImageInput,
    LoadedDepth,
    LoadedImage,
    MaskInput,
    fit_depth,
    fit_image,
    fit_mask,
    match_count,
    plan_fit,
    read_depths,
    read_images,
    read_masks,
)
from rgbd_portrait.pipelines.output import (
    OutputType,
    RGBDPortraitOutput,
    RGBDRelightingOutput,
    check_output_type,
    convert_images,
)
from rgbd_portrait.pipelines.sampling import CONDITIONINGS, Conditioning, sample_latents, with_unconditional_branch
from rgbd_portrait.weights import default_model_dir

# Guidance over the reference for the tasks that synthesise appearance; image→depth needs none by default.
DEFAULT_GUIDANCE_SCALE = 2.0
# Share of the schedule re-run when a relit image is regenerated through depth→image (SDEdit-style).
DEFAULT_REGENERATION_STRENGTH = 0.5

GeneratorInput = torch.Generator | Sequence[torch.Generator] | None
LightInput = Lighting | DirectionalLight | str | torch.Tensor


@dataclass
class _Item:
    """One result before output conversion, at the model's resolution unless mapped back.

    Tensors are channels-first on the CPU in float32; `fit` is None for results without an input geometry.
    """

    rgb: torch.Tensor  # (3, S, S) in [0, 1]
    depth: torch.Tensor  # (1, S, S) in [0, 1]
    mask: torch.Tensor  # (1, S, S) bool, where the result describes the subject
    uncertainty: torch.Tensor | None = None
    fit: SquareFit | None = None
    original_rgb: np.ndarray | None = None  # the input image at its own size, when there is one
    original_mask: np.ndarray | None = None  # the user's mask at the input size


def _numpy_hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def _tensor_chw(array: np.ndarray) -> torch.Tensor:
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _map_back(item: _Item) -> _Item:
    """The item on its input's pixels: covered pixels mapped back, the rest far, black and off the mask."""
    fit = item.fit
    covered = fit.to_input_size(np.ones((fit.output_side, fit.output_side), dtype=bool), interpolation="nearest")
    mask = covered & fit.to_input_size(_numpy_hwc(item.mask)[..., 0], interpolation="nearest")
    if item.original_mask is not None:
        mask &= item.original_mask
    rgb = item.original_rgb if item.original_rgb is not None else fit.to_input_size(_numpy_hwc(item.rgb))
    uncertainty = None
    if item.uncertainty is not None:
        uncertainty = _tensor_chw(fit.to_input_size(_numpy_hwc(item.uncertainty)[..., 0]))
    return _Item(
        rgb=_tensor_chw(rgb),
        depth=_tensor_chw(fit.to_input_size(_numpy_hwc(item.depth)[..., 0], fill=1.0)),
        mask=_tensor_chw(mask),
        uncertainty=uncertainty,
    )


def _image_items(
    images: list[LoadedImage],
    masks: list[np.ndarray | None],
    fits: list[SquareFit],
    pixels: torch.Tensor,
    fitted_masks: torch.Tensor,
    depth: torch.Tensor,
    uncertainty: torch.Tensor | None,
) -> list[_Item]:
    """Results about input images: each image as the RGB, with its depth (and uncertainty) and masks."""
    return [
        _Item(
            rgb=pixels[index],
            depth=depth[index],
            mask=fitted_masks[index],
            uncertainty=None if uncertainty is None else uncertainty[index],
            fit=fits[index],
            original_rgb=image.pixels,
            original_mask=masks[index],
        )
        for index, image in enumerate(images)
    ]


def _normals(item: _Item) -> torch.Tensor:
    return normals_from_relative_depth(item.depth[0], mask=item.mask[0])


class RGBDPortraitPipeline:
    """Joint generation, image→depth, depth→image and relighting with one `RGBDPortraitModel`.

    The pipeline holds the model and a scheduler made from the model's settings; `to`, `from_pretrained`,
    `save_pretrained`, `enable_model_cpu_offload`, `enable_vae_slicing` and `set_progress_bar_config` behave
    like diffusers'. Attention runs through `F.scaled_dot_product_attention` (memory-efficient kernels on
    CUDA); diffusers' attention slicing is not offered, since it would replace the reference-attention
    processors.

    Every task runs under `torch.no_grad()` wherever it is called from, so no result depends on the caller having
    turned autograd off. Not `torch.inference_mode()`: its tensors could not be changed in place or take part in
    autograd in the caller's code afterwards.
    """

    def __init__(self, model: RGBDPortraitModel, *, scheduler: SchedulerMixin | None = None):
        self.model = model.eval()
        self.scheduler = scheduler if scheduler is not None else model.make_scheduler()
        self.face_centres = FaceCentres()
        self._progress_bar_config: dict = {}
        self._offload_device: torch.device | None = None
        self._offload_hooks: list = []

    # -- loading, devices, memory ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RGBDPortraitPipeline:
        """Load a model folder (see `rgbd_portrait.models.checkpoint`) strictly; without one, the shipped default."""
        path = default_model_dir() if path is None else Path(path)
        if not path.is_dir():
            raise UserInputError(f"{path}: model folder not found")
        return cls(RGBDPortraitModel.from_pretrained(path, device=device, dtype=dtype))

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return self.model.save_pretrained(path, overwrite=overwrite)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RGBDPortraitPipeline:
        if self._offload_hooks:
            raise UserInputError("to(): the model is CPU-offloaded; offloading moves it to the GPU as needed")
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Where the computation runs (the GPU of CPU offload, otherwise the model's device)."""
        return self._offload_device or placement(self.model.backbone)[0]

    @property
    def dtype(self) -> torch.dtype:
        return placement(self.model.backbone)[1]

    def enable_model_cpu_offload(self, device: torch.device | str = "cuda") -> None:
        """Keep the components on the CPU and move each to `device` only while it runs (Accelerate hooks).

        Saves GPU memory at the cost of transfers; the components run in the order VAE, context, reference net,
        backbone, VAE, and each offloads its predecessor.
        """
        self.model.to("cpu")
        self._offload_device = torch.device(device)
        hook = None
        for component in (self.model.vae, self.model.context, self.model.reference_net, self.model.backbone):
            _, hook = cpu_offload_with_hook(component, self._offload_device, prev_module_hook=hook)
            self._offload_hooks.append(hook)

    def _release_offloaded(self) -> None:
        for hook in self._offload_hooks:
            hook.offload()

    def enable_vae_slicing(self) -> None:
        """Encode and decode a batch one image at a time (diffusers' VAE slicing): less memory, same result."""
        self.model.vae.enable_slicing()

    def set_progress_bar_config(self, **options) -> None:
        """tqdm options of the denoising progress bar, e.g. `disable=True` or `leave=False`."""
        self._progress_bar_config = dict(options)

    # -- checks ----------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        output_type: str,
        resolution: int,
        conditioning: str = "channels",
        num_samples: int = 1,
        ensemble_size: int = 1,
        strength: float = 1.0,
    ) -> None:
        """Validate the numeric options of a call before any work (one-line `UserInputError`s)."""
        check_output_type(output_type)
        for name, value in (
            ("num_inference_steps", num_inference_steps),
            ("num_samples", num_samples),
            ("ensemble_size", ensemble_size),
            ("resolution", resolution),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserInputError(f"{name}: must be a positive integer, got {value!r}")
        factor = self.model.codec.downscale_factor
        if resolution % factor:
            raise UserInputError(f"resolution: {resolution} is not a multiple of the VAE's factor {factor}")
        if not guidance_scale >= 1.0:
            raise UserInputError(f"guidance_scale: must be at least 1 (1 = no guidance), got {guidance_scale}")
        if conditioning not in CONDITIONINGS:
            raise UserInputError(f"conditioning: {conditioning!r} is not one of {', '.join(CONDITIONINGS)}")
        if not 0.0 < strength <= 1.0:
            raise UserInputError(f"strength: must be in (0, 1], got {strength}")

    # -- building blocks -------------------------------------------------------------------------------------
    def _encode_rgb(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → latents on the device."""
        return self.model.codec.encode_rgb(pixels.to(self.device, self.dtype) * 2.0 - 1.0)

    def _encode_reference(self, pixels: torch.Tensor, *, latents: torch.Tensor | None = None) -> ReferenceFeatures:
        """Reference features of (B, 3, S, S) images in [0, 1]: one reference-net run for the whole call.

        `latents`: the images' latents when the caller has already encoded them (they are not encoded again).
        """
        rgb = pixels.to(self.device, self.dtype) * 2.0 - 1.0
        if latents is None:
            latents = self.model.codec.encode_rgb(rgb)
        return self.model.encode_reference(latents, reference_rgb=rgb)

    def _self_reference(
        self, pixels: torch.Tensor, view_latents: torch.Tensor, self_reference: bool | None
    ) -> ReferenceFeatures:
        """The reference of image→depth when the images are their own: the reference net's features of the images
        (their latents from `_encode_views`), or no reference (`self_reference` False; None = the model's
        `depth_self_reference`), which skips the reference net for a model trained on image→depth without one."""
        if self.model.settings.depth_self_reference if self_reference is None else self_reference:
            return self._encode_reference(pixels, latents=view_latents[: len(pixels)])
        return self.model.no_reference(len(pixels), tuple(view_latents.shape[2:]), device=self.device)

    def _encode_views(self, pixels: torch.Tensor, ensemble_size: int) -> torch.Tensor:
        """Latents of the images (N, 3, S, S) in [0, 1] and, for an ensemble, of their mirror images: (N, C, h, w),
        or (2N, C, h, w) with the N mirror images last. Each distinct view is encoded once, however many ensemble
        members see it."""
        views = pixels if ensemble_size == 1 else torch.cat([pixels, pixels.flip(-1)])
        return self._encode_rgb(views)

    @staticmethod
    def _per_sample_generators(generator: GeneratorInput, num_inputs: int, repeats: int):
        """One generator for the batch, or one per input (repeated for its samples), or one per sample."""
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        generators = list(generator)
        if len(generators) == num_inputs:
            return [item for item in generators for _ in range(repeats)]
        if len(generators) == num_inputs * repeats:
            return generators
        raise UserInputError(
            f"generator: {len(generators)} generators for {num_inputs} inputs × {repeats} samples; "
            f"give one, one per input or one per sample"
        )

    def _sample(
        self,
        *,
        reference: ReferenceFeatures,
        repeats: int,
        known_rgb: torch.Tensor | None = None,
        known_rgb_weight: torch.Tensor | None = None,
        known_rgb_latents: torch.Tensor | None = None,
        known_depth: torch.Tensor | None = None,
        known_depth_weight: torch.Tensor | None = None,
        start_rgb: torch.Tensor | None = None,
        strength: float = 1.0,
        conditioning: Conditioning,
        num_inference_steps: int,
        guidance_scale: float,
        generator: GeneratorInput,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """One denoising loop for `repeats` samples per input; returns clean `[rgb, depth]` latents.

        `reference`: features of N references (`_encode_reference`). Known content, in pixels: `known_rgb`
        (N, 3, S, S) in [0, 1] and `known_depth` (N, 1, S, S) normalised to [-1, 1], each with a weight
        (N, 1, S, S) in [0, 1] (1 = known). `known_rgb_latents` (N, C, h, w) replaces the encoding of `known_rgb`
        when the caller has the latents already (`known_rgb` may then be None; its weight is still needed).
        `start_rgb` (N, 3, S, S) with `strength` < 1 starts from that image noised part-way (SDEdit).
        """
        num_inputs = reference.batch_size
        features = reference if repeats == 1 else reference.repeat_each(repeats)
        if guidance_scale > 1.0:
            features = with_unconditional_branch(self.model, features)

        channels = self.model.latent_channels
        latent_shape = (num_inputs, channels, *reference.latent_size)
        zeros = torch.zeros(latent_shape, device=self.device, dtype=self.dtype)
        known_parts, weight_parts = [zeros, zeros], [zeros, zeros]
        for index, (pixels, weight) in enumerate(((known_rgb, known_rgb_weight), (known_depth, known_depth_weight))):
            if index == 0 and known_rgb_latents is not None:
                known_parts[index] = known_rgb_latents.to(self.device, self.dtype)
            elif pixels is None:
                continue
            elif index == 0:
                known_parts[index] = self._encode_rgb(pixels)
            else:
                known_parts[index] = self.model.codec.encode_depth(pixels.to(self.device, self.dtype))
            # The share of each latent cell's pixels that is known.
            cell_weight = F.adaptive_avg_pool2d(weight.to(self.device, torch.float32), latent_shape[2:]).to(self.dtype)
            weight_parts[index] = cell_weight.expand(-1, channels, -1, -1)
        known = join_modalities(*known_parts).repeat_interleave(repeats, dim=0)
        known_mask = join_modalities(*weight_parts).repeat_interleave(repeats, dim=0)

        batch_shape = (num_inputs * repeats, 2 * channels, *latent_shape[2:])
        if latents is not None:
            if tuple(latents.shape) != batch_shape:
                raise UserInputError(f"latents: expected shape {batch_shape}, got {tuple(latents.shape)}")
            noise = latents.to(self.device, self.dtype)
        else:
            generators = self._per_sample_generators(generator, num_inputs, repeats)
            noise = randn_tensor(batch_shape, generator=generators, device=self.device, dtype=self.dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if start_rgb is not None and strength < 1.0:
            timesteps = timesteps[int(round(len(timesteps) * (1.0 - strength))) :]
            start = join_modalities(self._encode_rgb(start_rgb), zeros).repeat_interleave(repeats, dim=0)
            start_latents = self.scheduler.add_noise(start, noise, timesteps[:1].repeat(batch_shape[0]))
        else:
            start_latents = noise * self.scheduler.init_noise_sigma
        result = sample_latents(
            self.model,
            start_latents,
            timesteps,
            scheduler=self.scheduler,
            reference=features,
            noise=noise,
            known=known,
            known_mask=known_mask,
            conditioning=conditioning,
            guidance_scale=guidance_scale,
            generator=self._per_sample_generators(generator, num_inputs, repeats),
            progress_bar_config=self._progress_bar_config,
        )
        return result

    def _decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents → RGB in [0, 1] (B, 3, S, S) and unit-range depth (B, 1, S, S), float32 on the CPU."""
        rgb, depth = self.model.codec.decode_rgbd(latents)
        return ((rgb.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu(), to_unit_range(depth.float()).cpu()

    def _fit_mode(self, fit: FitMode | None) -> FitMode:
        return self.model.settings.fit if fit is None else fit

    def _fit_images(
        self, images: list[LoadedImage], side: int, *, fit: FitMode | None, center_on_face: bool
    ) -> tuple[list[SquareFit], torch.Tensor]:
        mode = self._fit_mode(fit)
        fits = [
            plan_fit(image.pixels, side, mode=mode, face_centres=self.face_centres if center_on_face else None)
            for image in images
        ]
        return fits, torch.stack([fit_image(image, fit_) for image, fit_ in zip(images, fits)])

    def _fit_depths(
        self, depths: list[LoadedDepth], side: int, *, fit: FitMode | None, fits: list[SquareFit] | None = None
    ) -> tuple[list[SquareFit], torch.Tensor, torch.Tensor]:
        """Depth maps fitted to the model (with the given fits, or centred ones) and normalised on their masks."""
        if fits is None:
            mode = self._fit_mode(fit)
            fits = [plan_fit(depth.depth.shape, side, mode=mode, face_centres=None) for depth in depths]
        fitted = [fit_depth(depth, fit_) for depth, fit_ in zip(depths, fits)]
        values = torch.stack([depth for depth, _ in fitted])
        valid = torch.stack([mask for _, mask in fitted])
        normalized, _, _ = normalize_depth(values, valid)
        return fits, normalized, valid

    def _finish(
        self,
        items: list[_Item],
        *,
        latents: torch.Tensor | None,
        output_type: OutputType,
        match_input_size: bool,
        extra: dict[str, tuple[list[torch.Tensor], str]] | None = None,
        output_class: type[RGBDPortraitOutput] = RGBDPortraitOutput,
    ) -> RGBDPortraitOutput:
        """Map back (when asked), add normals from the final depth, convert to `output_type`."""
        if match_input_size:
            items = [_map_back(item) if item.fit is not None else item for item in items]
        stack = not match_input_size
        uncertainty = None if items[0].uncertainty is None else [item.uncertainty for item in items]
        fields = {
            "rgb": convert_images([item.rgb for item in items], "color", output_type, stack=stack),
            "depth": convert_images([item.depth for item in items], "depth", output_type, stack=stack),
            "uncertainty": convert_images(uncertainty, "depth", output_type, stack=stack),
            "normals": convert_images([_normals(item) for item in items], "normals", output_type, stack=stack),
            "mask": convert_images([item.mask for item in items], "mask", output_type, stack=stack),
            "latents": None if latents is None else latents.detach().float().cpu(),
        }
        for name, (images, kind) in (extra or {}).items():
            fields[name] = convert_images(images, kind, output_type, stack=stack)
        return output_class(**fields)

    def _resolution(self, resolution: int | None) -> int:
        return self.model.resolution if resolution is None else resolution

    def _return(self, output: RGBDPortraitOutput, return_dict: bool):
        self._release_offloaded()
        return output if return_dict else output.to_tuple()

    # -- tasks -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        reference: ImageInput | Sequence[ImageInput],
        *,
        num_samples: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        known_image: ImageInput | Sequence[ImageInput] | None = None,
        known_image_mask: MaskInput | Sequence[MaskInput] | None = None,
        known_depth: DepthInput | Sequence[DepthInput] | None = None,
        known_depth_mask: MaskInput | Sequence[MaskInput] | None = None,
        conditioning: Conditioning = "replacement",
        resolution: int | None = None,
        fit: FitMode | None = None,
        center_on_face: bool = True,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Joint generation: `num_samples` RGB portraits of each reference's identity and their depth.

        Optional partial inputs fix part of the result: `known_image` (with `known_image_mask`, 1 = keep; no
        mask = the whole image) and `known_depth` (with `known_depth_mask`; default its valid pixels), one per
        reference or one shared. They are enforced by latent replacement (training-free; any region), or by
        the trained channel-wise tasks with `conditioning="channels"` (whole images only). Results are at the
        model's resolution, `num_samples` consecutive entries per reference.
        """
        steps = self.model.default_steps if num_inference_steps is None else num_inference_steps
        side = self._resolution(resolution)
        self.check_inputs(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            resolution=side,
            conditioning=conditioning,
            num_samples=num_samples,
        )
        references = read_images(reference, argument="reference")
        _, reference_pixels = self._fit_images(references, side, fit=fit, center_on_face=center_on_face)
        count = len(references)
        known = {}
        if known_image is not None:
            images = match_count(
                read_images(known_image, argument="known_image"), count, argument="known_image", other="references"
            )
            fits, pixels = self._fit_images(images, side, fit=fit, center_on_face=center_on_face)
            masks = read_masks(known_image_mask, argument="known_image_mask", count=count)
            weights = []
            for image, image_fit, mask in zip(images, fits, masks):
                if mask is None:
                    weights.append(torch.ones(1, side, side, dtype=torch.bool))
                    continue
                require_same_size(image.source, image.pixels, mask[0], mask[1])
                weights.append(fit_mask(mask[1], image_fit))
            known |= {"known_rgb": pixels, "known_rgb_weight": torch.stack(weights).float()}
        elif known_image_mask is not None:
            raise UserInputError("known_image_mask: given without known_image")
        if known_depth is not None:
            depths = read_depths(
                known_depth, argument="known_depth", masks=known_depth_mask, mask_argument="known_depth_mask"
            )
            depths = match_count(depths, count, argument="known_depth", other="references")
            _, normalized, valid = self._fit_depths(depths, side, fit=fit)
            known |= {"known_depth": normalized, "known_depth_weight": valid.float()}
        elif known_depth_mask is not None:
            raise UserInputError("known_depth_mask: given without known_depth")

        result = self._sample(
            reference=self._encode_reference(reference_pixels),
            repeats=num_samples,
            conditioning=conditioning,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
            **known,
        )
        rgb, depth = self._decode(result)
        # Keep the given content exactly where it is known, as the decoded latents only approximate it.
        if "known_rgb" in known:
            weight = known["known_rgb_weight"].repeat_interleave(num_samples, dim=0)
            rgb = torch.where(weight > 0, known["known_rgb"].repeat_interleave(num_samples, dim=0), rgb)
        if "known_depth" in known:
            given = to_unit_range(known["known_depth"]).repeat_interleave(num_samples, dim=0)
            weight = known["known_depth_weight"].repeat_interleave(num_samples, dim=0)
            depth = torch.where(weight > 0, given, depth)
        items = [
            _Item(rgb=rgb[index], depth=depth[index], mask=torch.ones_like(depth[index], dtype=torch.bool))
            for index in range(rgb.shape[0])
        ]
        output = self._finish(items, latents=result, output_type=output_type, match_input_size=False)
        return self._return(output, return_dict)

    def _predict_unit_depth(
        self,
        pixels: torch.Tensor,
        reference: ReferenceFeatures,
        masks: torch.Tensor,
        *,
        view_latents: torch.Tensor,
        ensemble_size: int,
        conditioning: Conditioning,
        num_inference_steps: int,
        guidance_scale: float,
        generator: GeneratorInput,
        latents: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Image→depth at the model's resolution: depth (N, 1, S, S) in [0, 1], uncertainty (N, 1, S, S) when
        `ensemble_size` > 1 (else None), and the first member's latents (N, 2C, h, w).

        Every second member of an ensemble sees the image mirrored left to right (its prediction is mirrored
        back): the depth of a mirror image is the mirrored depth, and pairing the two cancels the model's
        left-right bias, which different noise alone does not (one pair: AbsRel 0.0095 on the default model's
        test heads, against 0.0099 for four or eight noise draws). The reference features are shared: the backbone reads
        them as a set of tokens, so mirroring the reference as well changes nothing measurable.
        `view_latents` are `_encode_views(pixels, ensemble_size)`: each member takes its view's latents.
        """
        num_inputs = len(pixels)
        member_index = torch.arange(num_inputs * ensemble_size)
        # Member k of input i sees view i, or its mirror image (view N + i) when k is odd; counted per input, so
        # that an image's result does not depend on its place in the batch.
        mirrored = member_index % ensemble_size % 2 == 1
        views = member_index // ensemble_size + mirrored.long() * num_inputs
        member_latents = view_latents[views.to(view_latents.device)]
        result = self._sample(
            reference=reference.repeat_each(ensemble_size),
            repeats=1,
            known_rgb_latents=member_latents,
            known_rgb_weight=torch.ones_like(pixels[:1, :1]).expand(len(member_latents), -1, -1, -1),
            conditioning=conditioning,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=self._per_sample_generators(generator, num_inputs, ensemble_size),
            latents=latents,
        )
        _, depth_latents = split_modalities(result)
        depth = to_unit_range(self.model.codec.decode_depth(depth_latents).float()).cpu()
        depth[mirrored] = depth[mirrored].flip(-1)
        first_members = result[::ensemble_size]
        if ensemble_size == 1:
            return depth, None, first_members
        combined = [ensemble_depth(members, mask) for members, mask in zip(depth.split(ensemble_size), masks)]
        return torch.cat([depth for depth, _ in combined]), torch.cat([spread for _, spread in combined]), first_members

    def _read_image_with_masks(self, image, mask) -> tuple[list[LoadedImage], list[np.ndarray | None]]:
        images = read_images(image, argument="image")
        masks = read_masks(mask, argument="mask", count=len(images))
        for loaded, named in zip(images, masks):
            if named is not None:
                require_same_size(loaded.source, loaded.pixels, named[0], named[1])
                if not named[1].any():
                    raise UserInputError(f"{named[0]}: mask has no subject pixel (all background)")
        return images, [None if named is None else named[1] for named in masks]

    @staticmethod
    def _fitted_masks(masks: list[np.ndarray | None], fits: list[SquareFit], side: int) -> torch.Tensor:
        return torch.stack(
            [
                torch.ones(1, side, side, dtype=torch.bool) if mask is None else fit_mask(mask, fit_)
                for mask, fit_ in zip(masks, fits)
            ]
        )

    @torch.no_grad()
    def predict_depth(
        self,
        image: ImageInput | Sequence[ImageInput],
        *,
        reference: ImageInput | Sequence[ImageInput] | None = None,
        self_reference: bool | None = None,
        mask: MaskInput | Sequence[MaskInput] | None = None,
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        guidance_scale: float = 1.0,
        training_free: bool = False,
        resolution: int | None = None,
        fit: FitMode | None = None,
        center_on_face: bool = True,
        match_input_size: bool = False,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Image→depth: each image is the known RGB; without a `reference`, the image is its own reference when
        `self_reference` (None: the model's `depth_self_reference`), else none is used and the reference net does
        not run.

        `ensemble_size` predictions per image (default from the model; every second one of the image mirrored,
        see `_predict_unit_depth`) are aligned by a least-squares scale and shift and combined by their median,
        with their median absolute deviation as `uncertainty`; the mask (optional, 1 = subject) restricts the
        alignment and the output's `mask`. Steps default to the model's `depth_steps` (few with trailing
        timesteps). `training_free=True` uses latent replacement on the joint task instead of the trained
        image→depth task. The output's `rgb` is the input image.
        """
        steps = self.model.settings.depth_steps if num_inference_steps is None else num_inference_steps
        members = self.model.settings.ensemble_size if ensemble_size is None else ensemble_size
        side = self._resolution(resolution)
        conditioning = "replacement" if training_free else "channels"
        self.check_inputs(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            resolution=side,
            conditioning=conditioning,
            ensemble_size=members,
        )
        if reference is not None and self_reference is not None:
            raise UserInputError("give reference or self_reference, not both: a reference replaces the image's own")
        images, masks = self._read_image_with_masks(image, mask)
        fits, pixels = self._fit_images(images, side, fit=fit, center_on_face=center_on_face)
        reference_pixels = pixels
        if reference is not None:
            references = match_count(
                read_images(reference, argument="reference"), len(images), argument="reference", other="images"
            )
            _, reference_pixels = self._fit_images(references, side, fit=fit, center_on_face=center_on_face)
        fitted_masks = self._fitted_masks(masks, fits, side)
        if not fitted_masks.flatten(1).any(dim=1).all():
            raise UserInputError("mask: no subject pixel inside the square fitted to the model")
        view_latents = self._encode_views(pixels, members)
        if reference is None:
            features = self._self_reference(pixels, view_latents, self_reference)
        else:
            features = self._encode_reference(reference_pixels)
        depth, uncertainty, first_latents = self._predict_unit_depth(
            pixels,
            features,
            fitted_masks,
            view_latents=view_latents,
            ensemble_size=members,
            conditioning=conditioning,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
        )
        items = _image_items(images, masks, fits, pixels, fitted_masks, depth, uncertainty)
        output = self._finish(items, latents=first_latents, output_type=output_type, match_input_size=match_input_size)
        return self._return(output, return_dict)

    @torch.no_grad()
    def render(
        self,
        depth: DepthInput | Sequence[DepthInput],
        reference: ImageInput | Sequence[ImageInput],
        *,
        mask: MaskInput | Sequence[MaskInput] | None = None,
        num_samples: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        training_free: bool = False,
        resolution: int | None = None,
        fit: FitMode | None = None,
        center_on_face: bool = True,
        match_input_size: bool = False,
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Depth→image: an RGB portrait following each depth map (any unit, larger = farther) with the identity
        of its reference (one per depth map, or one shared). `mask` (optional, 1 = subject) marks the valid
        depth; non-finite pixels are invalid too. The output's `depth` is the input depth, normalised."""
        steps = self.model.default_steps if num_inference_steps is None else num_inference_steps
        side = self._resolution(resolution)
        conditioning = "replacement" if training_free else "channels"
        self.check_inputs(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            resolution=side,
            conditioning=conditioning,
            num_samples=num_samples,
        )
        depths = read_depths(depth, argument="depth", masks=mask)
        references = match_count(
            read_images(reference, argument="reference"), len(depths), argument="reference", other="depth maps"
        )
        _, reference_pixels = self._fit_images(references, side, fit=fit, center_on_face=center_on_face)
        fits, normalized, valid = self._fit_depths(depths, side, fit=fit)
        result = self._sample(
            reference=self._encode_reference(reference_pixels),
            repeats=num_samples,
            known_depth=normalized,
            known_depth_weight=torch.ones_like(normalized),
            conditioning=conditioning,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
        )
        rgb, _ = self._decode(result)
        unit_depth = to_unit_range(normalized)
        items = []
        for index in range(rgb.shape[0]):
            source = index // num_samples
            items.append(
                _Item(
                    rgb=rgb[index],
                    depth=unit_depth[source],
                    mask=valid[source],
                    fit=fits[source],
                    original_mask=depths[source].valid,
                )
            )
        output = self._finish(items, latents=result, output_type=output_type, match_input_size=match_input_size)
        return self._return(output, return_dict)

    @torch.no_grad()
    def animate(self, reference: ImageInput, audio, **options):
        """A talking-head RGB-D video of `reference` driven by `audio` (a path or samples); the options and the
        output are those of `rgbd_portrait.pipelines.animate.animate`. Needs a model with motion layers."""
        # Imported here: the animation module builds on this one.
        from rgbd_portrait.pipelines.animate import animate

        return animate(self, reference, audio, **options)

    @torch.no_grad()
    def relight(
        self,
        image: ImageInput | Sequence[ImageInput],
        light: LightInput,
        *,
        depth: DepthInput | Sequence[DepthInput] | None = None,
        mask: MaskInput | Sequence[MaskInput] | None = None,
        ambient: float = DEFAULT_AMBIENT,
        original_light: LightInput | None = None,
        regenerate: bool = False,
        regeneration_strength: float = DEFAULT_REGENERATION_STRENGTH,
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        guidance_scale: float = 1.0,
        resolution: int | None = None,
        fit: FitMode | None = None,
        center_on_face: bool = True,
        match_input_size: bool = False,
        generator: GeneratorInput = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ):
        """Relight each image under `light`: a preset name (see `rgbd_portrait.geometry.relighting`), a
        `DirectionalLight` (plus `ambient`), SH coefficients (9,) or (9, 3), or a `Lighting`.

        Depth is given (same size as the image; any unit, larger = farther) or predicted by image→depth; its
        normals give the shading; the original light is estimated (unless `original_light`), divided out
        (albedo), and the new shading applied. With `regenerate`, the relit image is refined through
        depth→image from part-way noise (`regeneration_strength` of the schedule) with the input as reference.
        Shading runs at the output size: the input's when `match_input_size`, else the model's.
        """
        lighting = resolve_lighting(light, ambient=ambient)
        steps = self.model.settings.depth_steps if num_inference_steps is None else num_inference_steps
        members = self.model.settings.ensemble_size if ensemble_size is None else ensemble_size
        side = self._resolution(resolution)
        self.check_inputs(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            resolution=side,
            ensemble_size=members,
            strength=regeneration_strength,
        )
        images, masks = self._read_image_with_masks(image, mask)
        fits, pixels = self._fit_images(images, side, fit=fit, center_on_face=center_on_face)
        fitted_masks = self._fitted_masks(masks, fits, side)
        # The input is its own reference: for the regeneration, and for the depth prediction as the model says.
        view_latents, features, uncertainty = None, None, None
        if depth is None:
            view_latents = self._encode_views(pixels, members)
            features = self._self_reference(pixels, view_latents, None)
            unit_depth, uncertainty, _ = self._predict_unit_depth(
                pixels,
                features,
                fitted_masks,
                view_latents=view_latents,
                ensemble_size=members,
                conditioning="channels",
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generator,
                latents=None,
            )
        else:
            depths = match_count(read_depths(depth, argument="depth"), len(images), argument="depth", other="images")
            for loaded_image, loaded_depth in zip(images, depths):
                require_same_size(loaded_image.source, loaded_image.pixels, loaded_depth.source, loaded_depth.depth)
            _, normalized, valid = self._fit_depths(depths, side, fit=fit, fits=fits)
            unit_depth = to_unit_range(normalized)
            fitted_masks = fitted_masks & valid
            masks = [depth_.valid if user is None else depth_.valid & user for depth_, user in zip(depths, masks)]
        items = _image_items(images, masks, fits, pixels, fitted_masks, unit_depth, uncertainty)
        if match_input_size:
            items = [_map_back(item) for item in items]

        relit_images, albedos, shadings = [], [], []
        for item in items:
            try:
                relit = relight(item.rgb, _normals(item), lighting, mask=item.mask[0], original_light=original_light)
            except ValueError as error:
                raise UserInputError(f"relight: {error}") from error
            relit_images.append(relit.image)
            albedos.append(relit.albedo)
            shadings.append(relit.new_shading)

        latents = None
        if regenerate:
            relit_pixels = torch.stack(
                [
                    _tensor_chw(fit_.apply(_numpy_hwc(relit))) if match_input_size else relit
                    for relit, fit_ in zip(relit_images, fits)
                ]
            )
            if features is None or features.absent:
                features = self._encode_reference(
                    pixels, latents=None if view_latents is None else view_latents[: len(pixels)]
                )
            model_depth = unit_depth * 2.0 - 1.0
            latents = self._sample(
                reference=features,
                repeats=1,
                known_depth=model_depth,
                known_depth_weight=torch.ones_like(model_depth),
                start_rgb=relit_pixels,
                strength=regeneration_strength,
                conditioning="channels",
                num_inference_steps=self.model.default_steps,
                guidance_scale=max(guidance_scale, 1.0),
                generator=generator,
                latents=None,
            )
            regenerated, _ = self._decode(latents)
            for index, item in enumerate(items):
                refined = regenerated[index]
                if match_input_size:
                    refined = _tensor_chw(fits[index].to_input_size(_numpy_hwc(refined)))
                relit_images[index] = torch.where(item.mask, refined, item.rgb)

        for item, relit in zip(items, relit_images):
            item.rgb = relit
            item.fit = None  # already at the output size
        output = self._finish(
            items,
            latents=latents,
            output_type=output_type,
            match_input_size=match_input_size,
            extra={"albedo": (albedos, "color"), "shading": (shadings, "color")},
            output_class=RGBDRelightingOutput,
        )
        return self._return(output, return_dict)
