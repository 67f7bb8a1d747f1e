"""Relighting a portrait from its normals: estimate the original light, divide it out, shade with a new one.

Maps are channels-first torch tensors with any leading batch dimensions: images (..., 3, H, W) in [0, 1],
camera-space unit normals (..., 3, H, W) (zero where undefined, as `normals_from_depth` leaves them), masks
(..., H, W). Shading follows `rgbd_portrait.geometry.shading`: an image is albedo × shading.

The model is Lambertian with a piecewise-constant albedo: the original lighting is a least-squares fit of
9 spherical-harmonic coefficients per colour channel to the image divided by an albedo of a few flat regions
(skin, hair, eyes, clothing), found by alternating the fit with a k-means clustering of image / shading in log
colour space (the fit on the raw image would bend towards dark hair and bright clothing as if they were
shadow and light). The fit is optionally reweighted to ignore cast shadows and highlights, which the model
cannot explain. A single image cannot separate the albedo's brightness from the light's strength, so the
estimated light is assumed to be as strong as the new one, strength meaning the peak shading over the
subject's normals: relighting moves the light and keeps the brightest lit point as bright. The input's
overall colour stays in the albedo. With the original light known (e.g. a synthetic
sample's), pass it instead and the division is exact.

Light directions use `direction_from_angles`: azimuth 0 = from the camera, positive = from the image's
right; elevation positive = from above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.shading import (
    NUM_SH_COEFFICIENTS,
    direction_from_angles,
    lambert_sh_basis,
    linear_to_srgb,
    shade_directional,
    shade_sh,
    srgb_to_linear,
)

WHITE = (1.0, 1.0, 1.0)
DEFAULT_AMBIENT = 0.2
# Below this fraction of the peak, shading is too dark to divide by reliably (terminator, deep shadow).
DEFAULT_MIN_SHADING_FRACTION = 0.05
ROBUST_ITERATIONS = 3
# Albedo regions of a portrait (skin, hair, eyes or lips, clothing); more start to absorb shading as albedo.
DEFAULT_ALBEDO_CLUSTERS = 4
ALBEDO_ROUNDS = 4
KMEANS_ITERATIONS = 15
# Albedo regions are found where the fitted shading reaches this fraction of its peak: near the terminator the
# 9-term fit is least exact, and dividing by it would make shading errors look like a region of their own.
LIT_FRACTION = 0.3
# Regions whose log colours lie closer than this (a brightness ratio of 1.65) are one: the albedo regions of a
# portrait (skin, hair, clothing) differ by more, the pieces a shading misfit splits off by less.
MERGE_DISTANCE = 0.5
# Tukey's biweight constant (95 % efficiency for Gaussian residuals) and MAD → standard deviation.
_TUKEY_C = 4.685
_MAD_TO_SIGMA = 1.4826
_MIN_RESIDUAL_SCALE = 1e-3
# Ridge on the normal equations, relative to their mean diagonal: keeps a fit from a few distinct normals
# (a plane has one) solvable without changing a well-posed one.
_RIDGE = 1e-6


@dataclass(frozen=True)
class DirectionalLight:
    """A distant lamp: `direction` points from the subject towards it (camera space, normalised on use)."""

    direction: tuple[float, float, float]
    intensity: float = 1.0
    color: tuple[float, float, float] = WHITE

    @classmethod
    def from_angles(
        cls,
        azimuth_degrees: float,
        elevation_degrees: float,
        *,
        intensity: float = 1.0,
        color: tuple[float, float, float] = WHITE,
    ) -> DirectionalLight:
        direction = tuple(direction_from_angles(azimuth_degrees, elevation_degrees).tolist())
        return cls(direction=direction, intensity=intensity, color=color)


@dataclass(frozen=True)
class Lighting:
    """A sum of distant light: directional lamps, a uniform ambient radiance and an SH environment.

    `sh_coefficients` are radiance coefficients (9,) for white light or (9, 3) per colour channel.
    """

    lamps: tuple[DirectionalLight, ...] = ()
    ambient: float = 0.0
    ambient_color: tuple[float, float, float] = WHITE
    sh_coefficients: torch.Tensor | None = None

    def shade(self, normals: torch.Tensor) -> torch.Tensor:
        """Shading (..., 3, H, W) of unit normals (..., 3, H, W)."""
        vectors = normals.movedim(-3, -1)
        shading = torch.as_tensor(self.ambient_color, dtype=normals.dtype, device=normals.device) * self.ambient
        shading = shading.expand(*vectors.shape[:-1], 3)
        for lamp in self.lamps:
            color = torch.as_tensor(lamp.color, dtype=normals.dtype, device=normals.device)
            direction = torch.as_tensor(lamp.direction, dtype=normals.dtype, device=normals.device)
            lit = shade_directional(vectors, direction, intensity=lamp.intensity)
            shading = shading + lit[..., None] * color
        if self.sh_coefficients is not None:
            environment = shade_sh(vectors, self.sh_coefficients)
            shading = shading + (environment[..., None] if self.sh_coefficients.ndim == 1 else environment)
        return shading.movedim(-1, -3)


def _lamp(azimuth: float, elevation: float, intensity: float) -> DirectionalLight:
    return DirectionalLight.from_angles(azimuth, elevation, intensity=intensity)


# Named lights, white, with a peak shading of about 1. "left" and "right" are the image's sides.
LIGHT_PRESETS: dict[str, Lighting] = {
    "front": Lighting(lamps=(_lamp(0.0, 15.0, 0.8),), ambient=0.2),
    "left": Lighting(lamps=(_lamp(-70.0, 15.0, 0.8),), ambient=0.2),
    "right": Lighting(lamps=(_lamp(70.0, 15.0, 0.8),), ambient=0.2),
    "top": Lighting(lamps=(_lamp(0.0, 70.0, 0.8),), ambient=0.2),
    # two lamps behind the subject light its outline; the face stays dim
    "rim": Lighting(lamps=(_lamp(-120.0, 20.0, 0.7), _lamp(120.0, 20.0, 0.7)), ambient=0.3),
    # key light high on the image's left, a soft fill on the right, a hair light from behind
    "studio": Lighting(lamps=(_lamp(-35.0, 30.0, 0.65), _lamp(50.0, 5.0, 0.25), _lamp(160.0, 45.0, 0.3)), ambient=0.15),
}


def resolve_lighting(
    light: Lighting | DirectionalLight | str | torch.Tensor, *, ambient: float = DEFAULT_AMBIENT
) -> Lighting:
    """A `Lighting` from a preset name, a lamp (plus `ambient`), SH coefficients (9,) or (9, 3), or itself."""
    if isinstance(light, Lighting):
        return light
    if isinstance(light, DirectionalLight):
        return Lighting(lamps=(light,), ambient=ambient)
    if isinstance(light, str):
        try:
            return LIGHT_PRESETS[light.lower()]
        except KeyError:
            raise UserInputError(f"light {light!r} is not a preset; choose one of {', '.join(LIGHT_PRESETS)}") from None
    if isinstance(light, torch.Tensor):
        if light.shape not in ((NUM_SH_COEFFICIENTS,), (NUM_SH_COEFFICIENTS, 3)):
            raise UserInputError(f"light: SH coefficients must be (9,) or (9, 3), got {tuple(light.shape)}")
        return Lighting(sh_coefficients=light)
    raise TypeError(f"cannot make a Lighting from {type(light).__name__}")


def _fit_region(normals: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Pixels (..., H, W) with a defined normal, inside the mask."""
    region = normals.norm(dim=-3) > 0.5
    if mask is not None:
        region = region & mask.to(torch.bool)
    empty = ~region.flatten(-2).any(dim=-1)
    if empty.any():
        raise ValueError("no pixel has both a defined normal and the mask; nothing to relight")
    return region


def _weighted_sh_fit(basis: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted least squares basis (..., P, 9) · L ≈ values (..., P, 3) → L (..., 9, 3)."""
    weighted = basis * weights[..., None]
    gram = weighted.transpose(-1, -2) @ basis
    ridge = _RIDGE * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    gram = gram + ridge[..., None, None] * torch.eye(NUM_SH_COEFFICIENTS, dtype=basis.dtype, device=basis.device)
    return torch.linalg.solve(gram, weighted.transpose(-1, -2) @ values)


def _robust_sh_fit(basis: torch.Tensor, values: torch.Tensor, inside: torch.Tensor, *, robust: bool) -> torch.Tensor:
    """`_weighted_sh_fit` on the `inside` pixels, reweighted by Tukey's biweight of the residuals if `robust`."""
    coefficients = _weighted_sh_fit(basis, values, inside)
    for _ in range(ROBUST_ITERATIONS if robust else 0):
        residual = (values - basis @ coefficients).mean(dim=-1)
        absolute = torch.where(inside > 0, residual.abs(), torch.full_like(residual, float("nan")))
        scale = (_MAD_TO_SIGMA * absolute.nanmedian(dim=-1).values).clamp_min(_MIN_RESIDUAL_SCALE)
        normalized = residual / (_TUKEY_C * scale[..., None])
        weights = inside * ((1.0 - normalized**2).clamp_min(0.0) ** 2)
        coefficients = _weighted_sh_fit(basis, values, weights)
    return coefficients


def _cluster_centres(points: torch.Tensor, clusters: int) -> torch.Tensor:
    """Centres (K', 3) of points (P, 3): k-means with median centres, started at luminance quantiles, then
    centres closer than `MERGE_DISTANCE` merged (K' ≤ `clusters`), so a flat albedo stays one region."""
    order = points.mean(dim=-1).argsort()
    picks = torch.linspace(0, len(points) - 1, clusters, device=points.device).round().long()
    centres = points[order[picks]].clone()
    labels = torch.cdist(points, centres).argmin(dim=-1)
    for _ in range(KMEANS_ITERATIONS):
        for cluster in range(len(centres)):
            members = points[labels == cluster]
            if len(members):
                centres[cluster] = members.median(dim=0).values
        updated = torch.cdist(points, centres).argmin(dim=-1)
        if torch.equal(updated, labels):
            break
        labels = updated
    while len(centres) > 1:
        distances = torch.cdist(centres, centres).fill_diagonal_(torch.inf)
        nearest = int(distances.argmin())
        first, second = divmod(nearest, len(centres))
        if distances[first, second] >= MERGE_DISTANCE:
            break
        labels = torch.where(labels == second, first, labels)
        centres[first] = points[labels == first].median(dim=0).values
        keep = torch.arange(len(centres), device=centres.device) != second
        centres, labels = centres[keep], labels - (labels > second).long()
    return centres


def _piecewise_constant_albedo(
    ratio: torch.Tensor, inside: torch.Tensor, lit: torch.Tensor, clusters: int
) -> torch.Tensor:
    """Albedo (..., P, 3) of at most `clusters` flat regions from image / shading ratios (..., P, 3), relative to
    the largest.

    The regions are found on the `lit` pixels (..., P), where a small misfit of the shading is a small error of
    the ratio; every other pixel inside joins the region of the nearest centre.
    """
    shape = ratio.shape
    ratio, inside, lit = ratio.reshape(-1, *shape[-2:]), inside.reshape(-1, shape[-2]) > 0, lit.reshape(-1, shape[-2])
    albedo = torch.ones_like(ratio)
    for image in range(len(ratio)):
        region = inside[image]
        sample = region & lit[image]
        sample = sample if sample.sum() >= clusters else region
        log_ratio = ratio[image].clamp_min(1e-6).log()
        centres = _cluster_centres(log_ratio[sample], min(clusters, int(sample.sum())))
        labels = torch.cdist(log_ratio[region], centres).argmin(dim=-1)
        # Relative to the largest region (a portrait's skin), which therefore keeps its colour in the fit.
        albedo[image, region] = (centres[labels] - centres[labels.bincount().argmax()]).exp()
    return albedo.reshape(shape)


def estimate_sh_lighting(
    image: torch.Tensor,
    normals: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    robust: bool = True,
    albedo_clusters: int = DEFAULT_ALBEDO_CLUSTERS,
) -> torch.Tensor:
    """Least-squares SH lighting (..., 9, 3) that, through `shade_sh`, best reproduces the image.

    The coefficients absorb an albedo: `shade_sh(n, L)` is the image's smooth shading layer times the colour
    of the largest albedo region (a portrait's skin; with one region, the subject's mean colour), in image
    units. With `albedo_clusters` > 1 the fit divides the image by an albedo of at most that many flat
    regions, re-estimated from the fit's shading in a few rounds (1: a constant albedo). `robust` reweights
    pixels by Tukey's biweight of their residual (a few iterations), so cast shadows and highlights do not
    bend the fit.
    """
    if albedo_clusters < 1:
        raise ValueError(f"albedo_clusters must be at least 1, got {albedo_clusters}")
    region = _fit_region(normals, mask)
    # float64: the normal equations of a hemisphere of normals are poorly conditioned
    basis = lambert_sh_basis(normals.movedim(-3, -1).to(torch.float64)).flatten(-3, -2)
    values = image.movedim(-3, -1).to(torch.float64).flatten(-3, -2)
    inside = region.flatten(-2).to(torch.float64)
    coefficients = _robust_sh_fit(basis, values, inside, robust=robust)
    for _ in range(ALBEDO_ROUNDS if albedo_clusters > 1 else 0):
        shading = basis @ coefficients
        peak = torch.where(inside[..., None] > 0, shading, torch.full_like(shading, -torch.inf)).amax(dim=-2)
        floor = (DEFAULT_MIN_SHADING_FRACTION * peak).clamp_min(1e-6)[..., None, :]
        lit = (shading >= LIT_FRACTION * peak[..., None, :]).all(dim=-1)
        albedo = _piecewise_constant_albedo(values / torch.maximum(shading, floor), inside, lit, albedo_clusters)
        coefficients = _robust_sh_fit(basis, values / albedo, inside, robust=robust)
    return coefficients.to(image.dtype)


def sh_shading(normals: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Shading (..., 3, H, W) of normals (..., 3, H, W) under per-image SH coefficients (..., 9, 3)."""
    basis = lambert_sh_basis(normals.movedim(-3, -1).to(coefficients.dtype))
    shading = basis.flatten(-3, -2) @ coefficients
    return shading.unflatten(-2, basis.shape[-3:-1]).movedim(-1, -3)


def _peak(shading: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per-channel maximum (..., 3) of shading (..., 3, H, W) over the region (..., H, W)."""
    inside = torch.where(region.unsqueeze(-3), shading, torch.full_like(shading, float("-inf")))
    return inside.amax(dim=(-2, -1))


@dataclass
class RelightingResult:
    """All maps are (..., 3, H, W) except `region` (..., H, W), the pixels that were relit."""

    image: torch.Tensor  # relit, in [0, 1]; the input's pixels outside `region`
    albedo: torch.Tensor  # input / original shading, zero outside `region`
    original_shading: torch.Tensor  # given, or estimated and scaled as the module docstring says
    new_shading: torch.Tensor
    region: torch.Tensor


def relight(
    image: torch.Tensor,
    normals: torch.Tensor,
    light: Lighting | DirectionalLight | str | torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    original_light: Lighting | DirectionalLight | str | torch.Tensor | None = None,
    robust: bool = True,
    albedo_clusters: int = DEFAULT_ALBEDO_CLUSTERS,
    min_shading_fraction: float = DEFAULT_MIN_SHADING_FRACTION,
    srgb: bool = True,
) -> RelightingResult:
    """Relight `image` under `light` (see `resolve_lighting`), estimating its original light unless given.

    The albedo is the image divided by the original shading, which is clamped from below at
    `min_shading_fraction` of its peak so that near-black pixels do not blow up. Light adds up linearly, so
    with `srgb` (images as photos and PNGs store them) the maths runs on linear values and the relit image
    and the albedo come back sRGB-encoded; `srgb=False` is for images that are linear already.
    """
    encoded = image
    if srgb:
        image = srgb_to_linear(image)
    region = _fit_region(normals, mask)
    new_shading = resolve_lighting(light).shade(normals).to(image.dtype)
    if original_light is None:
        coefficients = estimate_sh_lighting(image, normals, mask=region, robust=robust, albedo_clusters=albedo_clusters)
        fitted = sh_shading(normals, coefficients)
        fitted_peak = _peak(fitted, region).clamp_min(1e-6)
        new_peak = _peak(new_shading, region).mean(dim=-1, keepdim=True)
        original_shading = fitted * (new_peak / fitted_peak)[..., None, None]
    else:
        original_shading = resolve_lighting(original_light).shade(normals).to(image.dtype)
    floor = min_shading_fraction * _peak(original_shading, region).clamp_min(1e-6)
    albedo = image / torch.maximum(original_shading, floor[..., None, None])
    inside = region.unsqueeze(-3)
    albedo = torch.where(inside, albedo.clamp_min(0.0), torch.zeros_like(albedo))
    relit = (albedo * new_shading).clamp(0.0, 1.0)
    if srgb:
        relit, albedo = linear_to_srgb(relit), torch.where(inside, linear_to_srgb(albedo), albedo)
    relit = torch.where(inside, relit, encoded)
    return RelightingResult(
        image=relit, albedo=albedo, original_shading=original_shading, new_shading=new_shading, region=region
    )
