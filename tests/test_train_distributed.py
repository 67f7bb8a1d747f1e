"""Two-process data-parallel training on the CPU (gloo), launched as `torchrun` launches it."""

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from train_support import read_losses, render_tiny_dataset, write_tiny_config

WORKER = Path(__file__).with_name("train_ddp_worker.py")


def test_two_processes_train_together_and_end_with_identical_weights(tmp_path):
    data_root = render_tiny_dataset(tmp_path / "studio")
    config = write_tiny_config(
        tmp_path / "config.yaml",
        data_root=data_root,
        output_dir=tmp_path / "run",
        train={
            "stages": ["codec", "joint"],
            "codec": {"max_steps": 2, "batch_size": 2},
            "joint": {"max_steps": 3, "batch_size": 2, "checkpoint_every": 2, "ema_decay": 0.9},
        },
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*command, str(WORKER), str(config), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = [load_file(tmp_path / f"rank-{rank}-of-2.safetensors") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    # One log for the run (written by process 0), and each checkpoint holds both processes' random states.
    assert len(read_losses(tmp_path / "run", "joint")) == 3
    rng = tmp_path / "run" / "joint" / "checkpoints" / "checkpoint-00000002" / "rng"
    assert sorted(path.name for path in rng.iterdir()) == [
        "rank-0.json",
        "rank-0.safetensors",
        "rank-1.json",
        "rank-1.safetensors",
    ]
