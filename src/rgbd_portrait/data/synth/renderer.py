"""Batched sphere tracing of signed-distance scenes: depth, mask, normals, albedo and lit images.

All rays of all images in a batch are marched together as flat tensors. Rays that miss every bounding
ellipsoid of their sample never march; the others start where they enter the bounds, and rays that hit or
leave are dropped from the working set (compaction) whenever enough of them are done, so late steps only
pay for the rays still marching. Shading is Lambertian (`rgbd_portrait.geometry.shading`): an SH
environment attenuated by ambient occlusion, plus directional lights with soft shadows. Colours are linear
internally and sRGB-encoded (after clipping to [0, 1]) on output, so a relit image is exactly
`srgb(albedo_linear * shading)` with the same geometry and albedo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rgbd_portrait.data.synth.parameters import Camera, Lighting
from rgbd_portrait.data.synth.scene import Columns, Points, Scene
from rgbd_portrait.geometry.shading import direction_from_angles, linear_to_srgb, shade_directional, shade_sh


@dataclass(frozen=True)
class RenderSettings:
    """Sphere-tracing and shading quality knobs (defaults tuned for 64–256 px portraits)."""

    max_steps: int = 64
    # A ray has hit when the distance is below this fraction of the pixel footprint at its depth.
    hit_tolerance: float = 0.1
    # Step scale below 1 keeps marching safe where the field is a bound rather than an exact distance.
    step_scale: float = 0.9
    # Compact the working set once this fraction of its rays is done.
    compaction_fraction: float = 0.15
    normal_epsilon: float = 5e-4
    occlusion_samples: int = 4
    occlusion_spacing: float = 0.0075
    occlusion_strength: float = 10.0
    shadow_samples: int = 7
    shadow_start: float = 0.003
    shadow_end: float = 0.3
    shadow_softness: float = 10.0


@dataclass
class RenderOutput:
    """Per-image buffers (B images of H x W); colours are sRGB in [0, 1]."""

    depth: torch.Tensor  # (B, H, W) float32 metres along the optical axis, 0 on the background
    mask: torch.Tensor  # (B, H, W) bool
    normal: torch.Tensor  # (B, H, W, 3) camera frame (x right, y up, z towards the camera), 0 on background
    albedo: torch.Tensor  # (B, H, W, 3)
    images: torch.Tensor  # (B, L, H, W, 3): one image per lighting condition


def camera_rays(cameras: Sequence[Camera], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit ray directions (B, 3, H*W) in the camera frame (x right, y up, looking along -z)."""
    size = cameras[0].size
    if any(camera.size != size for camera in cameras):
        raise ValueError("all cameras of a batch must have the same image size")
    centres = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    rows, columns = torch.meshgrid(centres, centres, indexing="ij")
    directions = []
    for camera in cameras:
        intrinsics = camera.intrinsics()
        x = (columns - intrinsics.cx) / intrinsics.fx
        y = -(rows - intrinsics.cy) / intrinsics.fy
        directions.append(torch.stack((x, y, -torch.ones_like(x))).view(3, -1))
    return torch.nn.functional.normalize(torch.stack(directions), dim=1)


def rotate(rotations: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Rotations (M, 3, 3) applied to vectors (3, M), written out so each result depends only on its own
    inputs (a batched matmul may sum in an order that depends on the batch)."""
    return torch.stack([sum(rotations[:, row, column] * vectors[column] for column in range(3)) for row in range(3)])


def _bounds(origins: torch.Tensor, directions: torch.Tensor, ellipsoids: torch.Tensor):
    """Entry and exit distances (N,) of rays (3, N) through the union of their ellipsoids (N, S, 6)."""
    radii = ellipsoids[..., 3:]
    offset = (origins.T.unsqueeze(1) - ellipsoids[..., :3]) / radii  # (N, S, 3) in unit-sphere space
    heading = directions.T.unsqueeze(1) / radii
    a = heading.square().sum(-1)
    b = (offset * heading).sum(-1)
    discriminant = b.square() - a * (offset.square().sum(-1) - 1.0)
    hit = discriminant > 0
    root = discriminant.clamp_min(0.0).sqrt()
    enter = torch.where(hit, ((-b - root) / a).clamp_min(0.0), torch.full_like(b, float("inf")))
    leave = torch.where(hit, (-b + root) / a, torch.zeros_like(b))
    return enter.min(1).values, leave.max(1).values


def sphere_trace(
    scene: Scene,
    origins: torch.Tensor,
    directions: torch.Tensor,
    sample: torch.Tensor,
    *,
    start: torch.Tensor,
    end: torch.Tensor,
    footprint: torch.Tensor,
    settings: RenderSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """March rays (object frame, (3, N)) from `start` to `end`; returns (hit, t, final distance) per ray.

    `footprint` (N,) is the pixel size per metre of depth, which sets the hit tolerance.
    """
    count = origins.shape[1]
    t_final = start.clone()
    hit = torch.zeros(count, dtype=torch.bool, device=origins.device)
    distance_final = torch.full_like(start, float("inf"))
    active = torch.arange(count, device=origins.device)
    o, d, t, t_end = origins, directions, start.clone(), end
    tolerance = settings.hit_tolerance * footprint
    columns = scene.parameters.columns(sample)
    for step in range(settings.max_steps):
        points = (o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2])
        distance = scene.distance(points, columns)
        converged = distance < tolerance * t
        done = converged | (t > t_end)
        last = step == settings.max_steps - 1
        finished = int(done.sum())
        if last or finished > settings.compaction_fraction * done.numel():
            # Rays that ran out of steps while still close to a surface count as hits.
            keep_hit = converged | (last & (distance < 4.0 * tolerance * t) & (t <= t_end))
            record = done | last
            hit[active[record]] = keep_hit[record]
            t_final[active[record]] = t[record]
            distance_final[active[record]] = distance[record]
            if last:
                break
            remaining = ~done
            active, o, d, t, t_end, tolerance = (
                active[remaining],
                o[:, remaining],
                d[:, remaining],
                t[remaining],
                t_end[remaining],
                tolerance[remaining],
            )
            columns = columns.select(remaining)
            if active.numel() == 0:
                break
        else:
            t = t + torch.where(done, torch.zeros_like(distance), distance * settings.step_scale)
            continue
        t = t + distance[remaining] * settings.step_scale
    return hit, t_final, distance_final


def surface_normals(scene: Scene, points: Points, columns: Columns, epsilon: float) -> torch.Tensor:
    """Unit gradient (3, M) of the field by central differences on a tetrahedron (4 evaluations)."""
    gradient = torch.zeros(3, points[0].shape[0], device=points[0].device)
    for sx, sy, sz in ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1)):
        value = scene.distance((points[0] + sx * epsilon, points[1] + sy * epsilon, points[2] + sz * epsilon), columns)
        gradient[0] += sx * value
        gradient[1] += sy * value
        gradient[2] += sz * value
    return torch.nn.functional.normalize(gradient, dim=0)


def ambient_occlusion(scene: Scene, points: Points, normals: torch.Tensor, columns: Columns, settings: RenderSettings):
    """How open the surface is (M,) in [0, 1]: the field sampled along the normal, compared to the offset."""
    occlusion = torch.zeros_like(points[0])
    for index in range(1, settings.occlusion_samples + 1):
        offset = settings.occlusion_spacing * index
        value = scene.distance(
            (points[0] + offset * normals[0], points[1] + offset * normals[1], points[2] + offset * normals[2]),
            columns,
        )
        occlusion += (offset - value).clamp_min(0.0) * 0.7**index
    return (1.0 - settings.occlusion_strength * occlusion).clamp(0.0, 1.0)


def soft_shadow(
    scene: Scene, points: Points, normals: torch.Tensor, light: torch.Tensor, columns: Columns, settings: RenderSettings
) -> torch.Tensor:
    """Visibility (M,) of a distant light (3, M) from surface points, from the field sampled at
    geometrically spaced distances towards the light (penumbra ∝ distance to the nearest occluder)."""
    base = [points[axis] + 2.0 * settings.shadow_start * normals[axis] for axis in range(3)]
    ratio = (settings.shadow_end / settings.shadow_start) ** (1.0 / max(settings.shadow_samples - 1, 1))
    visibility = torch.ones_like(points[0])
    for index in range(settings.shadow_samples):
        along = settings.shadow_start * ratio**index
        value = scene.distance(tuple(base[axis] + along * light[axis] for axis in range(3)), columns)
        visibility = torch.minimum(visibility, settings.shadow_softness * value / along)
    visibility = visibility.clamp(0.0, 1.0)
    return visibility * visibility * (3.0 - 2.0 * visibility)


@dataclass
class _Surface:
    """Everything about the visible surface that does not depend on the light."""

    ray: torch.Tensor  # (M,) flat index into B * H * W of the pixels that hit
    sample: torch.Tensor  # (M,) image index of each hit
    points: Points  # object frame
    parameters: Columns
    normals: torch.Tensor  # (3, M) object frame
    occlusion: torch.Tensor  # (M,)


def _trace_surface(
    scene: Scene, cameras: Sequence[Camera], settings: RenderSettings
) -> tuple[_Surface, torch.Tensor, torch.Tensor]:
    """Find the visible surface of every pixel; returns it with the camera-frame ray directions
    (B, 3, P) and the ray lengths (M,) of the hits."""
    device = scene.rotation.device
    batch, pixels = len(cameras), cameras[0].size ** 2
    camera_directions = camera_rays(cameras, device=device)
    sample = torch.arange(batch, device=device).repeat_interleave(pixels)
    directions = rotate(scene.rotation[sample], camera_directions.permute(1, 0, 2).reshape(3, -1))
    origins = scene.translation.T[:, sample]
    start, end = _bounds(origins, directions, scene.bounding_ellipsoids[sample])
    candidates = (start < end).nonzero().squeeze(1)
    focal = torch.tensor([camera.focal_length_pixels for camera in cameras], device=device)
    # The footprint grows off-axis (by ≤ 10 % in a portrait lens); the on-axis value is close enough.
    hit, t, distance = sphere_trace(
        scene,
        origins[:, candidates],
        directions[:, candidates],
        sample[candidates],
        start=start[candidates],
        end=end[candidates],
        footprint=1.0 / focal[sample[candidates]],
        settings=settings,
    )
    rays, t, distance = candidates[hit], t[hit], distance[hit]
    parameters = scene.parameters.columns(sample[rays])
    origin, direction = origins[:, rays], directions[:, rays]
    points = tuple(origin[axis] + t * direction[axis] for axis in range(3))
    normals = surface_normals(scene, points, parameters, settings.normal_epsilon)
    # A Newton step along the ray removes the hit tolerance's error, which sphere tracing alone leaves at
    # 1 / cos(incidence) times the tolerance on oblique surfaces; bounded where rays graze the surface.
    incidence = -(normals * direction).sum(0)
    t = t + distance / incidence.clamp_min(0.25)
    points = tuple(origin[axis] + t * direction[axis] for axis in range(3))
    surface = _Surface(
        ray=rays,
        sample=sample[rays],
        points=points,
        parameters=parameters,
        normals=normals,
        occlusion=ambient_occlusion(scene, points, normals, parameters, settings),
    )
    return surface, camera_directions, t


def _scatter(values: torch.Tensor, rays: torch.Tensor, total: int, fill: float) -> torch.Tensor:
    """Hit values (M, ...) → a buffer (total, ...) filled with `fill` elsewhere."""
    buffer = torch.full((total, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    buffer[rays] = values
    return buffer


def _visibility(
    scene: Scene, surface: _Surface, lightings: Sequence[Lighting], settings: RenderSettings
) -> list[torch.Tensor | None]:
    """Per light slot: shadow visibility (M,) of each hit, or None where no view's light casts shadows."""
    device = surface.normals.device
    slots = max(len(lighting.lights) for lighting in lightings)
    result: list[torch.Tensor | None] = []
    for slot in range(slots):
        casts = [slot < len(lighting.lights) and lighting.lights[slot].casts_shadow for lighting in lightings]
        if not any(casts):
            result.append(None)
            continue
        directions = torch.stack(
            [
                direction_from_angles(lighting.lights[slot].azimuth, lighting.lights[slot].elevation)
                if cast
                else torch.zeros(3)
                for lighting, cast in zip(lightings, casts)
            ]
        ).to(device)
        towards_light = rotate(scene.rotation[surface.sample], directions[surface.sample].T)
        # Surfaces facing away from the light get no direct light anyway: skip their shadow rays.
        facing = (surface.normals * towards_light).sum(0) > 0
        rays = facing.nonzero().squeeze(1)
        visibility = torch.ones_like(surface.occlusion)
        visibility[rays] = soft_shadow(
            scene,
            tuple(axis[rays] for axis in surface.points),
            surface.normals[:, rays],
            towards_light[:, rays],
            surface.parameters.select(rays),
            settings,
        )
        result.append(visibility)
    return result


def render(
    scene: Scene,
    cameras: Sequence[Camera],
    lightings: Sequence[Sequence[Lighting]],
    *,
    settings: RenderSettings | None = None,
) -> RenderOutput:
    """Render B views of `scene`, each under its own list of lighting conditions (same length for all)."""
    settings = settings or RenderSettings()
    batch, size = len(cameras), cameras[0].size
    pixels, total = size * size, len(cameras) * size * size
    conditions = len(lightings[0])
    if len(lightings) != batch or any(len(group) != conditions for group in lightings):
        raise ValueError("every view needs the same number of lighting conditions")

    surface, camera_directions, t = _trace_surface(scene, cameras, settings)
    device = surface.normals.device
    rays = surface.ray
    normals = rotate(scene.rotation[surface.sample].transpose(1, 2), surface.normals).T  # object → camera
    optical_axis_cosine = -camera_directions[:, 2].reshape(-1)[rays]
    depth = _scatter(t * optical_axis_cosine, rays, total, 0.0).view(batch, size, size)
    mask = _scatter(torch.ones_like(t, dtype=torch.bool), rays, total, False).view(batch, pixels)
    normal_image = _scatter(normals, rays, total, 0.0).view(batch, pixels, 3)
    albedo = scene.albedo(surface.points, surface.parameters).T  # linear (M, 3)
    albedo_image = _scatter(albedo, rays, total, 0.0).view(batch, pixels, 3)
    occlusion_image = _scatter(surface.occlusion, rays, total, 1.0).view(batch, pixels)

    images = torch.empty(batch, conditions, pixels, 3, device=device)
    height_fraction = (torch.arange(pixels, device=device) // size).float()[:, None] / max(size - 1, 1)
    for condition in range(conditions):
        condition_lightings = [group[condition] for group in lightings]
        visibility = [
            None if values is None else _scatter(values, rays, total, 1.0).view(batch, pixels)
            for values in _visibility(scene, surface, condition_lightings, settings)
        ]
        for index, lighting in enumerate(condition_lightings):
            view_normals = normal_image[index]
            coefficients = torch.tensor(lighting.sh_coefficients, device=device)
            shading = shade_sh(view_normals, coefficients) * occlusion_image[index, :, None]
            for slot, light in enumerate(lighting.lights):
                direct = shade_directional(
                    view_normals,
                    direction_from_angles(light.azimuth, light.elevation).to(device),
                    intensity=light.intensity,
                )
                if light.casts_shadow:
                    direct = direct * visibility[slot][index]
                shading = shading + direct[:, None] * torch.tensor(light.colour, device=device)
            top = torch.tensor(lighting.backdrop_top, device=device)
            bottom = torch.tensor(lighting.backdrop_bottom, device=device)
            backdrop = top + (bottom - top) * height_fraction
            lit = linear_to_srgb(albedo_image[index] * shading)
            images[index, condition] = torch.where(mask[index, :, None], lit, backdrop)

    return RenderOutput(
        depth=depth,
        mask=mask.view(batch, size, size),
        normal=normal_image.view(batch, size, size, 3),
        albedo=linear_to_srgb(albedo_image).view(batch, size, size, 3),
        images=images.view(batch, conditions, size, size, 3),
    )
