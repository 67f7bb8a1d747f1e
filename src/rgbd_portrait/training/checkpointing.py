"""Training checkpoints: atomic folders, the last K kept, no pickle.

Layout of `<output_dir>/<stage>/checkpoints/checkpoint-00000500/`::

    model/                    the model's own `save_pretrained` folder (loadable on its own)
    optimizer.safetensors     optimizer tensors, keyed "<parameter name>/<field>"
    optimizer.json            optimizer hyper-parameters and scalars
    ema.safetensors           EMA weights by parameter name (when EMA is on)
    training_only.safetensors the stage's training-only network (the codec's discriminator, when it has one)
    rng/rank-<r>.safetensors  torch (and CUDA) generator states of process r
    rng/rank-<r>.json         python and numpy generator states of process r
    training_state.json       stage, step, samples consumed, LR schedule, grad scaler, EMA counters

Every process writes its own random state into a temporary folder (with a name every process can derive),
then process 0 writes the rest and renames the folder into place, so a checkpoint either exists completely
or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import replace_folder
from rgbd_portrait.models.weights import check_weights
from rgbd_portrait.training.seeding import capture_rng_state, restore_rng_state

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
MODEL_FOLDER = "model"
# A stage's network trained beside the model but not part of it (the codec's discriminator).
TRAINING_ONLY_FILE = "training_only.safetensors"


@dataclass
class TrainingState:
    """What a checkpoint records about the run besides tensors."""

    stage: str
    step: int  # optimizer updates completed in this stage
    samples_consumed: int  # training samples drawn by all processes together
    world_size: int
    seed: int
    lr_scheduler: dict[str, Any] = field(default_factory=dict)
    grad_scaler: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def is_checkpoint(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / STATE_FILE).is_file() and (directory / MODEL_FOLDER).is_dir()


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in a folder, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = [path for path in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*") if is_checkpoint(path)]
    return sorted(found, key=lambda path: path.name)


def read_training_state(directory: str | os.PathLike) -> TrainingState:
    path = Path(directory) / STATE_FILE
    if not Path(directory).is_dir() or not is_checkpoint(directory):
        raise UserInputError(f"{directory}: not a training checkpoint (needs {STATE_FILE} and {MODEL_FOLDER}/)")
    try:
        return TrainingState(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise UserInputError(f"{path}: cannot read training state ({error})") from error


def _save_json(path: Path, values: Any) -> None:
    path.write_text(json.dumps(values, indent=1) + "\n")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:
        raise UserInputError(f"{path}: cannot read tensors ({error})") from error


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: cannot read ({error})") from error


class CheckpointWriter:
    """Writes checkpoints of one stage and prunes old ones.

    `barrier` synchronises the processes (a no-op for one process); `rank` 0 does the shared work.
    """

    def __init__(self, checkpoints_dir: Path, *, rank: int, barrier: Callable[[], None], keep: int):
        self.checkpoints_dir = checkpoints_dir
        self.rank = rank
        self.barrier = barrier
        self.keep = keep

    def _temporary(self, step: int) -> Path:
        return self.checkpoints_dir / f".{checkpoint_name(step)}.tmp"

    def save(
        self,
        state: TrainingState,
        *,
        save_model: Callable[[Path], None],
        optimizer_files: Callable[[], tuple[dict[str, torch.Tensor], dict]],
        ema_tensors: dict[str, torch.Tensor] | None,
        training_only: dict[str, torch.Tensor] | None = None,
    ) -> Path | None:
        """Write a checkpoint for `state.step`; every process must call this. Returns the folder on rank 0."""
        temporary = self._temporary(state.step)
        final = self.checkpoints_dir / checkpoint_name(state.step)
        if self.rank == 0:
            shutil.rmtree(temporary, ignore_errors=True)
            (temporary / "rng").mkdir(parents=True)
        self.barrier()
        tensors, values = capture_rng_state()
        save_file(tensors, temporary / "rng" / f"rank-{self.rank}.safetensors")
        _save_json(temporary / "rng" / f"rank-{self.rank}.json", values)
        self.barrier()
        if self.rank == 0:
            try:
                save_model(temporary / MODEL_FOLDER)
                optimizer_tensors, optimizer_values = optimizer_files()
                save_file(optimizer_tensors, temporary / "optimizer.safetensors")
                _save_json(temporary / "optimizer.json", optimizer_values)
                if ema_tensors is not None:
                    save_file(
                        {name: tensor.contiguous() for name, tensor in ema_tensors.items()},
                        temporary / "ema.safetensors",
                    )
                if training_only is not None:
                    save_file(
                        {name: tensor.contiguous() for name, tensor in training_only.items()},
                        temporary / TRAINING_ONLY_FILE,
                    )
                _save_json(temporary / STATE_FILE, asdict(state))
                replace_folder(temporary, final)
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
            for old in list_checkpoints(self.checkpoints_dir)[: -self.keep]:
                shutil.rmtree(old)
        self.barrier()
        return final if self.rank == 0 else None


@dataclass
class CheckpointContents:
    """The non-model parts of a checkpoint, read back for resuming."""

    state: TrainingState
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_values: dict
    ema_tensors: dict[str, torch.Tensor] | None
    training_only_tensors: dict[str, torch.Tensor] | None


def read_checkpoint(directory: str | os.PathLike) -> CheckpointContents:
    directory = Path(directory)
    state = read_training_state(directory)
    ema_path, training_only_path = directory / "ema.safetensors", directory / TRAINING_ONLY_FILE
    return CheckpointContents(
        state=state,
        optimizer_tensors=_read_tensors(directory / "optimizer.safetensors"),
        optimizer_values=_read_json(directory / "optimizer.json"),
        ema_tensors=_read_tensors(ema_path) if ema_path.is_file() else None,
        training_only_tensors=_read_tensors(training_only_path) if training_only_path.is_file() else None,
    )


def load_training_only(module: torch.nn.Module, tensors: dict[str, torch.Tensor] | None, *, source: str) -> None:
    """Load a stage's training-only network (e.g. the codec's discriminator) from its checkpoint tensors,
    strictly: a checkpoint without them, or with other keys or shapes, is refused by name. Copied into the
    module's own parameters, which the optimizer already holds."""
    if tensors is None:
        raise UserInputError(f"train.resume: {source} has no {TRAINING_ONLY_FILE}, but this stage trains one")
    check_weights(module, tensors, source=f"train.resume: {source}/{TRAINING_ONLY_FILE}")
    module.load_state_dict(tensors)


def restore_process_rng(directory: str | os.PathLike, rank: int) -> bool:
    """Restore this process's global random state; False when the checkpoint has none for `rank`."""
    base = Path(directory) / "rng" / f"rank-{rank}"
    tensors_path, values_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
    if not tensors_path.is_file():
        return False
    restore_rng_state(_read_tensors(tensors_path), _read_json(values_path))
    return True
