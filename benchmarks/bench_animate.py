"""Talking-head animation: lip sync and temporal stability on synthetic talking sequences, speed, and how time
and memory grow with the audio's length.

    python benchmarks/bench_animate.py                                  # random weights, configs/default.yaml
    python benchmarks/bench_animate.py --model runs/default/motion/model --quality-steps 20
    python benchmarks/bench_animate.py --model M --real datasets/grid/test_s1 datasets/grid/unseen \
        --out benchmarks/results/animate_real_default.md           # real talking videos (below)

Run from the repository root. Writes a Markdown report to benchmarks/results/animate.md (or --out) and prints it.

Quality, on talking sequences rendered by the studio for identities the default training never sees (another
seed): each sequence's first frame is the reference and its audio drives the animation.

* Lip sync: the correlation, over frames, between the audio's loudness (RMS per frame) and the mouth opening,
  measured as the mean depth of a mouth region: the pixels whose true depth follows the true jaw opening most
  closely (the top `MOUTH_FRACTION` by correlation, from the sequence's `jaw_open`). The same region is read in
  the generated depth. The true sequence's own correlation is the reference value. The generated head may move
  differently from the true one, which this fixed region does not follow, so it can miss the generated mouth.
* Temporal stability: the mean frame-to-frame change of depth (per-frame normalised to [0, 1]), generated over
  true (1 = as steady as the real motion; much above 1 = flicker).
* Mouth sheet (a PNG beside the report): per sequence, its quietest and loudest frames after the first
  window, true RGB over generated RGB and depth, to see what the fixed-region number cannot (a mouth that opens
  where the generated face has it).
* Per-frame depth error: AbsRel of each generated frame's depth against the true frame's, after a per-frame
  scale and shift (as image→depth is scored), on the true head. The pose is known only at frame 0, the
  reference's own frame; later the generated head moves freely (only the reference and the audio condition
  it), so the mean over frames also counts pose differences. For scale, the first true frame held still
  scores what a perfect but motionless head would.

Real faces (`--real FOLDER...`: talking videos prepared by `rgbd-portrait prepare`, e.g. GRID; the synthetic
quality and the speed sections are then skipped). Each clip's first frame is the reference and its own audio
drives the animation. Measured from the face mesh, as talking-head papers do (`rgbd_portrait.evaluation.lipsync`),
on the 128-px frames, true and generated alike:

* Mouth sync: Pearson correlation over frames of the generated mouth opening (inner-lip distance over face
  height) with the true video's. Bounds: the true video against itself (its mouth read from the crop against
  the mesh `prepare` stored from the source frame: the measure's own repeatability) and a shuffled-audio
  control (the true mouth of the next clip in the list, i.e. a natural mouth speaking other words: what a
  model that opens the mouth at a typical rhythm but not in time with this audio would score). With
  `--shuffled-generation` the control is also generated: this clip's reference driven by the next clip's
  audio, scored against this clip's true mouth.
* Mouth–audio: correlation of the mouth opening with the audio's loudness (RMS per frame), generated and true,
  and of the true mouth with the next clip's loudness (chance level).
* With a mouth guide steering (`--mouth-only`, guidance above 0): the correlation of the openings the guide
  predicts from the audio with the true mouth, and of the generated mouth with them: where lip sync is lost,
  in the audio map or in the drawing.
* Depth stability: frame-to-frame change of the generated depth over that of the pseudo-depth truth (both
  per-frame normalised to [0, 1]).
* Identity drift: distance of each generated frame to the reference in the codec's latent space (relative to
  the reference latent's norm), at the first and the last frame; the true video's last frame for scale.
* Per clip a side-by-side video (true | generated | generated depth, with the audio) and, for all clips, a mouth
  sheet of the most closed and most open true mouths after the first window, true then generated.

Speed and scaling: frames per second with the model's default steps and guidance on one window, and, in a fresh
process per length (so peak memory is per run), the time and peak resident memory of animating 1–8 s of audio
with one denoising step (the loop per window is the same whatever the step count). Both animate
`--speed-reference` (default: the first sequence's first frame) as `animate` does by default: a model whose
default is mouth-only animation animates only the mouth of a photo in which the face mesh finds a face.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile
import torch

from benchmark_support import process_status_bytes
from rgbd_portrait.data.audio import AudioTrack, load_audio
from rgbd_portrait.data.depth_normalization import normalize_depth, to_unit_range
from rgbd_portrait.data.image_io import colorize_depth, write_rgb_png
from rgbd_portrait.data.sample_format import PortraitSample, read_meta, read_sample, sequence_frames
from rgbd_portrait.data.sequence_dataset import find_sequences
from rgbd_portrait.data.synth import render_dataset, synthesize_speech
from rgbd_portrait.evaluation.lipsync import frame_loudness, mouth_opening, mouth_openings, pearson
from rgbd_portrait.evaluation.metrics import depth_metrics
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.pipelines import RGBDPortraitPipeline
from rgbd_portrait.pipelines.animate import (
    audio_openings,
    iter_animation,
    prepare_animation,
    resolve_mouth_guidance,
)
from rgbd_portrait.training import load_config
from rgbd_portrait.training.motion_stage import MotionRecipe
from rgbd_portrait.training.validation import write_grid

MOUTH_FRACTION = 0.005  # of the pixels on the head in every frame
SHEET_FRAMES = 3  # quietest and loudest frames shown per sequence
BENCHMARK_SEED = 12345  # identities of another seed than the training data's (0)
SCALING_SECONDS = (1.0, 2.0, 4.0, 8.0)
REAL_SHEET_FRAMES = 2  # most closed and most open true mouths shown per real clip
FIRST_WINDOW_GENERATED = "the first window generated from the reference features alone (--no-start-from-reference)"
MOUTH_ONLY = "only the mouth box generated, the rest of every frame the reference's (--mouth-only)"


def animation_options(args: argparse.Namespace) -> dict:
    """The `iter_animation` options chosen on the command line (explicit, so that a report says what ran)."""
    options = {"start_from_reference": args.start_from_reference, "mouth_only": args.mouth_only}
    if args.mouth_guidance is not None:
        options["mouth_guidance"] = args.mouth_guidance
    return options


def describe_animation(args: argparse.Namespace) -> str:
    start = "the reference is the first known frame" if args.start_from_reference else FIRST_WINDOW_GENERATED
    described = start + (
        f"; {MOUTH_ONLY}" if args.mouth_only else "; whole frames generated, whatever the model's default"
    )
    if args.mouth_guidance is not None:
        described += f"; mouth guidance {args.mouth_guidance:g}"
    return described


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    if first.std() < 1e-12 or second.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(first, second)[0, 1])


def loudness(track: AudioTrack, fps: float, frames: int) -> np.ndarray:
    """RMS of the audio over each frame's span."""
    edges = np.round(np.arange(frames + 1) * track.sample_rate / fps).astype(int)
    return np.array([np.sqrt(np.mean(track.samples[start:end] ** 2)) for start, end in zip(edges[:-1], edges[1:])])


def true_depth_and_masks(samples: list[PortraitSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames' depth and head masks, (T, 1, H, W) each."""
    depth = torch.from_numpy(np.stack([sample.depth for sample in samples]))[:, None]
    return depth, torch.from_numpy(np.stack([sample.mask for sample in samples]))[:, None]


def true_unit_depth(depth: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame normalised depth (T, H, W) in [0, 1] and the pixels on the head in every frame (H, W)."""
    normalized, _, _ = normalize_depth(depth, mask)
    return to_unit_range(normalized)[:, 0].numpy(), mask[:, 0].numpy().all(axis=0)


def depth_errors(generated: np.ndarray, depth: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """AbsRel per frame of the generated depth (T, H, W), and of the first true frame held still, each mapped by
    scale and shift onto the true frame's depth (T, 1, H, W) on its head."""
    still = depth[:1].expand_as(depth)
    return tuple(
        depth_metrics(guess, depth, mask)["abs_rel"].flatten().numpy()
        for guess in (torch.from_numpy(generated)[:, None], still)
    )


def mouth_region(depth: np.ndarray, head: np.ndarray, jaw_open: np.ndarray) -> np.ndarray:
    """The head pixels whose depth correlates best with the jaw opening."""
    series = depth[:, head]  # (T, pixels)
    centred = series - series.mean(axis=0)
    jaw = jaw_open - jaw_open.mean()
    scores = (centred * jaw[:, None]).sum(axis=0) / (np.linalg.norm(centred, axis=0) * np.linalg.norm(jaw) + 1e-12)
    count = max(10, int(MOUTH_FRACTION * head.sum()))
    region = np.zeros(head.size, dtype=bool)
    region[np.flatnonzero(head)[np.argsort(scores)[-count:]]] = True
    return region.reshape(head.shape)


def mouth_sheet_path(report: str) -> Path:
    return Path(report).with_name(Path(report).stem + "_mouth.png")


def frame_change(depth: np.ndarray) -> float:
    return float(np.abs(np.diff(depth, axis=0)).mean())


def build_model(args: argparse.Namespace) -> RGBDPortraitModel:
    if args.model:
        return RGBDPortraitModel.from_pretrained(args.model)
    config = load_config(args.config)
    torch.manual_seed(0)
    model = RGBDPortraitModel.from_config(config.model, source=args.config)
    MotionRecipe(model, config.train.motion)  # adds fresh motion layers as the motion stage would
    return model.eval()


def animate_sequence(
    pipeline: RGBDPortraitPipeline, sequence: Path, *, steps: int, folder: Path, options: dict | None = None
) -> dict:
    meta = read_meta(sequence)
    samples = [read_sample(frame, extras=False) for frame in sequence_frames(sequence)]
    depth, mask = true_depth_and_masks(samples)
    true_depth, head = true_unit_depth(depth, mask)
    reference = folder / f"{sequence.name}_reference.png"
    write_rgb_png(reference, samples[0].rgb)
    prepared = prepare_animation(pipeline, reference, sequence / meta["audio"], fps=meta["fps"])
    frames = min(prepared.frame_count, len(true_depth))
    generated_rgb, generated = _generate_clip(pipeline, prepared, steps=steps, options=options)
    generated, generated_rgb = generated[:frames], generated_rgb[:frames]
    true_depth = true_depth[:frames]
    region = mouth_region(true_depth, head, np.asarray(meta["jaw_open"][:frames]))
    envelope = loudness(prepared.audio, prepared.fps, frames)
    # From the second window on, so that every frame shown was generated after motion frames.
    later = max(0, min(pipeline.model.motion.config.window_frames, frames - 2 * SHEET_FRAMES))
    by_loudness = later + np.argsort(envelope[later:])
    shown = [*by_loudness[:SHEET_FRAMES], *by_loudness[-SHEET_FRAMES:]]
    true_rgb = [samples[index].rgb for index in shown]
    sheet_rows = [
        [
            (f"{'quiet' if n < SHEET_FRAMES else 'loud'}, frame {index}", image)
            for n, (index, image) in enumerate(zip(shown, true_rgb))
        ],
        [("generated", generated_rgb[index].permute(1, 2, 0).numpy()) for index in shown],
        [("depth", colorize_depth(generated[index])) for index in shown],
    ]
    return {
        "sheet_rows": sheet_rows,
        "sequence": sequence.name,
        "frames": frames,
        "true_sync": correlation(envelope, true_depth[:, region].mean(axis=1)),
        "generated_sync": correlation(envelope, generated[:, region].mean(axis=1)),
        "true_change": frame_change(true_depth),
        "generated_change": frame_change(generated),
        "depth_errors": depth_errors(generated, depth[:frames], mask[:frames]),
    }


def measure_speed(pipeline: RGBDPortraitPipeline, reference: Path, audio: Path, *, seconds: float, steps: int | None):
    """Seconds spent generating `seconds` of animation (the model loaded, inputs prepared) and the frame count."""
    prepared = prepare_animation(pipeline, reference, audio, seconds=seconds)
    start = time.perf_counter()
    for _chunk in iter_animation(
        pipeline, prepared, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), show_progress=False
    ):
        pass
    return time.perf_counter() - start, prepared.frame_count


def child_main(args: argparse.Namespace) -> int:
    """One scaling measurement in its own process: JSON with seconds, frames and peak resident memory."""
    torch.set_num_threads(args.threads)
    pipeline = RGBDPortraitPipeline.from_pretrained(args.model)
    seconds, frames = measure_speed(pipeline, args.reference, args.audio, seconds=args.measure_seconds, steps=1)
    peak_mb = process_status_bytes("VmHWM") / 2**20
    print(json.dumps({"seconds": seconds, "frames": frames, "peak_mb": peak_mb}))
    return 0


def training_step_seconds(model: RGBDPortraitModel, config_path: str, repeats: int = 3) -> tuple[float, int, int]:
    """Median seconds of one motion-stage step (forward, backward, AdamW) with the config's batch of clips; the
    steps change `model`'s motion layers (pass a copy)."""
    stage = load_config(config_path).train.motion
    recipe = MotionRecipe(model, stage)
    recipe.module.train()
    parameters = [parameter for parameter in recipe.module.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=stage.learning_rate)
    side = model.resolution
    clips, frames = stage.batch_size, stage.clip_frames
    generator = torch.Generator().manual_seed(0)
    batch = {
        "rgb": torch.rand(clips, frames, 3, side, side, generator=generator) * 2 - 1,
        "depth": torch.rand(clips, frames, 1, side, side, generator=generator) * 2 - 1,
        "mask": torch.ones(clips, frames, 1, side, side),
        "pseudo_depth": torch.zeros(clips, frames),  # exact depth, as the studio's
        "depth_observed": torch.ones(clips, frames, 1, side, side),
        "mouth_box": torch.full((clips, 4), float("nan")),  # no face landmarks, as the studio's
        "audio": torch.rand(clips, frames, model.motion.audio_window, model.motion.config.audio_feature_dim),
        "reference_rgb": torch.rand(clips, 3, side, side, generator=generator) * 2 - 1,
        "reference_depth": torch.rand(clips, 1, side, side, generator=generator) * 2 - 1,
    }
    times = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        loss, _ = recipe.loss(recipe.module, batch, torch.Generator().manual_seed(repeat))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if repeat:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times), clips, frames


def generate_clip(
    pipeline: RGBDPortraitPipeline,
    reference: Path,
    audio: Path,
    *,
    fps: float,
    steps: int,
    options: dict | None = None,
    cache: Path | None = None,
    cache_key: str = "",
):
    """Generated RGB (T, 3, S, S) and depth (T, S, S) in [0, 1] for a reference image and an audio file
    (`options` go to `iter_animation`), and the seconds the sampling took (None when read from the cache); with
    `cache`, kept in that .npz file and read from it by a later run with the same `cache_key` (`generation_key`:
    rerunning the measures costs no sampling)."""
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        if "key" in stored.files and stored["key"].item() == cache_key:
            return torch.from_numpy(stored["rgb"]), stored["depth"], None
    start = time.perf_counter()
    prepared = prepare_animation(pipeline, reference, audio, fps=fps, center_on_face=False)
    rgb, depth = _generate_clip(pipeline, prepared, steps=steps, options=options)
    seconds = time.perf_counter() - start
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache.with_suffix(".tmp.npz"), rgb=rgb.numpy(), depth=depth, key=np.array(cache_key))
        cache.with_suffix(".tmp.npz").replace(cache)
    return rgb, depth, seconds


def _generate_clip(pipeline: RGBDPortraitPipeline, prepared, *, steps: int, options: dict | None = None):
    """Every frame of a prepared animation: rgb (T, 3, H, W) and depth (T, H, W), seeded; `options` go to
    `iter_animation`."""
    chunks = list(
        iter_animation(
            pipeline,
            prepared,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            show_progress=False,
            **(options or {}),
        )
    )
    return torch.cat([chunk.rgb for chunk in chunks]), np.concatenate([chunk.depth[:, 0].numpy() for chunk in chunks])


@torch.no_grad()
def latent_drift(model: RGBDPortraitModel, frames: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Distance of each frame's codec latent to the reference's, over the reference latent's norm (T,)."""
    reference_latent = model.codec.encode_rgb(reference[None] * 2 - 1)
    latents = torch.cat([model.codec.encode_rgb(chunk * 2 - 1) for chunk in frames.split(16)])
    distance = (latents - reference_latent).flatten(1).norm(dim=1)
    return (distance / reference_latent.flatten().norm()).numpy()


def write_side_by_side(path: Path, panels: list[np.ndarray], audio: Path, fps: float) -> None:
    """An H.264 video of panels (each (T, S, S, 3) uint8) next to each other, with the audio (AAC)."""
    frames = np.concatenate(panels, axis=2)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (frames.shape[2], frames.shape[1]),
        fps=fps,
        codec="libx264",
        quality=6,
        macro_block_size=2,
        ffmpeg_log_level="error",
        audio_path=str(audio),
        audio_codec="aac",
        output_params=["-shortest"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def read_real_clip(sequence: Path, finder, *, work: Path, frames: int | None) -> dict:
    """A prepared talking video (its first `frames` frames): frames, depth, audio cut to match, and the true
    mouth (read from the crops, and from the mesh `prepare` stored)."""
    meta = read_meta(sequence)
    frame_folders = sequence_frames(sequence)[:frames]
    if [int(folder.name) for folder in frame_folders] != list(range(len(frame_folders))):
        raise SystemExit(f"{sequence}: frames without a face; the benchmark needs every frame")
    samples = [read_sample(frame, extras=False) for frame in frame_folders]
    depth, mask = true_depth_and_masks(samples)
    unit_depth, _ = true_unit_depth(depth, mask)
    rgb = np.stack([sample.rgb for sample in samples]).astype(np.float32) / 255  # (T, S, S, 3) in [0, 1]
    track = load_audio(sequence / meta["audio"])
    frames = len(samples)
    audio = work / f"{sequence.name}.wav"
    soundfile.write(audio, track.samples[: round(frames / float(meta["fps"]) * track.sample_rate)], track.sample_rate)
    return {
        "name": sequence.name,
        "audio": audio,
        "fps": float(meta["fps"]),
        "rgb": rgb,
        "unit_depth": unit_depth,
        "mouth": mouth_openings(rgb, finder),
        "stored_mouth": np.array([mouth_opening(read_meta(folder)["face_landmarks"]) for folder in frame_folders]),
        "loudness": frame_loudness(track.samples, track.sample_rate, fps=float(meta["fps"]), frames=frames),
    }


def animate_real_clip(
    pipeline: RGBDPortraitPipeline,
    clip: dict,
    control: dict,
    *,
    steps: int,
    finder,
    folder: Path,
    shuffled: bool,
    cache_folder: Path | None,
    cache_key: str = "",
    options: dict | None = None,
) -> dict:
    """Every real-face measure of one clip (see the module docstring); `control` is the next clip."""
    reference = folder / f"{clip['name']}_reference.png"
    write_rgb_png(reference, clip["rgb"][0])
    # The reference speaking the audio of `speaker` (this clip, or the control), cached under both names.
    speak = lambda speaker: generate_clip(
        pipeline,
        reference,
        speaker["audio"],
        fps=clip["fps"],
        steps=steps,
        options=options,
        cache=cache_folder / f"{clip['name']}_{speaker['name']}.npz" if cache_folder else None,
        cache_key=cache_key,
    )
    generated_rgb, generated_depth, sampling_seconds = speak(clip)
    frames = min(len(generated_rgb), len(clip["rgb"]))
    generated_rgb, generated_depth = generated_rgb[:frames], generated_depth[:frames]
    generated_images = generated_rgb.permute(0, 2, 3, 1).numpy()
    mouth, true_mouth = mouth_openings(generated_images, finder), clip["mouth"][:frames]
    drift = latent_drift(pipeline.model, generated_rgb, torch.from_numpy(clip["rgb"][0]).permute(2, 0, 1))
    true_drift = latent_drift(
        pipeline.model,
        torch.from_numpy(clip["rgb"][:frames]).permute(0, 3, 1, 2),
        torch.from_numpy(clip["rgb"][0]).permute(2, 0, 1),
    )
    result = {
        "clip": clip["name"],
        "frames": frames,
        "faces_found": float(np.isfinite(mouth).mean()),
        "mouth_sync": pearson(mouth, true_mouth),
        "truth_vs_itself": pearson(true_mouth, clip["stored_mouth"][:frames]),
        "shuffled_control": pearson(control["mouth"][:frames], true_mouth),
        "generated_audio": pearson(mouth, clip["loudness"][:frames]),
        "true_audio": pearson(true_mouth, clip["loudness"][:frames]),
        "shuffled_audio": pearson(true_mouth, control["loudness"][:frames]),
        "depth_change_ratio": frame_change(generated_depth) / max(frame_change(clip["unit_depth"][:frames]), 1e-12),
        "drift_first": float(drift[0]),
        "drift_last": float(drift[-1]),
        "true_drift_last": float(true_drift[-1]),
        "sampling_seconds": sampling_seconds,
    }
    motion, options = pipeline.model.motion, options or {}
    if resolve_mouth_guidance(
        motion, mouth_only=bool(options.get("mouth_only")), mouth_guidance=options.get("mouth_guidance")
    ):
        # What the guide steered toward: whether lip sync is lost in its audio map or in the drawn mouth.
        prepared = prepare_animation(pipeline, reference, clip["audio"], fps=clip["fps"], center_on_face=False)
        targets = audio_openings(motion, prepared).numpy()[:frames]
        result["guide_vs_true"] = pearson(targets, true_mouth)
        result["generated_vs_guide"] = pearson(mouth, targets)
    if shuffled:
        shuffled_rgb, _, _ = speak(control)
        shuffled_mouth = mouth_openings(shuffled_rgb[:frames].permute(0, 2, 3, 1).numpy(), finder)
        result["shuffled_generated"] = pearson(shuffled_mouth, true_mouth)
    # Mouth sheet: the most closed and most open true mouths after the first window.
    later = min(pipeline.model.motion.config.window_frames, frames - 2 * REAL_SHEET_FRAMES)
    order = later + np.argsort(np.nan_to_num(true_mouth[later:], nan=np.nanmedian(true_mouth)))
    shown = [*order[:REAL_SHEET_FRAMES], *order[-REAL_SHEET_FRAMES:]]
    result["sheet_rows"] = [
        [
            (clip["name"] if n == 0 else f"{'closed' if n < REAL_SHEET_FRAMES else 'open'} {index}", clip["rgb"][index])
            for n, index in enumerate(shown)
        ]
        + [(f"gen {index}", generated_images[index]) for index in shown]
    ]
    result["video_panels"] = [
        to_uint8(clip["rgb"][:frames]),
        to_uint8(generated_images),
        np.stack([colorize_depth(depth) for depth in generated_depth]),
    ]
    return result


def generation_key(args: argparse.Namespace, options: dict) -> str:
    """What a cached generation depends on: the model's weights (their bytes), the steps and the options."""
    weights = hashlib.sha256()
    if args.model:
        for path in sorted(Path(args.model).rglob("*.safetensors")):
            weights.update(path.read_bytes())
    else:
        weights.update(f"random weights from {args.config}".encode())
    made_by = {"weights": weights.hexdigest(), "frames": args.frames, "steps": args.quality_steps, "options": options}
    return json.dumps(made_by, sort_keys=True, default=str)


def run_real_benchmark(args: argparse.Namespace, argv: list[str] | None, work: Path) -> str:
    """The real-face measures on every prepared talking video below `args.real`; the report as Markdown."""
    from rgbd_portrait.data.prepare.faces import FaceFinder

    load_before = os.getloadavg()[0]
    model = build_model(args)
    pipeline = RGBDPortraitPipeline(model)
    pipeline.set_progress_bar_config(disable=True)
    finder = FaceFinder()
    groups = [(root, find_sequences(root)[: args.limit]) for root in args.real]
    out = Path(args.out)
    media = out.with_name(out.stem)
    media.mkdir(parents=True, exist_ok=True)
    sections, sheet_rows, everything = [], [], []
    options = animation_options(args)
    cache_key = generation_key(args, options) if args.cache else ""
    for root, sequences in groups:
        clips = [read_real_clip(sequence, finder, work=work, frames=args.frames) for sequence in sequences]
        results = [
            animate_real_clip(
                pipeline,
                clip,
                clips[(number + 1) % len(clips)],
                steps=args.quality_steps,
                finder=finder,
                folder=work,
                shuffled=args.shuffled_generation,
                cache_folder=Path(args.cache) / Path(root).name if args.cache else None,
                cache_key=cache_key,
                options=options,
            )
            for number, clip in enumerate(clips)
        ]
        sampled = [result for result in results if result["sampling_seconds"] is not None]
        timing = (
            f"{sum(r['sampling_seconds'] for r in sampled) / sum(r['frames'] for r in sampled):.2f} s per generated "
            f"frame{'' if len(sampled) == len(results) else f' on the {len(sampled)} not read from the cache'}"
            if sampled
            else "generated frames read from the cache, not timed"
        )
        for clip, result in zip(clips, results):
            sheet_rows += result.pop("sheet_rows")
            write_side_by_side(media / f"{result['clip']}.mp4", result.pop("video_panels"), clip["audio"], clip["fps"])
        everything += results
        shuffled_header = " shuffled audio, generated |" if args.shuffled_generation else ""
        rows = [
            f"| {item['clip']} | {item['frames']} | {item['faces_found']:.0%} | **{item['mouth_sync']:.2f}** | "
            f"{item['truth_vs_itself']:.2f} | {item['shuffled_control']:.2f} |"
            + (f" {item['shuffled_generated']:.2f} |" if args.shuffled_generation else "")
            + f" {item['generated_audio']:.2f} | {item['true_audio']:.2f} | {item['shuffled_audio']:.2f} | "
            f"{item['depth_change_ratio']:.2f} | {item['drift_first']:.3f} | {item['drift_last']:.3f} | "
            f"{item['true_drift_last']:.3f} |"
            for item in results
        ]

        def mean(key: str, items=results) -> float:
            return float(np.nanmean([item[key] for item in items]))

        beats = sum(item["mouth_sync"] > item["shuffled_control"] for item in results)
        sections += [
            f"### `{root}`: {len(results)} clips ({timing})",
            "",
            f"Mean mouth sync **{mean('mouth_sync'):.2f}** (shuffled-audio control {mean('shuffled_control'):.2f}; "
            f"above it on {beats} of {len(results)} clips); mouth–audio generated {mean('generated_audio'):.2f}, "
            f"true {mean('true_audio'):.2f}; depth change generated / true {mean('depth_change_ratio'):.2f}; "
            f"drift first → last {mean('drift_first'):.3f} → {mean('drift_last'):.3f} "
            f"(true video {mean('true_drift_last'):.3f}).",
            *(
                [
                    "",
                    f"Mouth guide: the openings it predicts from the audio follow the true mouth at "
                    f"{mean('guide_vs_true'):.2f}; the generated mouth follows them at "
                    f"{mean('generated_vs_guide'):.2f}.",
                ]
                if "guide_vs_true" in results[0]
                else []
            ),
            "",
            "| clip | frames | face found (generated) | mouth sync | truth vs itself | shuffled-audio control |"
            + shuffled_header
            + " mouth–audio, generated | mouth–audio, true | mouth–audio, shuffled | depth change, generated / "
            "true | drift, first frame | drift, last frame | true video's drift, last frame |",
            "|---|---:|---:|---:|---:|---:|" + ("---:|" if args.shuffled_generation else "") + "---:|---:|---:|"
            "---:|---:|---:|---:|",
            *rows,
            "",
        ]
    sheet = write_grid(mouth_sheet_path(args.out), sheet_rows, height=72)
    summary = [{key: value for key, value in item.items()} for item in everything]
    (media / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    load_after = os.getloadavg()[0]
    arguments = " ".join(shlex.quote(argument) for argument in (argv or sys.argv[1:]))
    source = f"`{args.model}`" if args.model else f"random weights from `{args.config}`"
    return "\n".join(
        [
            "# Talking-head animation on real faces: lip sync, stability, drift",
            "",
            f"Command: `python benchmarks/bench_animate.py {arguments}`  ",
            f"Model: {source}; {model.resolution} px, {args.quality_steps} denoising steps, guidance 2, windows of "
            f"{model.motion.config.window_frames} frames with {model.motion.config.motion_frames} motion frames"
            f"; {describe_animation(args)}.  ",
            f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, torch "
            f"{torch.__version__}, CPU; load average {load_before:.1f} at the start and {load_after:.1f} at the end.",
            "",
            "Each clip's first frame is the reference and its own audio drives it. Mouth opening: face-mesh "
            "inner-lip distance over face height on the 128-px frames. Mouth sync: its Pearson correlation over "
            "frames, generated against true. Truth vs itself: the true mouth read from the crop against the mesh "
            "stored from the source frame. Shuffled-audio control: the next clip's true mouth against this one's. "
            "Mouth–audio: correlation with the loudness (RMS per frame); shuffled: the true mouth against the next "
            "clip's loudness. Depth change: frame-to-frame change of the generated depth over the pseudo-depth "
            "truth's. Drift: codec-latent distance to the reference over the reference latent's norm.",
            "",
            f"Mouth sheet: [`{sheet.name}`]({sheet.name}) (per clip, named in its first caption: the 2 most closed "
            "and 2 most open true mouths after the first window, then the generated frames, `gen`). Side-by-side "
            "videos (true | generated | depth, with the audio) and per-clip numbers: "
            f"[`{media.name}/`]({media.name}/).",
            "",
            *sections,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a talking-head model folder (default: random weights from --config)")
    parser.add_argument("--config", default="configs/default.yaml", help="architecture and motion stage (random)")
    parser.add_argument("--data", help="folder with talking sequences (default: rendered for the benchmark)")
    parser.add_argument("--sequences", type=int, default=2, help="sequences rendered when --data is not given")
    parser.add_argument("--sequence-seconds", type=float, default=4.0)
    parser.add_argument("--quality-steps", type=int, default=2, help="denoising steps of the quality runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/animate.md")
    parser.add_argument("--real", nargs="+", help="folders of prepared talking videos: the real-face measures only")
    parser.add_argument("--limit", type=int, help="real clips per folder (default all)")
    parser.add_argument("--frames", type=int, help="animate only the first FRAMES frames of each real clip")
    parser.add_argument(
        "--cache", help="keep the real clips' generated frames here, reused by runs of the same weights and settings"
    )
    parser.add_argument(
        "--no-start-from-reference",
        dest="start_from_reference",
        action="store_false",
        help="generate each video's first window from the reference's features alone (the animation's default "
        "starts from the reference as a known frame)",
    )
    parser.add_argument(
        "--mouth-only",
        action="store_true",
        help="animate only the mouth and jaw, the rest of each frame the reference's (`animate --mouth-only`)",
    )
    parser.add_argument(
        "--mouth-guidance",
        type=float,
        help="with --mouth-only, the mouth guide's strength (`animate --mouth-guidance`; default: the model's)",
    )
    parser.add_argument(
        "--shuffled-generation", action="store_true", help="also animate each clip with the next clip's audio"
    )
    parser.add_argument(
        "--speed-reference",
        help="the photo the speed and growth measurements animate at the model's defaults (default: the first "
        "synthetic sequence's first frame)",
    )
    # Internal: one scaling measurement (run by the benchmark itself in a child process).
    parser.add_argument("--measure-seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_seconds is not None:
        return child_main(args)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_animate."))
    try:
        report = run_real_benchmark(args, argv, work) if args.real else run_benchmark(args, argv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_bytes_atomically(args.out, report.encode())
    print(report)
    return 0


def run_benchmark(args: argparse.Namespace, argv: list[str] | None, work: Path) -> str:
    """Every measurement (see the module docstring), with temporary files in `work`; the report as Markdown."""
    load_before = os.getloadavg()[0]
    model = build_model(args)
    model_dir = Path(args.model) if args.model else model.save_pretrained(work / "model")
    pipeline = RGBDPortraitPipeline(model)
    pipeline.set_progress_bar_config(disable=True)

    data = Path(args.data) if args.data else work / "sequences"
    if not args.data:
        render_dataset(
            data,
            identities=args.sequences,
            samples_per_identity=1,
            size=model.resolution,
            relights=0,
            sequences=args.sequences,
            sequence_seconds=args.sequence_seconds,
            seed=BENCHMARK_SEED,
            val_fraction=0.0,
            test_fraction=0.0,
            show_progress=False,
        )
    quality = [
        animate_sequence(pipeline, sequence, steps=args.quality_steps, folder=work, options=animation_options(args))
        for sequence in find_sequences(data)
    ]
    sheet = write_grid(mouth_sheet_path(args.out), [row for item in quality for row in item.pop("sheet_rows")])

    # Speed at the model's defaults, on one window.
    reference = Path(args.speed_reference or work / f"{Path(quality[0]['sequence']).name}_reference.png")
    long_audio = work / "speech.wav"
    speech = synthesize_speech(np.random.default_rng(BENCHMARK_SEED), seconds=max(SCALING_SECONDS), pitch_hz=120.0)
    soundfile.write(long_audio, speech.audio, speech.sample_rate)
    window = model.motion.config.window_frames
    fps = model.motion.config.fps
    default_seconds, default_frames = measure_speed(pipeline, reference, long_audio, seconds=window / fps, steps=None)
    step_seconds, step_clips, step_frames = training_step_seconds(copy.deepcopy(model), args.config)

    scaling = []
    for seconds in SCALING_SECONDS:
        command = [sys.executable, __file__, "--model", str(model_dir), "--reference", str(reference)]
        command += ["--audio", str(long_audio), "--measure-seconds", str(seconds), "--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        scaling.append({"audio_seconds": seconds, **json.loads(result.stdout.strip().splitlines()[-1])})

    load_after = os.getloadavg()[0]
    arguments = " ".join(shlex.quote(argument) for argument in (argv or sys.argv[1:]))
    command = f"python benchmarks/bench_animate.py {arguments}"
    source = f"`{args.model}`" if args.model else f"random weights from `{args.config}` (model and motion stage)"
    duration = load_audio(long_audio).seconds
    rows = [
        f"| {item['sequence']} | {item['frames']} | {item['true_sync']:.2f} | {item['generated_sync']:.2f} | "
        f"{item['generated_change'] / max(item['true_change'], 1e-12):.2f} | {item['depth_errors'][0][0]:.4f} | "
        f"{item['depth_errors'][0].mean():.4f} | {item['depth_errors'][1].mean():.4f} |"
        for item in quality
    ]
    per_frame = [item["seconds"] / item["frames"] for item in scaling]
    return "\n".join(
        [
            "# Talking-head animation: lip sync, stability, speed",
            "",
            f"Command: `{command.strip()}`  ",
            f"Model: {source}; {model.resolution} px, {model.default_steps} default steps, windows of {window} "
            f"frames with {model.motion.config.motion_frames} motion frames, {fps:g} fps.  ",
            f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
            f"torch {torch.__version__}, float32, CPU; load average {load_before:.1f} at the start and "
            f"{load_after:.1f} at the end (the machine was shared, so timings vary by that much).",
            "",
            f"## Quality on {len(quality)} synthetic talking sequences (seed {BENCHMARK_SEED}, "
            f"{args.quality_steps} denoising steps)",
            "",
            "Lip sync: correlation of the audio loudness with the mouth opening read from depth (true: the "
            "rendered sequence itself). Stability: frame-to-frame depth change, generated over true.",
            "",
            f"Mouth sheet: [`{sheet.name}`]({sheet.name}), each sequence's {SHEET_FRAMES} quietest and "
            f"{SHEET_FRAMES} loudest frames after the first window (true RGB, generated RGB, generated depth).",
            "",
            "Depth AbsRel: at frame 0 (the reference's pose) and over all frames; the first true frame held still "
            "for comparison.",
            "",
            "| sequence | frames | lip sync, true | lip sync, generated | depth change, generated / true | "
            "depth AbsRel, frame 0 | depth AbsRel, all frames | true frame 0 held still |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "## Speed",
            "",
            f"Animating `{reference.name}` as `animate` does by default"
            f"{' (mouth only where a face is found)' if model.motion.config.mouth_only else ''}.",
            "",
            f"- Default settings ({model.default_steps} steps, guidance 2, one window of {default_frames} frames): "
            f"**{default_frames / default_seconds:.3f} frames/s** ({default_seconds:.1f} s).",
            f"- Motion-stage training step ({step_clips} clips × {step_frames} frames, forward + backward + "
            f"AdamW): {step_seconds:.2f} s (median of 3).",
            "",
            f"## Growth with the audio's length (1 denoising step, no guidance; {duration:g} s track, each length "
            "in a fresh process)",
            "",
            "| audio (s) | frames | seconds | seconds per frame | peak resident memory (MiB) |",
            "|---:|---:|---:|---:|---:|",
            *[
                f"| {item['audio_seconds']:g} | {item['frames']} | {item['seconds']:.1f} | {rate:.3f} | "
                f"{item['peak_mb']:.0f} |"
                for item, rate in zip(scaling, per_frame)
            ],
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
