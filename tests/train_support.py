"""Shared by the training tests: a tiny rendered data set and a tiny-model config file."""

from pathlib import Path

from omegaconf import OmegaConf

from rgbd_portrait.data.synth import render_dataset
from rgbd_portrait.models.testing import tiny_model_section

RESOLUTION = 16  # the tiny model's default: 8×8 latents


def render_tiny_dataset(root: Path, *, identities: int = 4, samples_per_identity: int = 2, val: bool = False) -> Path:
    """`identities × samples_per_identity` training samples (plus a validation split when `val`)."""
    render_dataset(
        root,
        identities=identities + (2 if val else 0),
        samples_per_identity=samples_per_identity,
        size=RESOLUTION,
        relights=0,
        val_fraction=2 / (identities + 2) if val else 0.0,
        test_fraction=0.0,
        seed=0,
        show_progress=False,
    )
    return root


def write_tiny_config(path: Path, *, data_root: Path, output_dir: Path, train: dict | None = None) -> Path:
    """A config with the tiny model, logging every step, no validation or checkpoints unless `train` says so."""
    stage_defaults = {"batch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 0, "validate_every": 0}
    train_section = {
        "output_dir": str(output_dir),
        "log_every": 1,
        "codec": dict(stage_defaults),
        "joint": dict(stage_defaults),
    }
    for key, value in (train or {}).items():
        if isinstance(value, dict):
            train_section[key] = train_section.get(key, {}) | value
        else:
            train_section[key] = value
    OmegaConf.save({"model": tiny_model_section(), "data": {"root": str(data_root)}, "train": train_section}, path)
    return path


def read_losses(output_dir: Path, stage: str) -> list[float]:
    import json

    path = output_dir / stage / "logs" / "train.jsonl"
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]
