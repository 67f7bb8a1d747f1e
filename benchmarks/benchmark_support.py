"""What every benchmark and study script here shares: the command that produced a result, the machine it ran on,
and writing its Markdown and PNG results whole (temporary file, then rename).

Scripts run from the repository root as `python benchmarks/NAME.py`, which puts this folder on `sys.path`.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import sys
from pathlib import Path

import torch

from rgbd_portrait.devices import resolve_device
from rgbd_portrait.evaluation.runner import describe_device
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.pipelines import RGBDPortraitPipeline


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as a user types it from the repository root, e.g. `python benchmarks/study_steps.py --limit 4`."""
    arguments = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(shlex.quote(argument) for argument in arguments)])


def machine_line(device: torch.device | str) -> str:
    """Device, torch version and, on the CPU, the load of the machine while the numbers were taken."""
    line = f"{describe_device(device)}, torch {torch.__version__}"
    if torch.device(device).type == "cpu":
        one_minute, _, _ = os.getloadavg()
        line += f", {os.cpu_count()} cores, load average {one_minute:.1f} at the end of the run"
    return line


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every study of a trained model takes (model, data, size of the run, device)."""
    parser.add_argument("--model", default="runs/studies/joint_vs_separate/variant0/joint/model")
    parser.add_argument("--data", default="datasets/study-studio-32")
    parser.add_argument("--limit", type=int, help="test samples evaluated (default all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")


def load_study_pipeline(args: argparse.Namespace) -> RGBDPortraitPipeline:
    """The pipeline of `--model` on `--device`, quiet, with `--threads` set."""
    torch.set_num_threads(args.threads)
    pipeline = RGBDPortraitPipeline.from_pretrained(args.model).to(resolve_device(args.device))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def write_markdown(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomically(path, text.encode())


def write_figure(path: str | os.PathLike, figure) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return write_bytes_atomically(path, buffer.getvalue())


def new_figure(columns: int = 1, *, width: float = 5.0, height: float = 3.6):
    """A figure with `columns` side-by-side axes, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return figure, list(axes[0])


def process_status_bytes(field: str) -> int:
    """A memory field of this process's /proc/self/status (Linux), in bytes: VmRSS now, VmHWM its peak since
    start or since the last reset. Unlike `getrusage`'s ru_maxrss, VmHWM does not carry over the peak of the
    process that spawned this one (ru_maxrss survives fork and exec)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024
