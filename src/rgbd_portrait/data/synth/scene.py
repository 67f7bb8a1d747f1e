"""What the renderer needs from a scene: per-sample parameters, a signed distance, an albedo, bounds.

A scene holds B samples (one per image). The renderer marches the rays of all B images together; every
ray carries the index of its sample, and the scene's parameters are gathered per ray (`Columns`), so one
call of `distance` evaluates many different heads at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

Points = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Columns:
    """Per-ray parameter values: one contiguous (M,) tensor per name."""

    def __init__(self, values: torch.Tensor, index: Mapping[str, int]):
        self.values = values  # (P, M)
        self.index = index

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[self.index[name]]

    def select(self, rays: torch.Tensor) -> Columns:
        """The columns of a subset of rays (indices or a boolean mask into M)."""
        if rays.dtype == torch.bool:
            rays = rays.nonzero().squeeze(1)
        return Columns(self.values.index_select(1, rays), self.index)

    def repeat(self, times: int) -> Columns:
        """The same rays `times` over, matching points concatenated `times` over."""
        return Columns(self.values.repeat(1, times), self.index)


class ParameterTable:
    """Named scalars per sample, stored as a (P, B) tensor so that a gather per ray is one operation."""

    def __init__(self, rows: Sequence[Mapping[str, float]], *, device: torch.device | str = "cpu"):
        names = list(rows[0])
        self.index = {name: position for position, name in enumerate(names)}
        self.values = torch.tensor([[row[name] for row in rows] for name in names], dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.values.shape[1]

    def any_nonzero(self, name: str) -> bool:
        return bool((self.values[self.index[name]] != 0).any())

    def columns(self, sample_index: torch.Tensor) -> Columns:
        return Columns(self.values.index_select(1, sample_index), self.index)


class Scene(Protocol):
    """B samples to render. Geometry lives in an object frame per sample (metres)."""

    parameters: ParameterTable
    # Camera → object frame: p_object = rotation @ p_camera + translation; (B, 3, 3) and (B, 3).
    rotation: torch.Tensor
    translation: torch.Tensor
    # Spheres (B, S, 4) = centre xyz, radius in the object frame whose union contains all geometry.
    bounding_spheres: torch.Tensor

    def distance(self, points: Points, parameters: Columns) -> torch.Tensor:
        """Signed distance (M,) at object-frame points, each with its sample's parameters."""
        ...

    def albedo(self, points: Points, parameters: Columns) -> torch.Tensor:
        """Linear RGB reflectance (3, M) at surface points."""
        ...
