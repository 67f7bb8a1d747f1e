"""Exponential moving average of the trained weights, keyed by parameter name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ExponentialMovingAverage:
    """`shadow ← decay·shadow + (1 − decay)·weight` after each update.

    The effective decay ramps up as `min(decay, (1 + n) / (10 + n))` over the first updates so that the
    average is not dominated by the random initial weights (the usual warm-up of diffusion trainers).
    """

    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], *, decay: float):
        self.decay = decay
        self.updates = 0
        self.parameters = dict(named_parameters)
        self.shadow = {name: parameter.detach().clone().float() for name, parameter in named_parameters}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        # One multi-tensor call instead of a Python loop over the parameters (1,700 tensors at SD 1.5 scale): the
        # same arithmetic, without a kernel launch and an interpreter round trip per tensor on a GPU.
        shadows = [self.shadow[name] for name in self.parameters]
        weights = [parameter.detach().float() for parameter in self.parameters.values()]
        torch._foreach_lerp_(shadows, weights, 1.0 - decay)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (for saving or validation)."""
        originals = {name: parameter.detach().clone() for name, parameter in self.parameters.items()}
        try:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(self.shadow[name])
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(originals[name])

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return dict(self.shadow), {"decay": self.decay, "updates": self.updates}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict) -> None:
        if set(tensors) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(tensors))
            unexpected = sorted(set(tensors) - set(self.shadow))
            raise KeyError(f"EMA state does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for name, tensor in tensors.items():
            self.shadow[name].copy_(tensor)
        self.updates = int(values["updates"])
