"""Talking-head animation: an RGB-D video of a reference portrait speaking an audio track.

    pipe = RGBDPortraitPipeline.from_pretrained("talking-model")      # a model with motion layers
    out = animate(pipe, "portrait.jpg", "speech.wav", seconds=4, generator=torch.Generator().manual_seed(0))
    out.rgb, out.depth                                                  # (T, S, S, 3), (T, S, S) with output_type="np"

    prepared = prepare_animation(pipe, "portrait.jpg", "speech.mp3")   # audio of any length:
    for chunk in iter_animation(pipe, prepared):                       # bounded memory, chunk by chunk
        ...

The video is sampled in overlapping windows of `window_frames` frames (default: the clip length the motion
layers were trained on, stored in the model), one denoising loop per window
(`rgbd_portrait.pipelines.sampling.sample_latents`, the joint task). Every window after the first starts with
the last `motion_frames` frames of the previous window as *motion frames*, known latents of both modalities in
the channel layout (masks 1), which the temporal layers read, and generates the rest. By default the first
window, too, starts from a known frame: the reference itself, with the depth image→depth predicts for it, so
that the video follows on from the photo. Memory is that of one window whatever the audio's length, and time
grows linearly with it.

With `mouth_only`, every generated frame keeps the photo's latents (both modalities) outside the lower face,
known to the backbone as in channel-wise inpainting, and only the mouth and jaw are generated: the video is the
photographed person, still except for the speaking mouth. The region comes from the reference's face mesh
(`rgbd_portrait.data.face_regions`). The RGB frames are the photo, with the generated frame's pixels pasted where
it changed them in that region (`paste_generated_region`): decoded as they are, they would carry the codec's
round trip, its blur and its colour shifts (a teal backdrop turns blue), over the whole frame. A model whose
motion layers hold a fitted `MouthGuide` (`train.motion.mouth_guide`) then steers each generated frame's mouth,
at every denoising step, toward the opening its audio predicts (`mouth_guidance`: the scale of those openings,
default the model's).

Every frame of a window reads the same reference features, computed once per call; each frame hears its own
audio window (`rgbd_portrait.data.audio`). Classifier-free guidance drops the reference and the audio together
in the unconditional branch (the motion stage trains that case).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from scipy import ndimage
from tqdm.auto import tqdm

from rgbd_portrait.data.audio import AudioTrack, audio_windows, load_audio, make_audio_features
from rgbd_portrait.data.face_regions import box_cells, mouth_box
from rgbd_portrait.devices import placement
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import join_modalities, split_modalities
from rgbd_portrait.models.motion import MotionLayers
from rgbd_portrait.models.reference import ReferenceFeatures
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.pipelines.inputs import ImageInput, read_images
from rgbd_portrait.pipelines.output import OutputType, check_output_type, convert_images
from rgbd_portrait.pipelines.pipeline import DEFAULT_GUIDANCE_SCALE, RGBDPortraitPipeline
from rgbd_portrait.pipelines.sampling import sample_latents, with_unconditional_branch

AudioInput = str | os.PathLike | AudioTrack
# A mouth-only frame is pasted into the photo over its generated cells and a feather of about this many cells
# (Gaussian sigma); a pixel shows the frame fully where the frame changed it by this much (mean over RGB in
# [0, 1]; the codec's own noise between two decodings of nearly the same latents is a few hundredths), and
# that share is smoothed over this many pixels (sigma).
PASTE_FEATHER_CELLS = 0.5
PASTE_FULL_CHANGE = 0.1
PASTE_CHANGE_SMOOTHING = 1.0
# Each frame's colours are mapped to the photo's by a fit on the still pixels within this many cells of the
# feather: the skin around the mouth, which the pasted mouth must meet. Fitted on the whole still frame, the map
# follows the backdrop and hair instead (GRID lbax4n, teal backdrop: lip sync 0.71 that way, 0.75 this way).
PASTE_COLOUR_RING_CELLS = 2.0


@dataclass
class PreparedAnimation:
    """Checked inputs of one animation: the fitted reference, the audio and its features per frame."""

    reference: torch.Tensor  # (3, S, S) in [0, 1]
    audio: AudioTrack
    frame_features: np.ndarray  # (frame_count, D)
    fps: float

    @property
    def frame_count(self) -> int:
        return self.frame_features.shape[0]


@dataclass
class AnimationChunk:
    """Consecutive frames from `first_frame` on, at the model's resolution, float32 on the CPU."""

    first_frame: int
    rgb: torch.Tensor  # (n, 3, S, S) in [0, 1]
    depth: torch.Tensor  # (n, 1, S, S) affine-invariant in [0, 1], larger = farther (per frame)


@dataclass
class RGBDAnimationOutput:
    """A whole animation (see `output_type` in `rgbd_portrait.pipelines.output`): `rgb` and `depth` one entry per
    frame, `reference` the fitted reference image, `audio` the track that drove it, `fps` its frame rate."""

    rgb: list | np.ndarray | torch.Tensor
    depth: list | np.ndarray | torch.Tensor
    reference: np.ndarray  # (S, S, 3) float32 in [0, 1]
    audio: AudioTrack
    fps: float

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, field.name) for field in fields(self))


def _motion_layers(pipeline: RGBDPortraitPipeline) -> MotionLayers:
    motion = pipeline.model.motion
    if motion is None:
        raise UserInputError(
            "the model has no motion layers: animate needs a talking-head model (trained with train.stages "
            "including motion)"
        )
    return motion


def prepare_animation(
    pipeline: RGBDPortraitPipeline,
    reference: ImageInput,
    audio: AudioInput,
    *,
    fps: float | None = None,
    seconds: float | None = None,
    resolution: int | None = None,
    fit: str | None = None,
    center_on_face: bool = True,
    audio_encoder: str | os.PathLike | None = None,
) -> PreparedAnimation:
    """Read and check the reference and the audio (a file in any format ffmpeg reads, or an `AudioTrack`).

    `fps` defaults to the rate the motion layers were trained at; `seconds` animates the start of the audio
    only. `audio_encoder` is the local speech-encoder folder a model trained on encoder features needs. A silent
    track animates a closed mouth (with a warning); a reference without a face is animated as it is (with a
    warning, when MediaPipe is installed to tell).
    """
    motion = _motion_layers(pipeline)
    fps = float(motion.config.fps if fps is None else fps)
    if not fps > 0:
        raise UserInputError(f"fps: must be positive, got {fps}")
    if seconds is not None and not seconds > 0:
        raise UserInputError(f"seconds: must be positive, got {seconds}")
    side = pipeline.model.resolution if resolution is None else resolution
    # The resolution is all that is checked here; steps and guidance are checked by `iter_animation`.
    pipeline.check_inputs(num_inference_steps=1, guidance_scale=1.0, output_type="np", resolution=side)
    features = make_audio_features(motion.config.audio_features, encoder_path=audio_encoder)
    images = read_images(reference, argument="reference")
    if len(images) != 1:
        raise UserInputError(f"reference: an animation has one reference image, got {len(images)}")
    (image,) = images
    if isinstance(audio, AudioTrack):
        if seconds is not None:
            audio = AudioTrack(audio.samples[: round(seconds * audio.sample_rate)], audio.sample_rate, audio.source)
    else:
        audio = load_audio(audio, max_seconds=seconds)
    frame_count = audio.frame_count(fps)
    if frame_count == 0:
        raise UserInputError(f"{audio.source}: {audio.seconds:.3f} s of audio is shorter than one frame at {fps:g} fps")
    if audio.is_silent:
        warnings.warn(f"{audio.source}: the audio is silent; the mouth will stay closed", stacklevel=2)
    if pipeline.face_centres.has_face(image.pixels) is False:
        warnings.warn(f"{image.source}: no face found; animating the image as it is", stacklevel=2)
    _, pixels = pipeline._fit_images([image], side, fit=fit, center_on_face=center_on_face)
    return PreparedAnimation(
        reference=pixels[0],
        audio=audio,
        frame_features=features.frame_features(audio.samples, audio.sample_rate, fps=fps, frame_count=frame_count),
        fps=fps,
    )


def mouth_landmarks(
    pipeline: RGBDPortraitPipeline, prepared: PreparedAnimation, mouth_only: bool | None
) -> np.ndarray | None:
    """The fitted reference's face mesh (478, 3) when only the mouth is to be animated, else None (whole frames).

    `mouth_only` None takes the model's default (`motion.config.mouth_only`), which falls back to whole frames,
    with a warning, where no face is found; True without a face found is a one-line error.
    """
    if not (_motion_layers(pipeline).config.mouth_only if mouth_only is None else mouth_only):
        return None
    landmarks = pipeline.face_centres.landmarks(prepared.reference.permute(1, 2, 0).numpy())
    if landmarks is None and mouth_only:
        raise UserInputError(
            "mouth_only: no face found in the reference (or MediaPipe is not installed); it needs the face mesh"
        )
    if landmarks is None:
        warnings.warn("no face mesh for the reference: animating whole frames, not the mouth only", stacklevel=3)
    return landmarks


def resolve_window(window_frames: int | None, motion_frames: int | None, motion: MotionLayers) -> tuple[int, int]:
    """The window and motion-frame counts to sample with (the model's where not given), checked."""
    window_frames = motion.config.window_frames if window_frames is None else window_frames
    motion_frames = motion.config.motion_frames if motion_frames is None else motion_frames
    if not 0 <= motion_frames < window_frames:
        raise UserInputError(
            f"motion_frames: must be at least 0 and below window_frames ({window_frames}), got {motion_frames}"
        )
    if window_frames > motion.config.max_frames:
        raise UserInputError(f"window_frames: the model's motion layers take at most {motion.config.max_frames}")
    return window_frames, motion_frames


def resolve_mouth_guidance(motion: MotionLayers, *, mouth_only: bool, mouth_guidance: float | None) -> float:
    """The mouth guidance an animation steers with (0: none), given whether it is mouth-only: `mouth_guidance`, or
    the model's default where it holds a mouth guide. Asking for guidance it cannot give is a one-line error."""
    if mouth_guidance is not None and mouth_guidance < 0:
        raise UserInputError(f"mouth_guidance: must be at least 0, got {mouth_guidance}")
    if mouth_guidance and (motion.mouth_guide is None or not mouth_only):
        raise UserInputError(
            "mouth_guidance: needs mouth-only animation and a model with a mouth guide (trained with "
            "train.motion.mouth_guide)"
        )
    if motion.mouth_guide is None or not mouth_only:
        return 0.0
    return float(motion.config.mouth_guidance if mouth_guidance is None else mouth_guidance)


def sample_clip(
    model: RGBDPortraitModel,
    reference: ReferenceFeatures,
    audio: torch.Tensor,
    *,
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    motion_latents: torch.Tensor | None = None,
    still_latents: torch.Tensor | None = None,
    still_mask: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    mouth_targets: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One window: clean `[rgb, depth]` latents (F, 2C, h, w) of a clip of F frames of one reference.

    `reference` holds the features of that one reference (from `model.encode_reference`), `audio` (F, 2r + 1, D)
    each frame's audio window; `motion_latents` (M, 2C, h, w), if given, are the clip's first M frames, known.
    `still_latents` (1, 2C, h, w), with `still_mask` (h, w) bool, are known in every other frame where the mask
    is set (the rest of the frame is generated). `mouth_targets` (F,), with still latents, are the mouth openings
    the generated region is steered to at each step (`MouthGuide.steer`), continuing at the level the motion
    frames' openings set; NaN leaves a frame unsteered.
    """
    motion = model.motion
    count = audio.shape[0]
    given = 0 if motion_latents is None else motion_latents.shape[0]
    device, dtype = placement(model.backbone)
    features = reference.repeat_each(count)
    audio = audio.to(device)
    drop_audio = torch.zeros(count, dtype=torch.bool)
    if guidance_scale > 1.0:
        features = with_unconditional_branch(model, features)
        audio = torch.cat([audio, audio])
        drop_audio = torch.cat([torch.ones(count, dtype=torch.bool), drop_audio])
    shape = (count, 2 * model.latent_channels, *reference.latent_size)
    known = torch.zeros(shape, device=device, dtype=dtype)
    known_mask = torch.zeros_like(known)
    if still_latents is not None:
        known[given:] = still_latents
        known_mask[given:] = still_mask.to(device, dtype)
    if given:
        known[:given] = motion_latents
        known_mask[:given] = 1.0
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    steer = None
    if mouth_targets is not None:
        guide, generated = motion.mouth_guide, ~still_mask.to(device)
        targets = mouth_targets.to(device, copy=True)
        level = guide.level_of(motion_latents, targets[:given], generated) if given else None
        targets[:given] = float("nan")  # known: only their level counts
        steer = lambda clean: guide.steer(clean, targets, generated, level=level)
    scheduler.set_timesteps(num_inference_steps, device=device)
    with motion.frames(count, batch_size=features.batch_size, audio_windows=audio, drop_audio=drop_audio):
        return sample_latents(
            model,
            noise * scheduler.init_noise_sigma,
            scheduler.timesteps,
            scheduler=scheduler,
            reference=features,
            noise=noise,
            known=known,
            known_mask=known_mask,
            conditioning="channels",
            guidance_scale=guidance_scale,
            generator=generator,
            progress_bar_config={"disable": True},
            steer=steer,
        )


def reference_frame_latents(
    pipeline: RGBDPortraitPipeline, pixels: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, ReferenceFeatures]:
    """The reference (3, S, S) in [0, 1] as a clip's known frame: its RGB latents joined with the depth latents
    that image→depth predicts for it (1, 2C, h, w), and its reference features (from the same RGB latents)."""
    model = pipeline.model
    rgb_latents = pipeline._encode_rgb(pixels[None])
    reference = pipeline._encode_reference(pixels[None], latents=rgb_latents)
    result = pipeline._sample(
        reference=reference,
        repeats=1,
        known_rgb_latents=rgb_latents,
        known_rgb_weight=torch.ones_like(pixels[None, :1]),
        conditioning="channels",
        num_inference_steps=model.settings.depth_steps,
        guidance_scale=1.0,
        generator=generator,
        latents=None,
    )
    _, depth_latents = split_modalities(result)
    return join_modalities(rgb_latents, depth_latents), reference


@torch.no_grad()
def iter_animation(
    pipeline: RGBDPortraitPipeline,
    prepared: PreparedAnimation,
    *,
    window_frames: int | None = None,
    motion_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    start_from_reference: bool = True,
    mouth_only: bool | None = None,
    mouth_guidance: float | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = True,
) -> Iterator[AnimationChunk]:
    """The frames of `prepared`, window by window (see the module docstring), with a progress bar by frame.

    `start_from_reference` (default): the first window starts from the reference itself, given as its known
    motion frame (its latents and predicted depth, `reference_frame_latents`), so the video follows on from it;
    with False, the first window generates every frame from the reference features alone. On real speakers it
    lowers the first frame's drift from the photo from 0.78–0.81 to 0.63–0.64 and the frame-to-frame depth change
    from 4.5–5.0× to 3.3–3.7× the truth's (docs/animate.md). Needs motion frames.

    `mouth_only`: generate only the mouth and jaw (`face_regions.mouth_box` of the reference's face mesh); the
    rest of every frame is the photo's latents and predicted depth, and the RGB frames are the photo with the
    generated pixels pasted where they changed it (`paste_generated_region`). None takes the model's default,
    set by training with mouth inpainting (see `mouth_landmarks`).

    `mouth_guidance`: with `mouth_only` and a model holding a `MouthGuide`, the scale of the openings the audio
    predicts that each denoising step moves the mouth to (0 = off; 1 = as the audio map predicts them, shrunk
    toward the mean like any regression's; None: the model's `mouth_guidance`, 3 for the shipped one). Giving it
    to a model without a guide, or without `mouth_only`, is a one-line error.
    """
    model, motion = pipeline.model, _motion_layers(pipeline)
    steps = num_inference_steps or model.default_steps
    pipeline.check_inputs(
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="np",
        resolution=prepared.reference.shape[-1],
    )
    window_frames, motion_frames = resolve_window(window_frames, motion_frames, motion)
    if pipeline._offload_device is not None:
        # The motion layers are small and run inside the backbone's calls: they stay on the compute device.
        motion.to(pipeline._offload_device)
    landmarks = mouth_landmarks(pipeline, prepared, mouth_only)
    mouth_only = landmarks is not None
    scale = resolve_mouth_guidance(motion, mouth_only=mouth_only, mouth_guidance=mouth_guidance)
    previous: torch.Tensor | None = None  # clean latents of the last frames generated (or of the reference)
    still_latents = still_mask = decoded_photo = openings = None
    # Either branch runs the reference net once: the only run of the call.
    if (start_from_reference and motion_frames) or mouth_only:
        reference_latents, reference = reference_frame_latents(pipeline, prepared.reference, generator=generator)
        if start_from_reference and motion_frames:
            previous = reference_latents
        if mouth_only:
            still_latents = reference_latents
            box = torch.from_numpy(mouth_box(landmarks))
            still_mask = ~box_cells(box, reference.latent_size, prepared.reference.shape[-1])
            decoded_photo, _ = pipeline._decode(reference_latents)
            if scale > 0:
                openings = scale * audio_openings(motion, prepared)
    else:
        reference = pipeline._encode_reference(prepared.reference[None])
    total = prepared.frame_count
    progress = tqdm(total=total, desc="animating", unit="frame", disable=not show_progress, **_outer_bar(pipeline))
    first = 0
    try:
        while first < total:
            given = 0 if previous is None else min(motion_frames, previous.shape[0])
            new = min(window_frames - given, total - first)
            frame_numbers = range(first - given, first + new)
            audio = audio_windows(prepared.frame_features, frame_numbers, radius=motion.config.audio_radius)
            latents = sample_clip(
                model,
                reference,
                torch.from_numpy(audio),
                scheduler=pipeline.scheduler,
                num_inference_steps=steps,
                motion_latents=previous[-given:] if given else None,
                still_latents=still_latents,
                still_mask=still_mask,
                guidance_scale=guidance_scale,
                mouth_targets=None if openings is None else guide_targets(openings, frame_numbers),
                generator=generator,
            )
            previous = latents[-motion_frames:] if motion_frames else None
            rgb, depth = pipeline._decode(latents[given:])
            if mouth_only:
                rgb = paste_generated_region(rgb, decoded_photo, prepared.reference, ~still_mask)
            yield AnimationChunk(first_frame=first, rgb=rgb, depth=depth)
            progress.update(new)
            first += new
    finally:
        progress.close()
        pipeline._release_offloaded()


def paste_generated_region(
    frames: torch.Tensor, decoded_photo: torch.Tensor, photo: torch.Tensor, generated_cells: torch.Tensor
) -> torch.Tensor:
    """Decoded frames (n, 3, S, S) in [0, 1] put back into the `photo` (3, S, S) they animate: in the generated
    latent cells (h, w) bool and a feather around them, each frame's pixels replace the photo's as far as the
    frame changed them against `decoded_photo` (the photo's own latents decoded; fully from a change of
    `PASTE_FULL_CHANGE` on), and the photo stays everywhere else.

    The decoder's colours are not the photo's (a codec round trip shifts hues, a teal backdrop turns blue, and
    blurs), and not alike everywhere, so each frame is first mapped to the photo's colours by the affine colour
    transform that best takes its still part around the feather (`PASTE_COLOUR_RING_CELLS`; the whole still
    part when that is too small to fit) to the photo, least squares. Where the frame changed little, the photo
    keeps its detail; where the mouth moved, the frame's pixels show alone, with no trace of the photo's lips.
    """
    side = photo.shape[-1]
    cells = generated_cells[None, None].float()
    weight = torch.nn.functional.interpolate(cells, size=(side, side), mode="nearest").squeeze().numpy()
    cell = side / generated_cells.shape[-1]
    feathered = np.clip(np.maximum(weight, ndimage.gaussian_filter(weight, sigma=PASTE_FEATHER_CELLS * cell)), 0, 1)
    moving = feathered >= 1e-3
    ring = ~moving & ndimage.binary_dilation(moving, iterations=max(1, round(PASTE_COLOUR_RING_CELLS * cell)))
    # An affine colour map has 4 unknowns per channel: fit it on more pixels than that.
    still = torch.from_numpy(ring if ring.sum() > 4 else ~moving)
    if not still.any():
        return frames
    target = photo[:, still].T.double()  # (N, 3)
    change = (frames - decoded_photo).abs().mean(dim=1).numpy()  # (n, S, S)
    pasted = []
    for frame, frame_change in zip(frames, change):
        source = torch.cat([frame[:, still].T, torch.ones(int(still.sum()), 1)], dim=1).double()  # (N, 4)
        transform = torch.linalg.lstsq(source, target).solution.float()  # (4, 3)
        matched = torch.cat([frame.reshape(3, -1).T, torch.ones(side * side, 1)], dim=1) @ transform
        matched = matched.T.reshape(3, side, side).clamp(0.0, 1.0)
        shown = np.clip(frame_change / PASTE_FULL_CHANGE, 0.0, 1.0)
        shown = feathered * np.clip(ndimage.gaussian_filter(shown, sigma=PASTE_CHANGE_SMOOTHING), 0.0, 1.0)
        pasted.append(photo + (matched - photo) * torch.from_numpy(shown).float())
    return torch.stack(pasted)


def audio_openings(motion: MotionLayers, prepared: PreparedAnimation) -> torch.Tensor:
    """The mouth opening per frame (F,), about the track's mean, that the motion layers' `MouthGuide` predicts
    from the prepared audio."""
    windows = audio_windows(prepared.frame_features, range(prepared.frame_count), radius=motion.config.audio_radius)
    return torch.from_numpy(motion.mouth_guide.openings_from_audio(windows)).float()


def guide_targets(openings: torch.Tensor, frame_numbers: range) -> torch.Tensor:
    """The window's mouth targets: `openings` of its frames, frame 0's for the reference before it (the video
    starts from the photo)."""
    return openings[[max(frame, 0) for frame in frame_numbers]]


def _outer_bar(pipeline: RGBDPortraitPipeline) -> dict:
    """The pipeline's progress-bar options (`set_progress_bar_config`), except `disable`, which the caller sets."""
    return {key: value for key, value in pipeline._progress_bar_config.items() if key != "disable"}


def animate(
    pipeline: RGBDPortraitPipeline,
    reference: ImageInput,
    audio: AudioInput,
    *,
    fps: float | None = None,
    seconds: float | None = None,
    window_frames: int | None = None,
    motion_frames: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    start_from_reference: bool = True,
    mouth_only: bool | None = None,
    mouth_guidance: float | None = None,
    resolution: int | None = None,
    fit: str | None = None,
    center_on_face: bool = True,
    audio_encoder: str | os.PathLike | None = None,
    generator: torch.Generator | None = None,
    output_type: OutputType = "np",
    return_dict: bool = True,
):
    """The whole animation in memory (see `prepare_animation` and `iter_animation` for the options); for long
    audio, stream `iter_animation` instead, or write files with `rgbd_portrait.pipelines.animation_export`."""
    check_output_type(output_type)
    prepared = prepare_animation(
        pipeline,
        reference,
        audio,
        fps=fps,
        seconds=seconds,
        resolution=resolution,
        fit=fit,
        center_on_face=center_on_face,
        audio_encoder=audio_encoder,
    )
    chunks = list(
        iter_animation(
            pipeline,
            prepared,
            window_frames=window_frames,
            motion_frames=motion_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            start_from_reference=start_from_reference,
            mouth_only=mouth_only,
            mouth_guidance=mouth_guidance,
            generator=generator,
            show_progress=not pipeline._progress_bar_config.get("disable", False),
        )
    )
    rgb = [frame for chunk in chunks for frame in chunk.rgb]
    depth = [frame for chunk in chunks for frame in chunk.depth]
    output = RGBDAnimationOutput(
        rgb=convert_images(rgb, "color", output_type, stack=True),
        depth=convert_images(depth, "depth", output_type, stack=True),
        reference=prepared.reference.permute(1, 2, 0).numpy(),
        audio=prepared.audio,
        fps=prepared.fps,
    )
    return output if return_dict else output.to_tuple()
