"""Building components without a random initialisation, and filling them from state dicts strictly.

A Stable Diffusion UNet has ~860 M parameters; initialising it randomly only to overwrite every weight costs
seconds and doubles peak memory. Components are therefore built with empty (meta) parameters and receive
their tensors by assignment, after a check that the keys and shapes match exactly: a missing or unexpected key
is a one-line `UserInputError` naming the source and the keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import safetensors.torch
import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError

from rgbd_portrait.errors import UserInputError

# How many key names an error message lists before summarising the rest.
LISTED_KEYS = 5


@contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside get parameters on the meta device; buffers stay real (some are not saved)."""
    with init_empty_weights(include_buffers=False):
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _list_keys(keys: set[str]) -> str:
    ordered = sorted(keys)
    listed = ", ".join(ordered[:LISTED_KEYS])
    return listed + (f" (+{len(ordered) - LISTED_KEYS} more)" if len(ordered) > LISTED_KEYS else "")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; a missing, corrupt or truncated file is a UserInputError."""
    try:
        return safetensors.torch.load_file(os.fspath(path))
    except FileNotFoundError as error:
        raise UserInputError(f"{path}: weights file not found") from error
    except (SafetensorError, OSError, ValueError) as error:
        raise UserInputError(f"{path}: corrupt or truncated safetensors file ({_first_line(error)})") from error


def check_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Refuse `state_dict` for `module` unless its keys and shapes are exactly the module's, naming the missing
    and unexpected keys or the first wrong shape. `source` names where the weights come from (a file, usually)."""
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_list_keys(unexpected)}")
    if problems:
        raise UserInputError(f"{source}: {'; '.join(problems)}")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UserInputError(
                f"{source}: {key} has shape {tuple(state_dict[key].shape)}, the model expects {tuple(tensor.shape)}"
            )


def assign_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Give `module` exactly the tensors of `state_dict` (no copy), after `check_weights`."""
    check_weights(module, state_dict, source=source)
    module.load_state_dict(state_dict, strict=True, assign=True)


def cloned_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict whose tensors own their memory, for giving a copy of `module`'s weights to another module."""
    return {key: tensor.detach().clone() for key, tensor in module.state_dict().items()}
