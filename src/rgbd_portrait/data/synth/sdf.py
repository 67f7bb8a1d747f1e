"""Signed-distance primitives and smooth boolean operations on component tensors.

Points are passed as separate x, y, z tensors of shape (M,) (one entry per ray or sample point), so every
operation runs on contiguous memory; shape parameters are tensors of the same shape (one value per point,
gathered from the per-sample parameter table) or plain floats. Distances are in metres, negative inside.
Ellipsoids and tapered capsules are bounds rather than exact distances, which sphere tracing tolerates.
"""

from __future__ import annotations

import torch

Scalar = torch.Tensor | float


def length(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y + z * z)


def sphere(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, centre: tuple[Scalar, Scalar, Scalar], radius: Scalar):
    return length(x - centre[0], y - centre[1], z - centre[2]) - radius


def ellipsoid(
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    centre: tuple[Scalar, Scalar, Scalar],
    radii: tuple[Scalar, Scalar, Scalar],
) -> torch.Tensor:
    """Quílez's ellipsoid bound k0 (k0 - 1) / k1: exact on the surface, close to the distance nearby."""
    u, v, w = (x - centre[0]) / radii[0], (y - centre[1]) / radii[1], (z - centre[2]) / radii[2]
    k0 = length(u, v, w)
    k1 = length(u / radii[0], v / radii[1], w / radii[2]).clamp_min(1e-9)
    return k0 * (k0 - 1.0) / k1


def capsule(
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    start: tuple[Scalar, Scalar, Scalar],
    end: tuple[Scalar, Scalar, Scalar],
    radius_start: Scalar,
    radius_end: Scalar | None = None,
) -> torch.Tensor:
    """Segment `start`→`end` swept by a sphere whose radius varies linearly along it (a bound when tapered)."""
    px, py, pz = x - start[0], y - start[1], z - start[2]
    ax, ay, az = end[0] - start[0], end[1] - start[1], end[2] - start[2]
    along = ((px * ax + py * ay + pz * az) / (ax * ax + ay * ay + az * az)).clamp(0.0, 1.0)
    distance = length(px - ax * along, py - ay * along, pz - az * along)
    if radius_end is None:
        return distance - radius_start
    return distance - (radius_start + (radius_end - radius_start) * along)


def smooth_union(a: torch.Tensor, b: torch.Tensor, blend: float) -> torch.Tensor:
    """Quadratic smooth minimum: the union of two shapes with a fillet of width `blend` metres."""
    overlap = (blend - (a - b).abs()).clamp_min(0.0)
    return torch.minimum(a, b) - overlap * overlap * (0.25 / blend)


def smooth_subtract(a: torch.Tensor, b: torch.Tensor, blend: float) -> torch.Tensor:
    """`a` with `b` carved out, with a fillet of width `blend` metres."""
    overlap = (blend - (a + b).abs()).clamp_min(0.0)
    return torch.maximum(a, -b) + overlap * overlap * (0.25 / blend)


def smooth_intersect(a: torch.Tensor, b: torch.Tensor, blend: float) -> torch.Tensor:
    overlap = (blend - (a - b).abs()).clamp_min(0.0)
    return torch.maximum(a, b) + overlap * overlap * (0.25 / blend)
