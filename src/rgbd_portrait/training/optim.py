"""AdamW with a warm-up + constant/cosine learning-rate schedule, and their state without pickle.

Optimizer state is stored by parameter *name* (tensors in safetensors, the rest in JSON), so a checkpoint
does not depend on the order in which parameters were handed to the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.training.config import StageConfig


def learning_rate_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate for the update that follows `step` completed updates."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def build_optimizer(
    named_parameters: list[tuple[str, torch.nn.Parameter]], stage: StageConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the given parameters (no weight decay on biases and norms) and its schedule."""
    decayed = [parameter for name, parameter in named_parameters if parameter.ndim > 1]
    not_decayed = [parameter for name, parameter in named_parameters if parameter.ndim <= 1]
    # The fused kernel is ~10× faster than the per-tensor loop on CPUs (and faster on GPUs).
    fused = all(parameter.device.type in ("cpu", "cuda") for _, parameter in named_parameters)
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": stage.weight_decay},
            {"params": not_decayed, "weight_decay": 0.0},
        ],
        lr=stage.learning_rate,
        betas=(stage.adam_beta1, stage.adam_beta2),
        eps=stage.adam_epsilon,
        fused=fused,
    )
    factor: Callable[[int], float] = lambda step: learning_rate_factor(
        step, warmup_steps=stage.warmup_steps, max_steps=stage.max_steps, schedule=stage.lr_schedule
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _parameter_names(optimizer: torch.optim.Optimizer, named_parameters: list[tuple[str, torch.nn.Parameter]]):
    name_of = {id(parameter): name for name, parameter in named_parameters}
    return [name_of[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def optimizer_state_to_files(
    optimizer: torch.optim.Optimizer, named_parameters: list[tuple[str, torch.nn.Parameter]]
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for safetensors, JSON-ready dict) describing the optimizer's state."""
    state_dict = optimizer.state_dict()
    names = _parameter_names(optimizer, named_parameters)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, per_parameter in state_dict["state"].items():
        name = names[index]
        for key, value in per_parameter.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [
        {key: (list(value) if isinstance(value, tuple) else value) for key, value in group.items() if key != "params"}
        | {"params": [names[index] for index in group["params"]]}
        for group in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    named_parameters: list[tuple[str, torch.nn.Parameter]],
    tensors: dict[str, torch.Tensor],
    values: dict,
    *,
    source: str,
) -> None:
    names = _parameter_names(optimizer, named_parameters)
    index_of = {name: index for index, name in enumerate(names)}
    current_groups = optimizer.state_dict()["param_groups"]
    saved_groups = values["param_groups"]
    matches = len(saved_groups) == len(current_groups) and all(
        sorted(saved["params"]) == sorted(names[index] for index in current["params"])
        for saved, current in zip(saved_groups, current_groups)
    )
    if not matches:
        saved_names = {name for group in saved_groups for name in group["params"]}
        missing = sorted(set(names) - saved_names)
        unexpected = sorted(saved_names - set(names))
        raise UserInputError(
            f"{source}: optimizer state does not match the trained parameters "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        name, _, field = key.rpartition("/")
        state.setdefault(index_of[name], {})[field] = tensor
    for name, scalars in values["scalars"].items():
        state.setdefault(index_of[name], {}).update(scalars)
    # load_state_dict pairs saved and current parameters by position, so keep the current groups' order.
    groups = [
        {key: (tuple(value) if key == "betas" else value) for key, value in saved.items()}
        | {"params": current["params"]}
        for saved, current in zip(saved_groups, current_groups)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
