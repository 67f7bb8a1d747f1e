"""Training speed: steps/s and samples/s of each stage, with and without latent caching.

    python benchmarks/bench_training.py                              # configs/tiny.yaml on this machine's CPU
    python benchmarks/bench_training.py --config configs/default.yaml --stages motion --batch-size 4 \
        --out benchmarks/results/training_speed_motion.md           # the motion stage, cached and not
    python benchmarks/bench_training.py --config configs/sd15.yaml --mixed-precision bf16 --batch-size 4 \
        --out benchmarks/results/training_speed_sd15.md           # on a GPU: adds peak memory

Run from the repository root. Renders a small synthetic data set at the model's resolution (or uses
--data), trains each variant through the real trainer (`Trainer`) and reports the median wall-clock step
time after --warmup steps (from the trainer's own logs) and the process CPU seconds per step (other
processes on a shared machine inflate it less than the wall time, but OpenMP threads that spin while waiting
for a core still count). Writes a Markdown table to benchmarks/results/training_speed.md (or
--out) and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rgbd_portrait.data.synth import render_dataset
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.training import Trainer, load_config

# (label, stage, overrides)
VARIANTS = (
    ("codec stage", "codec", []),
    ("joint stage, VAE encoding every step", "joint", ["data.cache_latents=false"]),
    ("joint stage, cached latents", "joint", ["data.cache_latents=true"]),
    ("motion stage, VAE encoding every step", "motion", ["data.cache_latents=false"]),
    ("motion stage, cached frame latents", "motion", ["data.cache_latents=true"]),
)


def run_steps(config_path: str, overrides: list[str], stage: str, steps: int, output_dir: Path):
    """Train `steps` steps of `stage`; returns the config, the log rows and the process CPU seconds taken."""
    config = load_config(
        config_path,
        [
            *overrides,
            f"train.output_dir={output_dir}",
            f"train.stages=[{stage}]",
            f"train.{stage}.max_steps={steps}",
            f"train.{stage}.checkpoint_every=0",
            f"train.{stage}.validate_every=0",
            "train.log_every=1",
        ],
    )
    cpu_started = time.process_time()
    Trainer(config, show_progress=False).run()
    return config, trainer_rows(output_dir, stage), time.process_time() - cpu_started


def measure(
    config_path: str, overrides: list[str], stage: str, *, steps: int, warmup: int, scratch: Path
) -> dict[str, float]:
    """Median wall seconds per step after `warmup` steps; CPU seconds per step (the CPU time of a run of
    `warmup + steps` steps minus that of a run of `warmup` steps, which cancels the set-up costs); the peak
    GPU memory when on CUDA."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _, _, warmup_cpu = run_steps(config_path, overrides, stage, warmup, scratch / "warmup")
    config, rows, total_cpu = run_steps(config_path, overrides, stage, warmup + steps, scratch / "measured")
    stage_config = config.stage(stage)
    result = {
        "crop_size": getattr(stage_config, "crop_size", None),
        "seconds_per_step": statistics.median(1.0 / row["steps_per_second"] for row in rows[warmup:]),
        "cpu_seconds_per_step": (total_cpu - warmup_cpu) / steps,
        "batch": stage_config.batch_size * stage_config.gradient_accumulation_steps,
    }
    if torch.cuda.is_available():
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def trainer_rows(output_dir: Path, stage: str) -> list[dict]:
    import json

    return [json.loads(line) for line in (output_dir / stage / "logs" / "train.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--data", help="existing data folder (default: render one)")
    parser.add_argument("--identities", type=int, default=12, help="identities of the rendered data set")
    parser.add_argument("--resolution", type=int, help="image side (default: the model's)")
    parser.add_argument("--stages", default="codec,joint", help="stages measured, comma-separated (codec,joint,motion)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-process batch size (clips for motion)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="steps not measured")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/training_speed.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stages = args.stages.split(",")
    variants = [variant for variant in VARIANTS if variant[1] in stages]
    if not variants:
        parser.error(f"--stages {args.stages}: expected some of codec, joint, motion")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        scratch = Path(scratch)
        data_root = args.data
        if data_root is None:
            data_root = scratch / "studio"
            resolution = args.resolution or load_config(args.config).model.get("resolution", 128)
            sequences = 2 if "motion" in stages else 0
            render_dataset(
                data_root,
                identities=args.identities,
                samples_per_identity=4,
                size=resolution,
                relights=0,
                sequences=sequences,
                val_fraction=0.0,
                test_fraction=0.0,
            )
        common = [
            f"data.root={data_root}",
            f"train.mixed_precision={args.mixed_precision}",
            "data.validation_samples=0",
        ]
        if args.resolution:
            common.append(f"data.resolution={args.resolution}")
        results = []
        for index, (label, stage, overrides) in enumerate(variants):
            run_overrides = [*common, *overrides, f"train.{stage}.batch_size={args.batch_size}"]
            result = measure(
                args.config, run_overrides, stage, steps=args.steps, warmup=args.warmup, scratch=scratch / str(index)
            )
            results.append((label, result))
            print(f"{label}: {result['seconds_per_step']:.3f} s/step", file=sys.stderr)

    load_after = os.getloadavg()[0]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} torch threads"
    lines = [
        f"# Training speed: `{args.config}`",
        "",
        f"Command: `python {shlex.join(['benchmarks/bench_training.py', *sys.argv[1:]])}`  ",
        f"Machine: {platform.machine()}, {device}, torch {torch.__version__}, mixed precision {args.mixed_precision}, "
        f"batch {args.batch_size} per step, median of {args.steps} steps after {args.warmup} warm-up steps. "
        f"Load average {load_before:.1f} before, {load_after:.1f} after (the machine is shared: a load above the "
        f"core count slows every variant).",
        "",
        "| variant | s/step | steps/s | samples/s | CPU s/step |"
        + (" peak GiB |" if torch.cuda.is_available() else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if torch.cuda.is_available() else ""),
    ]
    for label, result in results:
        seconds = result["seconds_per_step"]
        if result["crop_size"]:
            label += f" ({result['crop_size']}-px crops)"
        row = (
            f"| {label} | {seconds:.3f} | {1 / seconds:.2f} | {result['batch'] / seconds:.1f} "
            f"| {result['cpu_seconds_per_step']:.2f} |"
        )
        if "peak_gib" in result:
            row += f" {result['peak_gib']:.1f} |"
        lines.append(row)
    table = "\n".join(lines) + "\n"
    write_bytes_atomically(args.out, table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
