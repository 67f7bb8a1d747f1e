"""Choosing the torch device from a user's word for it."""

from __future__ import annotations

import torch

from rgbd_portrait.errors import UserInputError


def resolve_device(name: str) -> torch.device:
    """`auto` = CUDA, else Apple's MPS, else the CPU; an unavailable accelerator is a one-line error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("--device mps: Apple's MPS is not available on this machine")
    return torch.device(name)
