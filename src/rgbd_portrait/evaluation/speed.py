"""Timing: seconds per call on any device, a Marigold peer of the same size, and sampling without reference caching.

- `time_call` times a callable after warm-up calls, waiting for the GPU before reading the clock;
  `interleaved_median_seconds` times several in turns, for ratios that a changing machine load does not skew.
- `build_marigold_peer` makes diffusers' `MarigoldDepthPipeline` from a UNet of our backbone's architecture
  (Marigold's 2C-channel input: image latent + depth latent; random weights) and our VAE, offline: its scheduler
  is our model's (DDIM, trailing timesteps, zero terminal SNR, as Marigold v1-1) and its empty-prompt embedding is
  a zero tensor set on the pipeline, so no text encoder or tokenizer is ever needed.
- `ReferenceEveryStep` runs the reference net at every denoising step instead of once per call, the naive
  implementation that reference caching avoids; its results equal the cached ones. `compare_reference_caching`
  times both on one image→depth loop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import MarigoldDepthPipeline, UNet2DConditionModel

from rgbd_portrait.models.backbone import public_config
from rgbd_portrait.models.layout import join_modalities
from rgbd_portrait.models.reference import ReferenceFeatures
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.pipelines.sampling import sample_latents

# Marigold v1-1's defaults (model_index.json of prs-eth/marigold-depth-v1-1): 4 DDIM steps with trailing
# timesteps; diffusers' pipeline combines one prediction per image unless told otherwise.
MARIGOLD_DEFAULT_STEPS = 4
MARIGOLD_DEFAULT_ENSEMBLE = 1
# CLIP's embedding of the empty prompt has two tokens (start and end of text).
MARIGOLD_EMPTY_PROMPT_TOKENS = 2


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that the clock measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_call(
    function: Callable[[], Any], *, device: torch.device | str, repeats: int = 3, warmup: int = 1
) -> list[float]:
    """Seconds of each of `repeats` calls of `function`, after `warmup` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be at least 1 and warmup at least 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        function()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median_seconds(function: Callable[[], Any], *, device: torch.device | str, repeats: int = 3, warmup: int = 1):
    """The median of `time_call`'s timings."""
    return statistics.median(time_call(function, device=device, repeats=repeats, warmup=warmup))


def interleaved_median_seconds(
    calls: Mapping[str, Callable[[], Any]], *, device: torch.device | str, repeats: int = 3, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each named call, timed in turns (A, B, A, B, ...) so that a change in the machine's load
    during the measurement affects every call alike; the ratios of the results are what this is for."""
    for function in calls.values():
        time_call(function, device=device, repeats=1, warmup=warmup)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, function in calls.items():
            seconds[name] += time_call(function, device=device, repeats=1, warmup=0)
    return {name: statistics.median(values) for name, values in seconds.items()}


def build_marigold_peer(
    model: RGBDPortraitModel, *, default_steps: int = MARIGOLD_DEFAULT_STEPS, seed: int = 0
) -> MarigoldDepthPipeline:
    """diffusers' Marigold depth pipeline of the same size as `model`, on its device and dtype, built offline.

    Its UNet has the architecture of our backbone's base UNet with Marigold's channels (image and depth latents
    in, depth latent out), random weights from `seed`; the VAE is our model's (shared, frozen) and the
    scheduler a fresh one from our model's settings. Marigold's config holds the default steps and resolution.
    """
    channels = model.latent_channels
    config = public_config(model.backbone) | {"in_channels": 2 * channels, "out_channels": channels}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to(model.backbone.device).eval()
    if unet.dtype != model.backbone.dtype:
        unet = unet.to(dtype=model.backbone.dtype)
    peer = MarigoldDepthPipeline(
        unet=unet,
        vae=model.vae,
        scheduler=model.make_scheduler(),
        text_encoder=None,
        tokenizer=None,
        prediction_type="depth",
        default_denoising_steps=default_steps,
        default_processing_resolution=model.resolution,
    )
    # The pipeline embeds the empty prompt on first use unless the embedding is already there.
    peer.empty_text_embedding = torch.zeros(
        1, MARIGOLD_EMPTY_PROMPT_TOKENS, unet.config.cross_attention_dim, device=unet.device, dtype=unet.dtype
    )
    peer.set_progress_bar_config(disable=True)
    return peer


class ReferenceEveryStep:
    """A stand-in for the model in `sampling.sample_latents` that runs the reference net before every backbone
    call (for one unguided batch), instead of using the features computed once per call."""

    def __init__(self, model: RGBDPortraitModel, reference_latents: torch.Tensor, reference_rgb: torch.Tensor | None):
        self.model = model
        self.reference_latents = reference_latents
        self.reference_rgb = reference_rgb
        self.reference_runs = 0

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, *, reference: ReferenceFeatures, **options):
        if reference.batch_size != noisy.shape[0]:
            raise ValueError("ReferenceEveryStep runs without guidance (one reference per sample)")
        fresh = self.model.encode_reference(self.reference_latents, reference_rgb=self.reference_rgb)
        self.reference_runs += 1
        return self.model.denoise(noisy, timesteps, reference=fresh, **options)


@torch.no_grad()
def depth_calls(
    pipeline,
    peer: MarigoldDepthPipeline,
    image: torch.Tensor,
    *,
    ours: tuple[int, int],
    marigold: tuple[int, int],
    self_reference: bool | None = None,
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Image→depth of `image` at the model's square by our pipeline and by its Marigold peer, as calls to time;
    `ours` and `marigold` are each one's (steps, ensemble members), `self_reference` ours (None: the model's).
    Fixed seeds, no face detection on our side."""
    (our_steps, our_members), (peer_steps, peer_members) = ours, marigold

    def ours_call():
        return pipeline.predict_depth(
            image,
            num_inference_steps=our_steps,
            ensemble_size=our_members,
            self_reference=self_reference,
            center_on_face=False,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )

    def marigold_call():
        return peer(
            image,
            num_inference_steps=peer_steps,
            ensemble_size=peer_members,
            processing_resolution=pipeline.model.resolution,
            match_input_resolution=False,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )

    return ours_call, marigold_call


def compare_reference_caching(
    model: RGBDPortraitModel, image: torch.Tensor, *, steps: int, repeats: int = 3, seed: int = 0
) -> dict[str, float]:
    """Seconds of one image→depth denoising loop (no VAE decoding) with the reference features computed once
    versus recomputed at every step, for `image` (1, 3, S, S) in [0, 1], which is also the reference.

    Returns `cached_seconds`, `every_step_seconds`, `reference_runs` (of the every-step loop) and
    `max_difference` between the two results (0 up to floating-point noise: the features do not change).
    """
    device, dtype = model.backbone.device, model.backbone.dtype
    rgb = image.to(device, dtype) * 2.0 - 1.0
    reference_latents = model.codec.encode_rgb(rgb)
    known = join_modalities(reference_latents, torch.zeros_like(reference_latents))
    known_mask = join_modalities(torch.ones_like(reference_latents), torch.zeros_like(reference_latents))
    noise = torch.randn(known.shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    scheduler = model.make_scheduler()
    scheduler.set_timesteps(steps, device=device)
    options = {
        "scheduler": scheduler,
        "noise": noise,
        "known": known,
        "known_mask": known_mask,
        "progress_bar_config": {"disable": True},
    }

    def cached() -> torch.Tensor:
        features = model.encode_reference(reference_latents, reference_rgb=rgb)
        return sample_latents(model, noise, scheduler.timesteps, reference=features, **options)

    every_step = ReferenceEveryStep(model, reference_latents, rgb)
    features = model.encode_reference(reference_latents, reference_rgb=rgb)

    def uncached() -> torch.Tensor:
        return sample_latents(every_step, noise, scheduler.timesteps, reference=features, **options)

    difference = (cached() - uncached()).abs().max().item()
    every_step.reference_runs = 0
    uncached()
    runs = every_step.reference_runs
    seconds = interleaved_median_seconds({"cached": cached, "every_step": uncached}, device=device, repeats=repeats)
    return {
        "cached_seconds": seconds["cached"],
        "every_step_seconds": seconds["every_step"],
        "reference_runs": runs,
        "max_difference": difference,
    }
