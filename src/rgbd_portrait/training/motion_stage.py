"""The motion stage (stage 2): temporal and audio layers learn to denoise clips of talking sequences.

The stage starts from an image model (the joint stage's) and adds fresh motion layers when it has none
(`rgbd_portrait.models.motion`: the identity at first, so training starts from the image model exactly).
Only `model.motion` trains unless `train_image_layers`. Data: clips of `clip_frames` consecutive frames of
the talking sequences below `train.motion.data_root` (default `data.root`; `rgbd_portrait.data.sequence_dataset`),
each with its frames' audio and a reference frame. `train.motion.sources` mixes in more folders (prepared real
videos beside synthetic ones), each with its share of the clips drawn (`data_root_weight` for the first).

For a batch of B clips of F frames the objective draws, from one seeded generator:

* one timestep per clip (all frames of a clip are denoised together, as the sampler does), noise per frame;
* motion frames: the first `motion_frames` frames of a clip are given (both modalities known, masks 1, their
  noisy latents the clean ones noised like the others, no loss), as the sampler gives the last frames of the
  previous window; a clip has none with probability `motion_frames_dropout` (the first window);
* per-condition dropout for guidance: the reference with `reference_dropout`, the audio with `audio_dropout`,
  and both with `condition_dropout` (the unconditional branch of `rgbd_portrait.pipelines.animate`);
* mouth inpainting: a share `mouth_inpainting` of the clips whose frames have face landmarks are known outside
  their mouth region on the generated frames too (`rgbd_portrait.data.face_regions`; masks 1 there, no loss),
  and what is known there is the clip's reference frame, both modalities, as mouth-only animation gives the
  photo: the model learns to fill in the speaking mouth from the audio. Not each frame's own surround: that
  tells the mouth (a linear read-out of its latents outside the box follows the mouth opening at 0.95 on
  held-out GRID clips), so layers trained on it copy the cheeks and chin instead of listening, and at
  animation, where the surround is a still photo, the mouth stays as the photo's.

With `mouth_guide`, the stage ends by fitting a `MouthGuide` on the training clips with face landmarks
(`rgbd_portrait.training.mouth_guide`), which mouth-only animation steers the mouth with.

The loss is the joint stage's weighted MSE (ε, v or x0 target) over the generated frames, optionally weighted
up where the clip changes (`dynamic_loss_weight`): the mouth covers a few latent cells of a mostly still head,
so its share of a plain loss is small. The depth of frames with pseudo-depth (prepared real videos) is weighted
as in the joint stage (`depth_trust`: `pseudo_depth_weight`, `extrapolated_depth_weight`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers import SchedulerMixin
from torch import nn
from torch.utils.data import Dataset

from rgbd_portrait.data.audio import LogMelFeatures, Wav2Vec2Features, make_audio_features
from rgbd_portrait.data.depth_normalization import to_unit_range
from rgbd_portrait.data.face_regions import box_cells
from rgbd_portrait.data.sample_format import read_meta
from rgbd_portrait.data.sequence_dataset import TalkingClipDataset, TalkingClipMixture, find_sequences
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.context import ClipImageContext
from rgbd_portrait.models.layout import expand_masks, join_modalities, split_modalities, task_masks
from rgbd_portrait.models.motion import MotionLayers
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.pipelines.animate import sample_clip
from rgbd_portrait.training.config import DataConfig, MotionStageConfig
from rgbd_portrait.training.joint_objective import depth_trust, diffusion_target, latent_foreground, weighted_mse
from rgbd_portrait.training.latent_cache import CachedLatents
from rgbd_portrait.training.mouth_guide import SpeakingSequence, fit_mouth_guide
from rgbd_portrait.training.seeding import derive_seed, make_generator
from rgbd_portrait.training.validation import VALIDATION_SEED, depth_panel, rgb_panel, write_grid

Batch = dict[str, torch.Tensor]
HOW_TO_GET_SEQUENCES = "render some with data.synthesize.sequences, or prepare videos"


def sequence_root(data: DataConfig, stage: MotionStageConfig) -> tuple[str, str]:
    """The folder holding the motion stage's talking sequences, and the config key that names it."""
    return (stage.data_root, "train.motion.data_root") if stage.data_root else (data.root, "data.root")


def sequence_folders(data: DataConfig, stage: MotionStageConfig) -> list[tuple[str, str, float]]:
    """Every folder of the motion stage's talking sequences: (folder, config key, share of the clips)."""
    root, key = sequence_root(data, stage)
    return [(root, key, stage.data_root_weight)] + [
        (extra.root, f"train.motion.sources[{position}].root", extra.weight)
        for position, extra in enumerate(stage.sources)
    ]


def check_motion_data(data: DataConfig, stage: MotionStageConfig) -> None:
    """Each folder of the motion stage needs talking sequences of the training split (checked before any work);
    folders for the mouth guide alone need a guide to fit."""
    if stage.mouth_guide_roots and not stage.mouth_guide:
        raise UserInputError(
            "train.motion.mouth_guide_roots: only read to fit a mouth guide; set train.motion.mouth_guide"
        )
    guide_folders = [
        (root, f"train.motion.mouth_guide_roots[{n}]", 0.0) for n, root in enumerate(stage.mouth_guide_roots)
    ]
    for root, key, _ in sequence_folders(data, stage) + guide_folders:
        if not Path(root).is_dir():
            raise UserInputError(f"{key}: {root} not found")
        if not any(read_meta(folder).get("split", "train") == data.train_split for folder in find_sequences(root)):
            raise UserInputError(
                f"{key}: no {data.train_split!r} talking sequence in {root} for the motion stage "
                f"({HOW_TO_GET_SEQUENCES})"
            )


def new_motion_layers(model: RGBDPortraitModel, stage: MotionStageConfig) -> MotionLayers:
    """Fresh motion layers for `model`'s backbone, as `stage.layers` describes them."""
    layers = stage.layers
    if layers.audio_encoder is None:
        features = LogMelFeatures(n_mels=layers.n_mels)
    else:
        features = Wav2Vec2Features(layers.audio_encoder)
    return MotionLayers.for_backbone(
        model.backbone,
        audio_features=features,
        audio_radius=layers.audio_radius,
        audio_token_dim=layers.audio_token_dim,
        num_attention_heads=layers.num_attention_heads,
        max_frames=layers.max_frames,
        window_frames=stage.clip_frames,
        motion_frames=stage.motion_frames,
    )


class MotionTrainingModule(nn.Module):
    """What Accelerate wraps: the denoiser and the motion layers, called on clips flattened to frames."""

    def __init__(self, model: RGBDPortraitModel):
        super().__init__()
        self.denoiser = model.denoiser
        self.motion = model.motion

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        num_frames: int,
        reference_latents: torch.Tensor,
        known: torch.Tensor,
        masks: torch.Tensor,
        drop_reference: torch.Tensor,
        audio_windows: torch.Tensor,
        drop_audio: torch.Tensor,
        reference_rgb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prediction (B·F, 2C, h, w) for B clips of `num_frames` frames (reference latents (B, C, h, w))."""
        reference_trains = any(parameter.requires_grad for parameter in self.denoiser.reference_net.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and reference_trains):
            reference = self.denoiser.encode_reference(
                reference_latents, drop=drop_reference, reference_rgb=reference_rgb
            )
        with self.motion.frames(
            num_frames, batch_size=noisy.shape[0], audio_windows=audio_windows, drop_audio=drop_audio
        ):
            return self.denoiser.denoise(
                noisy, timesteps, known=known, masks=masks, reference=reference.repeat_each(num_frames)
            )


@dataclasses.dataclass
class ClipInputs:
    """Everything one training forward pass needs besides the reference and the audio, frames flattened."""

    noisy: torch.Tensor  # (B·F, 2C, h, w)
    # (B·F, 2C, h, w) each frame's clean latents, the reference's on the generated frames of mouth-inpainting clips
    # (the layout zeroes those of unknown modalities)
    known: torch.Tensor
    masks: torch.Tensor  # (B·F, 2, h, w) 1 on motion frames, and outside the mouth box of mouth-inpainting clips
    timesteps: torch.Tensor  # (B·F,) one per clip, repeated
    drop_reference: torch.Tensor  # (B,) bool
    drop_audio: torch.Tensor  # (B·F,) bool
    target: torch.Tensor  # (B·F, 2C, h, w)
    loss_weights: torch.Tensor  # (B·F, 2C, h, w) zero wherever the masks are 1


def make_clip_inputs(
    clean: torch.Tensor,
    foreground: torch.Tensor,
    *,
    scheduler: SchedulerMixin,
    stage: MotionStageConfig,
    generator: torch.Generator,
    depth_weight: torch.Tensor | None = None,
    mouth_boxes: torch.Tensor | None = None,
    still_latents: torch.Tensor | None = None,
    side: int | None = None,
) -> ClipInputs:
    """Draw timesteps, noise, motion frames and condition dropout for clean latents (B, F, 2C, h, w).

    `foreground` (B, F, 1, h, w) is `latent_foreground` of the frames' masks; `generator` lives on the device;
    `depth_weight` (B, F, 1, h, w), e.g. `depth_trust` of the frames, scales the depth channels' loss (None: 1).
    `mouth_boxes` (B, 4), the clips' `mouth_box` in pixels of `side`-pixel frames (NaN: none), let a share
    `stage.mouth_inpainting` of the clips with one be known outside it on their generated frames: known as
    `still_latents` (B, 2C, h, w), the clips' reference frames (required with mouth boxes).
    """
    clips, frames = clean.shape[:2]
    device = clean.device
    flat = clean.flatten(0, 1)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (clips,), generator=generator, device=device, dtype=torch.int64
    ).repeat_interleave(frames)
    noise = torch.randn(flat.shape, generator=generator, device=device, dtype=flat.dtype)
    uniform = torch.rand(4, clips, generator=generator, device=device)
    has_motion_frames = uniform[0] >= stage.motion_frames_dropout
    drop_both = uniform[3] < stage.condition_dropout
    drop_reference = (uniform[1] < stage.reference_dropout) | drop_both
    drop_audio = (uniform[2] < stage.audio_dropout) | drop_both
    given = (torch.arange(frames, device=device) < stage.motion_frames)[None] & has_motion_frames[:, None]
    given = given.flatten()
    height, width = flat.shape[2:]
    masks = task_masks("joint", batch_size=flat.shape[0], height=height, width=width, device=device, dtype=flat.dtype)
    masks[given] = 1.0
    known = flat
    if stage.mouth_inpainting and mouth_boxes is not None:
        if still_latents is None or still_latents.shape != (clips, *flat.shape[1:]):
            raise ValueError(f"mouth inpainting needs still latents of shape {(clips, *flat.shape[1:])}")
        # Drawn only when asked for, so runs without it keep their random stream.
        chosen = torch.rand(clips, generator=generator, device=device) < stage.mouth_inpainting
        chosen &= mouth_boxes.isfinite().all(dim=1).to(device)
        outside = ~box_cells(mouth_boxes.to(device), (height, width), side)  # (B, h, w)
        still = (chosen[:, None] & ~given.view(clips, frames)).flatten()
        masks[still] = outside.repeat_interleave(frames, dim=0)[still, None].to(masks.dtype).expand(-1, 2, -1, -1)
        known = torch.where(still[:, None, None, None], still_latents.repeat_interleave(frames, dim=0), flat)
    background = stage.background_loss_weight
    spatial = background + (1.0 - background) * foreground.flatten(0, 1).to(flat.dtype)
    if stage.dynamic_loss_weight:
        spatial = spatial * (1.0 + stage.dynamic_loss_weight * clip_change(clean).flatten(0, 1))
    # No loss where a frame is known: on motion frames, and outside the mouth of mouth-inpainting clips.
    latent_channels = flat.shape[1] // 2
    loss_weights = expand_masks(1.0 - masks, latent_channels) * spatial.expand_as(flat)
    if depth_weight is not None:
        modality_weights = torch.cat([torch.ones_like(depth_weight), depth_weight.to(flat.dtype)], dim=2)
        loss_weights = loss_weights * modality_weights.flatten(0, 1).repeat_interleave(latent_channels, dim=1)
    return ClipInputs(
        noisy=scheduler.add_noise(flat, noise, timesteps),
        known=known,
        masks=masks,
        timesteps=timesteps,
        drop_reference=drop_reference,
        drop_audio=drop_audio.repeat_interleave(frames),
        target=diffusion_target(scheduler, flat, noise, timesteps),
        loss_weights=loss_weights,
    )


def clip_change(clean: torch.Tensor) -> torch.Tensor:
    """How much each latent cell of a clip (B, F, C, h, w) departs from the clip's mean, relative to the clip's
    average departure: (B, F, 1, h, w), mean 1 per clip (0 for a still clip)."""
    departure = (clean - clean.mean(dim=1, keepdim=True)).abs().mean(dim=2, keepdim=True)
    return departure / departure.mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)


class ClipSamples(Dataset):
    """Clips of a `TalkingClipDataset` or mixture by (index, epoch), tensors only (what a training step reads)."""

    names = (
        "rgb",
        "depth",
        "mask",
        "pseudo_depth",
        "depth_observed",
        "audio",
        "reference_rgb",
        "reference_depth",
        "mouth_box",
        "mouth_opening",
    )

    def __init__(self, clips: TalkingClipDataset | TalkingClipMixture):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        index, epoch = key
        item = self.clips.get(index, epoch=epoch)
        return {name: item[name] for name in self.names}


class FrameSamples(Dataset):
    """Every frame of a `TalkingClipDataset` once, in `frame_entries` order: what the latent cache encodes."""

    def __init__(self, clips: TalkingClipDataset):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips.frame_entries)

    def __getitem__(self, index: int) -> Batch:
        sequence, entry = self.clips.frame_entries[index]
        item = self.clips.sequences[sequence].frames.get(entry, epoch=0)
        return {name: item[name] for name in ("rgb", "depth", "mask", "pseudo_depth", "depth_observed")}


class LatentClipSamples(Dataset):
    """Clips by (index, epoch) from cached frame latents (one `CachedLatents` of `FrameSamples` per part of the
    mixture), with the same frames, reference and audio as `ClipSamples` serves in pixels."""

    def __init__(self, frame_latents: list[CachedLatents], clips: TalkingClipDataset | TalkingClipMixture):
        self.frame_latents = frame_latents
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        index, epoch = key
        part, local = self.clips.locations[index] if isinstance(self.clips, TalkingClipMixture) else (0, index)
        clips = self.clips.parts[part] if isinstance(self.clips, TalkingClipMixture) else self.clips
        frames, reference = clips.frames_of(local, epoch=epoch)
        latents = self.frame_latents[part]
        return {
            "rgb_latents": latents["rgb"][frames],
            "depth_latents": latents["depth"][frames],
            "foreground": latents["foreground"][frames],
            "depth_observed": latents["depth_observed"][frames],
            "pseudo_depth": latents["pseudo_depth"][frames],
            "audio": torch.from_numpy(clips.audio_of(local)),
            "reference_latents": latents["rgb"][reference],
            "reference_depth_latents": latents["depth"][reference],
            "mouth_box": torch.from_numpy(clips.mouth_box_of(local)),
            "mouth_opening": torch.from_numpy(clips.mouth_openings_of(local)),
        }


class MotionRecipe:
    name = "motion"
    training_only = None

    def __init__(self, model: RGBDPortraitModel, stage: MotionStageConfig, *, uses_latents: bool = False):
        if model.motion is None:
            model.add_motion_layers(new_motion_layers(model, stage))
        motion = model.motion
        if stage.clip_frames > motion.config.max_frames:
            raise UserInputError(
                f"train.motion.clip_frames: {stage.clip_frames} frames, the motion layers take at most "
                f"{motion.config.max_frames}"
            )
        # The checkpoint records the clips it was trained on (sampling uses them as its default window) and
        # whether it learned to fill in the mouth (animation then generates only that by default).
        motion.register_to_config(
            window_frames=stage.clip_frames,
            motion_frames=stage.motion_frames,
            mouth_only=motion.config.mouth_only or stage.mouth_inpainting > 0,
        )
        model.vae.requires_grad_(False)
        model.denoiser.requires_grad_(stage.train_image_layers)
        if isinstance(model.context, ClipImageContext) and not model.context.config.train_encoder:
            model.context.encoder.requires_grad_(False)
        motion.requires_grad_(True)
        self.model = model
        self.stage = stage
        self.uses_latents = uses_latents
        self.module = MotionTrainingModule(model)
        self.scheduler = model.make_scheduler()
        self.audio_features = make_audio_features(motion.config.audio_features, encoder_path=stage.layers.audio_encoder)

    def clips(
        self, data: DataConfig, *, validation: bool, resolution: int, seed: int
    ) -> TalkingClipDataset | TalkingClipMixture:
        """The clips of the training or validation split of every sequence folder, mixed by their weights.

        A training folder without clips is a one-line error naming it; for validation, folders without clips of
        the split are left out, and only none at all is an error.
        """
        split = data.validation_split if validation else data.train_split
        parts, weights = [], []
        for root, key, weight in sequence_folders(data, self.stage):
            clips = TalkingClipDataset(
                root,
                audio_features=self.audio_features,
                split=split,
                resolution=resolution,
                clip_frames=self.stage.clip_frames,
                audio_radius=self.model.motion.config.audio_radius,
                seed=seed,
            )
            if len(clips):
                parts.append(clips)
                weights.append(weight)
            elif not validation:
                raise UserInputError(
                    f"{key}: no {split!r} talking sequence with {self.stage.clip_frames} consecutive frames in "
                    f"{root} ({HOW_TO_GET_SEQUENCES})"
                )
        if not parts:
            folders = ", ".join(root for root, _, _ in sequence_folders(data, self.stage))
            raise UserInputError(
                f"no {split!r} talking sequence with {self.stage.clip_frames} consecutive frames in {folders} "
                f"({HOW_TO_GET_SEQUENCES}, or set train.motion.validate_every=0)"
            )
        return parts[0] if len(parts) == 1 else TalkingClipMixture(parts, weights)

    def samples(self, clips: TalkingClipDataset | TalkingClipMixture) -> Dataset:
        return ClipSamples(clips)

    def enable_gradient_checkpointing(self) -> None:
        self.model.denoiser.enable_gradient_checkpointing()

    @torch.no_grad()
    def _latents(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean latents (B, F, 2C, h, w), their foreground (B, F, 1, h, w), the reference frames' clean latents
        (B, 2C, h, w), and the depth loss weight of each latent cell (B, F, 1, h, w); from cached latents when the
        recipe uses them."""
        clips, frames = batch["pseudo_depth"].shape[:2]
        unflatten = lambda tensor: tensor.unflatten(0, (clips, frames))
        if self.uses_latents:
            clean = join_modalities(batch["rgb_latents"].flatten(0, 1), batch["depth_latents"].flatten(0, 1))
            foreground, observed = batch["foreground"].flatten(0, 1), batch["depth_observed"].flatten(0, 1)
            reference = join_modalities(batch["reference_latents"], batch["reference_depth_latents"])
        else:
            codec = self.model.codec
            clean = codec.encode_rgbd(batch["rgb"].flatten(0, 1), batch["depth"].flatten(0, 1))
            latent_size = tuple(clean.shape[2:])
            foreground = latent_foreground(batch["mask"].flatten(0, 1), latent_size)
            observed = latent_foreground(batch["depth_observed"].flatten(0, 1), latent_size)
            reference = codec.encode_rgbd(batch["reference_rgb"], batch["reference_depth"])
        depth_weight = depth_trust(batch["pseudo_depth"].flatten(), observed, self.stage)
        return unflatten(clean), unflatten(foreground), reference, unflatten(depth_weight)

    def loss(self, module: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, Batch]:
        clean, foreground, reference, depth_weight = self._latents(batch)
        reference_latents, _ = split_modalities(reference)
        inputs = make_clip_inputs(
            clean,
            foreground,
            scheduler=self.scheduler,
            stage=self.stage,
            generator=generator,
            depth_weight=depth_weight,
            mouth_boxes=batch["mouth_box"],
            still_latents=reference,
            side=clean.shape[-2] * self.model.codec.downscale_factor,
        )
        prediction = module(
            inputs.noisy,
            inputs.timesteps,
            num_frames=clean.shape[1],
            reference_latents=reference_latents,
            known=inputs.known,
            masks=inputs.masks,
            drop_reference=inputs.drop_reference,
            audio_windows=batch["audio"].flatten(0, 1),
            drop_audio=inputs.drop_audio,
            reference_rgb=batch.get("reference_rgb"),  # absent with cached latents, which a CLIP context rules out
        )
        return weighted_mse(prediction, inputs.target, inputs.loss_weights), {}

    @torch.no_grad()
    def validate(self, batch: Batch, path: Path) -> dict[str, float]:
        """The loss at fixed noise, and the first clip generated from its reference and audio (grid at `path`)."""
        model, device = self.model, self.model.backbone.device
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        generator = make_generator(derive_seed(VALIDATION_SEED, "motion", "loss"), device)
        loss, _ = self.loss(self.module, batch, generator)
        reference = model.encode_reference(
            model.codec.encode_rgb(batch["reference_rgb"][:1]), reference_rgb=batch["reference_rgb"][:1]
        )
        sample_generator = torch.Generator(device=device).manual_seed(derive_seed(VALIDATION_SEED, "motion", "sample"))
        latents = sample_clip(
            model,
            reference,
            batch["audio"][0],
            scheduler=model.make_scheduler(),
            num_inference_steps=self.stage.validation_inference_steps or model.default_steps,
            generator=sample_generator,
        )
        rgb, depth = model.codec.decode_rgbd(latents)
        true_depth, mask = batch["depth"][0], batch["mask"][0]
        rows = [
            [(f"frame {index}", rgb_panel(frame)) for index, frame in enumerate(batch["rgb"][0])],
            [("generated", rgb_panel(frame)) for frame in rgb],
            [("depth", depth_panel(frame, frame_mask)) for frame, frame_mask in zip(true_depth, mask)],
            [("generated", depth_panel(frame, None)) for frame in depth],
        ]
        write_grid(path, rows)
        return {"loss": float(loss), "depth_change_ratio": _depth_change_ratio(depth, true_depth)}

    def finishing_batches(
        self, samples: Dataset, clips: TalkingClipDataset | TalkingClipMixture, batch_size: int
    ) -> Iterator[Batch]:
        """With `mouth_guide`, the training clips a guide is fitted on, one by one (a batch of 1, no epoch's
        draws): those that tile each sequence with face landmarks, its clips from frames 0, F, 2F, …; each with
        `sequence`, a number per sequence. Then those of the `mouth_guide_roots` (same split), with only their
        `audio`, `mouth_opening` and `sequence`. None without `mouth_guide`."""
        if not self.stage.mouth_guide:
            return
        parts = clips.parts if isinstance(clips, TalkingClipMixture) else [clips]
        locations = clips.locations if isinstance(clips, TalkingClipMixture) else [(0, i) for i in range(len(clips))]
        numbers: dict[tuple[int, int], int] = {}
        for index, (part, local) in enumerate(locations):
            if _tiles_with_landmarks(parts[part], local):
                batch = {name: tensor[None] for name, tensor in samples[(index, 0)].items()}
                sequence = numbers.setdefault((part, parts[part].clips[local].sequence), len(numbers))
                yield batch | {"sequence": torch.tensor([sequence])}
        for position, root in enumerate(self.stage.mouth_guide_roots):
            guide_clips = TalkingClipDataset(
                root,
                audio_features=self.audio_features,
                split=parts[0].split,
                clip_frames=self.stage.clip_frames,
                audio_radius=self.model.motion.config.audio_radius,
            )
            for local in range(len(guide_clips)):
                if _tiles_with_landmarks(guide_clips, local):
                    sequence = numbers.setdefault(
                        (len(parts) + position, guide_clips.clips[local].sequence), len(numbers)
                    )
                    yield {
                        "audio": torch.from_numpy(guide_clips.audio_of(local))[None],
                        "mouth_opening": torch.from_numpy(guide_clips.mouth_openings_of(local))[None],
                        "sequence": torch.tensor([sequence]),
                    }

    @torch.no_grad()
    def finish(self, batches: Iterable[Batch]) -> dict[str, float]:
        """With `mouth_guide`, fit one on `batches` (from `finishing_batches`) and add it to the motion layers; its
        held-out correlations are the stage's final metrics."""
        if not self.stage.mouth_guide:
            return {}
        frames: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}
        for batch in batches:
            mouth_latents = None
            if "pseudo_depth" in batch:  # a training clip (those of mouth_guide_roots carry no frames)
                clean = self._latents(batch)[0][0]  # (F, 2C, h, w)
                cells = box_cells(
                    batch["mouth_box"][0], tuple(clean.shape[-2:]), clean.shape[-2] * self.model.codec.downscale_factor
                )
                mouth_latents = (clean * cells).cpu().numpy()
            frames.setdefault(int(batch["sequence"]), []).append(
                (batch["mouth_opening"][0].cpu().numpy(), batch["audio"][0].cpu().numpy(), mouth_latents)
            )
        with_frames = sum(clips[0][2] is not None for clips in frames.values())
        if with_frames < 2:
            raise UserInputError(
                "train.motion.mouth_guide: fitting a mouth guide needs at least 2 training sequences with face "
                f"landmarks (prepared videos), found {with_frames}"
            )
        sequences = [
            SpeakingSequence(
                np.concatenate([opening for opening, _, _ in clips]),
                np.concatenate([audio for _, audio, _ in clips]),
                None if clips[0][2] is None else np.concatenate([latents for _, _, latents in clips]),
            )
            for clips in frames.values()
        ]
        guide, scores = fit_mouth_guide(sequences, audio_hidden=self.stage.mouth_guide_hidden)
        self.model.motion.add_mouth_guide(guide)
        return scores


def _tiles_with_landmarks(clips: TalkingClipDataset, index: int) -> bool:
    """Whether clip `index` starts at a multiple of the clip length (the clips that tile a sequence) and every
    frame of it has face landmarks."""
    return clips.clips[index].first_frame % clips.clip_frames == 0 and bool(
        np.isfinite(clips.mouth_openings_of(index)).all()
    )


def _depth_change_ratio(generated: torch.Tensor, true_depth: torch.Tensor) -> float:
    """Mean frame-to-frame depth change of the generated clip over the true clip's (1 = as steady as real)."""
    change = lambda depth: to_unit_range(depth.float()).diff(dim=0).abs().mean()
    return float(change(generated) / change(true_depth).clamp_min(1e-6))
