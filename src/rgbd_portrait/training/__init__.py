"""Training: configs, the Accelerate trainer (codec and joint stages), checkpoints and exact resume.

    from rgbd_portrait.training import load_config, train
    final_model = train(load_config("configs/tiny.yaml", ["train.joint.max_steps=100"]))

`Trainer` gives access to the trained model after `run()`; `TrainingDivergedError` reports a NaN loss.
"""

from __future__ import annotations

from pathlib import Path

from rgbd_portrait.training.config import ExperimentConfig, load_config
from rgbd_portrait.training.trainer import Trainer, TrainingDivergedError, plan_run


def train(config: ExperimentConfig, *, show_progress: bool = True) -> Path:
    """Run the configured stages; returns the final model folder of the last stage."""
    return Trainer(config, show_progress=show_progress).run()


__all__ = ["ExperimentConfig", "Trainer", "TrainingDivergedError", "load_config", "plan_run", "train"]
