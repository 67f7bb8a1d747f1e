"""Parameter counts per component and the CPU time of one forward pass (with the reference), random weights.

    python benchmarks/bench_model_size.py                           # SD 1.5 architecture, 64×64 latents
    python benchmarks/bench_model_size.py --config configs/tiny.yaml --latent-size 32 --out /tmp/tiny.md

Run from the repository root. Writes a Markdown table to benchmarks/results/model_size.md (or --out) and
prints it. Not a CI test: the SD 1.5 model needs about 11 GB of memory and tens of seconds per pass on a few
CPU cores.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time

import torch

from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.models import RGBDPortraitModel, read_model_section


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def time_forward(model: RGBDPortraitModel, *, latent_size: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per repeat of `encode_reference`, of `denoise` with it and of `denoise` without a reference
    (batch 1, after one warm-up pass)."""
    channels = model.latent_channels
    reference_latents = torch.randn(1, channels, latent_size, latent_size)
    noisy = torch.randn(1, 2 * channels, latent_size, latent_size)
    known = torch.randn(1, 2 * channels, latent_size, latent_size)
    timestep = torch.tensor([500])
    times: dict[str, list[float]] = {"reference": [], "denoise": [], "plain": []}
    with torch.inference_mode():
        for repeat in range(repeats + 1):
            start = time.perf_counter()
            reference = model.encode_reference(reference_latents)
            after_reference = time.perf_counter()
            model.denoise(noisy, timestep, known=known, task="image_to_depth", reference=reference)
            after_denoise = time.perf_counter()
            model.denoise(noisy, timestep, known=known, task="image_to_depth")
            end = time.perf_counter()
            if repeat:  # the first pass warms up allocators and kernels
                times["reference"].append(after_reference - start)
                times["denoise"].append(after_denoise - after_reference)
                times["plain"].append(end - after_denoise)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sd15.yaml", help="YAML with a model: section")
    parser.add_argument("--latent-size", type=int, default=64, help="latent side (64 = 512 px for SD)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/model_size.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    section = read_model_section(args.config)
    section.pop("stable_diffusion", None)  # architecture only: random weights
    start = time.perf_counter()
    model = RGBDPortraitModel.from_config(section, source=args.config).eval()
    build_seconds = time.perf_counter() - start
    times = time_forward(model, latent_size=args.latent_size, repeats=args.repeats)

    components = {name: getattr(model, name) for name in ("backbone", "reference_net", "context", "vae")}
    rows = [f"| {name} | {count_parameters(module):,} |" for name, module in components.items()]
    rows.append(f"| **total** | **{count_parameters(model):,}** |")
    rows.append(f"| trainable (`model.denoiser`) | {count_parameters(model.denoiser):,} |")
    seconds = {name: statistics.median(values) for name, values in times.items()}
    command = "python benchmarks/bench_model_size.py " + " ".join(
        shlex.quote(argument) for argument in (argv or sys.argv[1:])
    )
    report = "\n".join(
        [
            f"# Model size and CPU forward time: `{args.config}`",
            "",
            f"Command: `{command.strip()}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, "
            f"torch {torch.__version__}, float32, batch 1, random weights (built in {build_seconds:.1f} s).",
            "",
            "| component | parameters |",
            "|---|---:|",
            *rows,
            "",
            f"One forward pass at {args.latent_size}×{args.latent_size} latents, median of {args.repeats} "
            f"after a warm-up:",
            "",
            "| step | seconds |",
            "|---|---:|",
            f"| reference net (`encode_reference`, once per sampling call) | {seconds['reference']:.2f} |",
            f"| backbone (`denoise` with reference attention, once per step) | {seconds['denoise']:.2f} |",
            f"| **both** | **{seconds['reference'] + seconds['denoise']:.2f}** |",
            f"| for comparison: backbone without a reference | {seconds['plain']:.2f} |",
            "",
        ]
    )
    write_bytes_atomically(args.out, report.encode())
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
