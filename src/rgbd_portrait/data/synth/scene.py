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
    """Per-ray parameter values: `columns[name]` is a contiguous (M,) tensor.

    Rows are gathered from the per-sample table on first use and kept, so a subset of rays (`select`)
    costs one small index vector, and parameters a field never reads for those rays are never gathered.
    """

    def __init__(self, table: ParameterTable, sample: torch.Tensor):
        self.table = table
        self.sample = sample  # (M,) sample index of each ray
        self._rows: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = self.table.values[self.table.index[name]].index_select(0, self.sample)
        return row

    def select(self, rays: torch.Tensor) -> Columns:
        """The columns of a subset of rays (indices or a boolean mask into M)."""
        return Columns(self.table, self.sample[rays])


class ParameterTable:
    """Named scalars per sample, stored as a (P, B) tensor."""

    def __init__(self, rows: Sequence[Mapping[str, float]], *, device: torch.device | str = "cpu"):
        names = list(rows[0])
        self.index = {name: position for position, name in enumerate(names)}
        self.values = torch.tensor([[row[name] for row in rows] for name in names], dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.values.shape[1]

    def any_nonzero(self, name: str) -> bool:
        return bool((self.values[self.index[name]] != 0).any())

    def columns(self, sample_index: torch.Tensor) -> Columns:
        return Columns(self, sample_index)


class Scene(Protocol):
    """B samples to render. Geometry lives in an object frame per sample (metres)."""

    parameters: ParameterTable
    # Camera → object frame: p_object = rotation @ p_camera + translation; (B, 3, 3) and (B, 3).
    rotation: torch.Tensor
    translation: torch.Tensor
    # Ellipsoids (B, S, 6) = centre xyz, radii xyz (object frame) whose union contains all geometry.
    bounding_ellipsoids: torch.Tensor

    def distance(self, points: Points, parameters: Columns) -> torch.Tensor:
        """Signed distance (M,) at object-frame points, each with its sample's parameters."""
        ...

    def albedo(self, points: Points, parameters: Columns) -> torch.Tensor:
        """Linear RGB reflectance (3, M) at surface points."""
        ...
