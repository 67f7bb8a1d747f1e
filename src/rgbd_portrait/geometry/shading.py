"""Lambertian shading under spherical-harmonic environments and directional lights.

Normals are camera-space unit vectors (x right, y up, z towards the camera), shape (..., 3). Light
directions point from the surface towards the light. Shading is irradiance / π, so that a uniform
environment of radiance 1 shades every normal with 1, and an image is `albedo * shading`.

Spherical harmonics are the 9 real functions of bands 0–2 in the usual order
(Y00, Y1-1, Y10, Y11, Y2-2, Y2-1, Y20, Y21, Y22) = (1, y, z, x, xy, yz, 3z²-1, xz, x²-y²) up to constants.
"""

from __future__ import annotations

import math

import torch

NUM_SH_COEFFICIENTS = 9

_SH_CONSTANTS = (
    0.5 * math.sqrt(1.0 / math.pi),
    math.sqrt(3.0 / (4.0 * math.pi)),
    0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(5.0 / math.pi),
    0.25 * math.sqrt(15.0 / math.pi),
)
# Lambertian convolution per band divided by π (Ramamoorthi & Hanrahan 2001): 1, 2/3, 1/4.
_BAND_OF_COEFFICIENT = (0, 1, 1, 1, 2, 2, 2, 2, 2)
_LAMBERT_PER_BAND = (1.0, 2.0 / 3.0, 0.25)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Real SH basis of bands 0–2 at unit directions: (..., 3) → (..., 9)."""
    x, y, z = normals.unbind(-1)
    c0, c1, c2, c3, c4 = _SH_CONSTANTS
    return torch.stack(
        (
            torch.full_like(x, c0),
            c1 * y,
            c1 * z,
            c1 * x,
            c2 * x * y,
            c2 * y * z,
            c3 * (3.0 * z * z - 1.0),
            c2 * x * z,
            c4 * (x * x - y * y),
        ),
        dim=-1,
    )


def lambert_sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The SH basis already convolved with the clamped-cosine lobe (divided by π): shading is linear in it."""
    weights = torch.tensor(
        [_LAMBERT_PER_BAND[band] for band in _BAND_OF_COEFFICIENT], dtype=normals.dtype, device=normals.device
    )
    return sh_basis(normals) * weights


def shade_sh(normals: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Shading of normals (..., 3) under SH radiance coefficients (9,) or (9, channels).

    Returns (...,) for (9,) coefficients and (..., channels) for (9, channels).
    """
    basis = lambert_sh_basis(normals)
    coefficients = coefficients.to(basis)
    return basis @ coefficients


def shade_directional(normals: torch.Tensor, direction: torch.Tensor, *, intensity: float = 1.0) -> torch.Tensor:
    """Shading (...,) of a distant light of the given radiant intensity from `direction` (3,)."""
    direction = torch.nn.functional.normalize(direction.to(normals), dim=-1)
    return intensity * (normals @ direction).clamp_min(0.0)


def direction_from_angles(azimuth_degrees: float, elevation_degrees: float) -> torch.Tensor:
    """Unit light direction from azimuth (0 = from the camera, positive = from the subject's left,
    i.e. the image's right) and elevation (positive = from above), in degrees."""
    azimuth, elevation = math.radians(azimuth_degrees), math.radians(elevation_degrees)
    return torch.tensor(
        [
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
            math.cos(elevation) * math.cos(azimuth),
        ]
    )


def srgb_to_linear(encoded: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] → linear light, where shading multiplies."""
    encoded = encoded.clamp(0.0, 1.0)
    return torch.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055).pow(2.4))


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] → sRGB-encoded values, as images are stored."""
    linear = linear.clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12).pow(1.0 / 2.4) - 0.055)
