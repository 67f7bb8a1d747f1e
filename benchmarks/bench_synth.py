"""Synthetic studio speed: samples per second with every output written (rgb, depth, mask, normals, albedo,
relit images, meta.json), and the rendering alone.

    python benchmarks/bench_synth.py                    # 128 px, 2 relights, 64 samples, 2 then 1 torch threads
    python benchmarks/bench_synth.py --size 256 --threads 2 --out /tmp/synth_speed.md

Run from the repository root. Writes a Markdown table to benchmarks/results/synth_speed.md (or --out) and
prints it. Each measurement is repeated (after a warm-up in the first configuration); the table gives the
median and the best rate per wall-clock second, and the rate per CPU-second used (workers included). The
load average is recorded: other processes on the same cores slow the wall-clock rate, while the rate per
CPU-second of one thread is what one dedicated core would do.

"render and write every output" is `render_dataset` (rgb, depth, mask, normals, albedo, relit images and
meta.json per sample); "render only" is `render_samples` in memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rgbd_portrait.data.synth import StudioOptions, render_dataset, render_samples, still_view, studio_identity
from rgbd_portrait.files import write_bytes_atomically


def cpu_seconds() -> float:
    """User and system time of this process and of its finished child processes (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_dataset(arguments: argparse.Namespace, directory: Path, *, workers: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds to render and write a data set of `arguments.samples` samples."""
    out = directory / "set"
    shutil.rmtree(out, ignore_errors=True)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    render_dataset(
        out,
        identities=arguments.samples // arguments.samples_per_identity,
        samples_per_identity=arguments.samples_per_identity,
        size=arguments.size,
        relights=arguments.relights,
        seed=arguments.seed,
        device=arguments.device,
        batch_size=arguments.batch_size,
        workers=workers,
        show_progress=False,
    )
    return time.perf_counter() - start, cpu_seconds() - cpu_start


def time_rendering(arguments: argparse.Namespace) -> tuple[float, float]:
    """Wall-clock and CPU seconds to render the same views in memory (no encoding, no files)."""
    options = StudioOptions(
        identities=arguments.samples // arguments.samples_per_identity,
        samples_per_identity=arguments.samples_per_identity,
        size=arguments.size,
        relights=arguments.relights,
        seed=arguments.seed,
    )
    views = [
        still_view(options, studio_identity(arguments.seed, identity), identity, sample)
        for identity in range(options.identities)
        for sample in range(options.samples_per_identity)
    ]
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for first in range(0, len(views), arguments.batch_size):
        render_samples(views[first : first + arguments.batch_size], device=arguments.device)
    if arguments.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, cpu_seconds() - cpu_start


def rates(arguments: argparse.Namespace, timings: list[tuple[float, float]]) -> str:
    """Samples per wall-clock second (median, best) and per CPU-second of this process (median)."""
    wall = [seconds for seconds, _ in timings]
    cpu = statistics.median(cpu_seconds for _, cpu_seconds in timings)
    return (
        f"{arguments.samples / statistics.median(wall):.1f} | {arguments.samples / min(wall):.1f} | "
        f"{arguments.samples / cpu:.1f}"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--relights", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64, help="samples per repeat")
    parser.add_argument("--samples-per-identity", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch CPU threads to try")
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each) for the last row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/synth_speed.md")
    arguments = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_synth.") as directory:
        for threads in arguments.threads:
            torch.set_num_threads(threads)
            time_dataset(arguments, Path(directory), workers=1)  # warm-up
            written = [time_dataset(arguments, Path(directory), workers=1) for _ in range(arguments.repeats)]
            rendered = [time_rendering(arguments) for _ in range(arguments.repeats)]
            rows.append(
                f"| 1 process, {threads} threads | render and write every output | {rates(arguments, written)} |"
            )
            rows.append(f"| 1 process, {threads} threads | render only, in memory | {rates(arguments, rendered)} |")
        if arguments.workers > 1:
            written = [
                time_dataset(arguments, Path(directory), workers=arguments.workers) for _ in range(arguments.repeats)
            ]
            label = f"{arguments.workers} worker processes, 1 thread each"
            rows.append(f"| {label} | render and write every output | {rates(arguments, written)} |")
    load_after = os.getloadavg()

    command = " ".join(shlex.quote(part) for part in ["python", *sys.argv])
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    table = "\n".join(
        [
            "# Synthetic studio speed",
            "",
            f"Command: `{command}` (environment: OMP_WAIT_POLICY={wait_policy})",
            "",
            f"{arguments.size}×{arguments.size} px, {arguments.relights} relit images per sample, "
            f"batches of {arguments.batch_size}, {arguments.samples} samples per repeat, {arguments.repeats} "
            f"repeats after a warm-up; device {arguments.device}.",
            "",
            "| configuration | measurement | samples/s (median) | samples/s (best) | samples per CPU-second |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}. Load average (1, 5, 15 min) before: "
            f"{', '.join(f'{value:.1f}' for value in load_before)}; after: "
            f"{', '.join(f'{value:.1f}' for value in load_after)}.",
            "",
        ]
    )
    write_bytes_atomically(arguments.out, table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
