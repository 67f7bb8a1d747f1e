"""Scale: time and peak memory of one denoising step against resolution and batch, per model config.

    python benchmarks/bench_scale.py                                    # the default cases below, on the CPU
    python benchmarks/bench_scale.py --device cuda --case configs/sd15.yaml:256,512,768:1,4 \
        --out benchmarks/results/scale_gpu.md

Run from the repository root. A case is CONFIG:RESOLUTIONS:BATCHES (comma-separated); each config is built once
with random weights (the timing does not depend on them). One step is one backbone call with reference
attention (image→depth task, no guidance: `RGBDPortraitModel.denoise`); the reference net runs once per sampling
call and is timed separately. Peak memory is the growth over the memory held before the call: on CUDA from
`torch.cuda.max_memory_allocated`, on the CPU (Linux, glibc) from the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs before each measurement). Writes a Markdown table and a PNG.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark_support import (
    command_line,
    machine_line,
    new_figure,
    process_status_bytes,
    resolve_device,
    write_figure,
    write_markdown,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.results import format_markdown_table
from rgbd_portrait.evaluation.speed import time_call
from rgbd_portrait.models import RGBDPortraitModel, read_model_section

# CPU-sized by default: SD 1.5 only at small sizes (one step at 512 px takes tens of seconds on two cores).
DEFAULT_CASES = (
    "configs/default.yaml:64,128,256:1,4",
    "configs/tiny.yaml:64,128,256:1,4",
    "configs/sd15.yaml:128,256:1",
)
MIB = 2**20
# mallopt's parameter number for the size from which glibc maps allocations separately (malloc.h).
M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class Case:
    config: str
    resolutions: tuple[int, ...]
    batches: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Case:
        try:
            config, resolutions, batches = text.rsplit(":", 2)
            return cls(config, tuple(map(int, resolutions.split(","))), tuple(map(int, batches.split(","))))
        except ValueError:
            raise UserInputError(f"--case {text!r}: expected CONFIG:RES,RES,...:BATCH,BATCH,...") from None


class PeakMemory:
    """Peak memory growth of the code run between `start()` and `stop()`, in bytes.

    On the CPU the resident set only follows the live tensors if freed memory goes back to the system: glibc is
    told to serve every allocation of 64 KiB or more by its own mapping (released on free) and to trim its heap
    before each measurement.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cpu":
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self.baseline = process_status_bytes("VmRSS")

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        return process_status_bytes("VmHWM") - self.baseline


@torch.no_grad()
def measure(model: RGBDPortraitModel, *, resolution: int, batch: int, repeats: int, device: torch.device) -> dict:
    """Seconds and peak memory growth (MiB) of one reference-net run and of one backbone step."""
    factor = model.codec.downscale_factor
    if resolution % factor:
        raise UserInputError(f"resolution {resolution} is not a multiple of the VAE's factor {factor}")
    size = resolution // factor
    channels = model.latent_channels
    dtype = model.backbone.dtype
    generator = torch.Generator().manual_seed(0)
    reference_latents = torch.randn(batch, channels, size, size, generator=generator).to(device, dtype)
    noisy = torch.randn(batch, 2 * channels, size, size, generator=generator).to(device, dtype)
    known = torch.randn(batch, 2 * channels, size, size, generator=generator).to(device, dtype)
    timestep = torch.full((batch,), 500, device=device)
    memory = PeakMemory(device)
    encode = lambda: model.encode_reference(reference_latents)
    reference_seconds = time_call(encode, device=device, repeats=repeats)
    reference = encode()
    step = lambda: model.denoise(noisy, timestep, known=known, task="image_to_depth", reference=reference)
    step_seconds = time_call(step, device=device, repeats=repeats)
    # Memory after the timed calls, so that one-time allocations of a first call are not counted.
    memory.start()
    encode()
    reference_memory = memory.stop()
    memory.start()
    step()
    step_memory = memory.stop()
    return {
        "step s": statistics.median(step_seconds),
        "step s / image": statistics.median(step_seconds) / batch,
        "step peak MiB": step_memory / MIB,
        "reference net s": statistics.median(reference_seconds),
        "reference net peak MiB": reference_memory / MIB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help=f"CONFIG:RESOLUTIONS:BATCHES (default: {DEFAULT_CASES})")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per setting (after a warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/scale.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cases = [Case.parse(text) for text in (args.case or DEFAULT_CASES)]

    rows, weights = {}, {}
    for case in cases:
        section = read_model_section(case.config)
        section.pop("stable_diffusion", None)  # the architecture only: random weights
        torch.manual_seed(0)
        model = RGBDPortraitModel.from_config(section, source=case.config).eval().to(device)
        weights[case.config] = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
        for batch in case.batches:
            for resolution in case.resolutions:
                result = measure(model, resolution=resolution, batch=batch, repeats=args.repeats, device=device)
                name = f"{Path(case.config).stem} {resolution} px × {batch}"
                rows[name] = {"config": case.config, "resolution": resolution, "batch": batch, **result}
                print(f"{name}: {result['step s']:.3f} s/step, {result['step peak MiB']:.0f} MiB", flush=True)
        del model

    weight_lines = [f"- `{config}`: {size:,.0f} MiB of weights (float32)" for config, size in weights.items()]
    report = "\n".join(
        [
            "# Scale: one denoising step against resolution and batch",
            "",
            f"Command: `{command_line(__file__, argv)}`  ",
            f"Machine: {machine_line(device)}; random weights, float32; median of "
            f"{args.repeats} calls after a warm-up.",
            "",
            "A step is one backbone call with reference attention (no guidance; classifier-free guidance doubles "
            "it). The reference net runs once per sampling call. Peak MiB: growth over the memory held before the "
            "call (weights excluded).",
            "",
            *weight_lines,
            "",
            format_markdown_table(
                {name: {key: value for key, value in row.items() if key != "config"} for name, row in rows.items()},
                row_heading="config, size × batch",
                digits=3,
            ),
        ]
    )
    write_markdown(args.out, report)
    plot(rows, Path(args.out).with_suffix(".png"))
    print(report)
    return 0


def plot(rows: dict[str, dict], path: Path) -> None:
    figure, (time_axis, memory_axis) = new_figure(2)
    series: dict[str, list[dict]] = {}
    for row in rows.values():
        series.setdefault(f"{Path(row['config']).stem}, batch {row['batch']}", []).append(row)
    for label, points in series.items():
        resolutions = [point["resolution"] for point in points]
        time_axis.plot(resolutions, [point["step s / image"] for point in points], marker="o", label=label)
        memory_axis.plot(resolutions, [point["step peak MiB"] for point in points], marker="o", label=label)
    for axis, label in ((time_axis, "seconds per step per image"), (memory_axis, "peak memory growth, MiB")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("resolution (px)")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    figure.suptitle("One denoising step against resolution")
    write_figure(path, figure)


if __name__ == "__main__":
    sys.exit(main())
