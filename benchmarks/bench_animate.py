"""Talking-head animation: lip sync and temporal stability on synthetic talking sequences, speed, and how time
and memory grow with the audio's length.

    python benchmarks/bench_animate.py                                  # random weights, configs/default.yaml
    python benchmarks/bench_animate.py --model runs/default/motion/model --quality-steps 20

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

Speed and scaling: frames per second with the model's default steps and guidance on one window, and, in a fresh
process per length (so peak memory is per run), the time and peak resident memory of animating 1–8 s of audio
with one denoising step (the loop per window is the same whatever the step count).
"""

from __future__ import annotations

import argparse
import copy
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
from rgbd_portrait.evaluation.metrics import depth_metrics
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.pipelines import RGBDPortraitPipeline
from rgbd_portrait.pipelines.animate import iter_animation, prepare_animation
from rgbd_portrait.training import load_config
from rgbd_portrait.training.motion_stage import MotionRecipe
from rgbd_portrait.training.validation import write_grid

MOUTH_FRACTION = 0.005  # of the pixels on the head in every frame
SHEET_FRAMES = 3  # quietest and loudest frames shown per sequence
BENCHMARK_SEED = 12345  # identities of another seed than the training data's (0)
SCALING_SECONDS = (1.0, 2.0, 4.0, 8.0)


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


def animate_sequence(pipeline: RGBDPortraitPipeline, sequence: Path, *, steps: int, folder: Path) -> dict:
    meta = read_meta(sequence)
    samples = [read_sample(frame, extras=False) for frame in sequence_frames(sequence)]
    depth, mask = true_depth_and_masks(samples)
    true_depth, head = true_unit_depth(depth, mask)
    reference = folder / f"{sequence.name}_reference.png"
    write_rgb_png(reference, samples[0].rgb)
    prepared = prepare_animation(pipeline, reference, sequence / meta["audio"], fps=meta["fps"])
    frames = min(prepared.frame_count, len(true_depth))
    chunks = list(
        iter_animation(
            pipeline,
            prepared,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            show_progress=False,
        )
    )
    generated = np.concatenate([chunk.depth[:, 0].numpy() for chunk in chunks])[:frames]
    generated_rgb = torch.cat([chunk.rgb for chunk in chunks])[:frames]
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
        "audio": torch.rand(clips, frames, model.motion.audio_window, model.motion.config.audio_feature_dim),
        "reference_rgb": torch.rand(clips, 3, side, side, generator=generator) * 2 - 1,
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
        report = run_benchmark(args, argv, work)
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
        animate_sequence(pipeline, sequence, steps=args.quality_steps, folder=work) for sequence in find_sequences(data)
    ]
    sheet = write_grid(mouth_sheet_path(args.out), [row for item in quality for row in item.pop("sheet_rows")])

    # Speed at the model's defaults, on one window.
    reference = work / f"{Path(quality[0]['sequence']).name}_reference.png"
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
