"""Ground truth that only the synthetic studio can give: a sample's view rendered again under another light.

A synthetic sample's meta.json holds every parameter of its render (identity, expression, pose, camera, light),
so the studio can render the same view under any light. Depth→image needs that: its result should show the
test view's geometry with the reference's appearance, light included, and no stored image has that
combination (the stored `rgb.png` has the test sample's own light, which the model never sees).

The same meta entries also describe the lights of the exact relit renders (`relit_K.png`); `relighting_light`
turns one into the `Lighting` that the relighting code takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from rgbd_portrait.data.synth.parameters import (
    Camera,
    DirectionalLight,
    Expression,
    Identity,
    Lighting,
    Pose,
    View,
)
from rgbd_portrait.data.synth.studio import render_samples
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry import relighting
from rgbd_portrait.geometry.shading import direction_from_angles

# meta.json entries a sample needs to be rendered again.
VIEW_KEYS = ("identity_parameters", "expression", "pose", "camera", "light")


def is_synthetic(meta: Mapping[str, Any]) -> bool:
    """Whether a sample comes from the synthetic studio with every parameter needed to render it again."""
    return meta.get("source") == "synth" and all(isinstance(meta.get(key), dict) for key in VIEW_KEYS)


def _tuples(value: Any) -> Any:
    """JSON lists back into the tuples the frozen parameter classes hold."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _build(cls: type, entry: Mapping[str, Any], *, origin: str) -> Any:
    """A parameter dataclass from its meta entry; keys the class does not take (e.g. derived ones) are ignored."""
    names = {field.name for field in fields(cls)}
    try:
        return cls(**{key: _tuples(value) for key, value in entry.items() if key in names})
    except TypeError as error:
        raise UserInputError(f"{origin}: cannot rebuild the synthetic {cls.__name__} ({error})") from error


def synthetic_lighting(entry: Mapping[str, Any], *, origin: str = "meta.json") -> Lighting:
    """The studio's `Lighting` from a meta entry (`meta["light"]` or one of `meta["relit"]`)."""
    lights = tuple(_build(DirectionalLight, light, origin=origin) for light in entry.get("lights", ()))
    return _build(Lighting, {**entry, "lights": lights}, origin=origin)


def view_from_meta(meta: Mapping[str, Any], *, origin: str = "meta.json") -> View:
    """The `View` a synthetic sample was rendered from (without its relights)."""
    if not is_synthetic(meta):
        raise UserInputError(f"{origin}: not a synthetic sample with its render parameters ({', '.join(VIEW_KEYS)})")
    return View(
        identity=_build(Identity, meta["identity_parameters"], origin=origin),
        expression=_build(Expression, meta["expression"], origin=origin),
        pose=_build(Pose, meta["pose"], origin=origin),
        camera=_build(Camera, meta["camera"], origin=origin),
        lighting=synthetic_lighting(meta["light"], origin=origin),
    )


@dataclass
class RelitView:
    """A sample's view rendered again: under its own light (to check that the renderer still matches the
    stored data) and under another light (the ground truth)."""

    own_light: np.ndarray  # (H, W, 3) uint8
    other_light: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool


def render_under_lights(
    metas: Sequence[Mapping[str, Any]],
    lights: Sequence[Mapping[str, Any]],
    *,
    device: torch.device | str = "cpu",
) -> list[RelitView]:
    """Render each synthetic sample's view (from its meta) under its own light and under `lights[i]` (a meta
    light entry, e.g. another sample's `meta["light"]`). All samples must share one image size."""
    if len(metas) != len(lights):
        raise ValueError(f"{len(metas)} samples but {len(lights)} lights")
    if not metas:
        return []
    views = []
    for index, (meta, light) in enumerate(zip(metas, lights)):
        origin = f"sample {meta.get('sample', index)}"
        view = view_from_meta(meta, origin=origin)
        views.append(replace(view, relights=(synthetic_lighting(light, origin=origin),)))
    rendered = render_samples(views, device=device)
    return [RelitView(own_light=sample.rgb, other_light=sample.relit[0], mask=sample.mask) for sample in rendered]


def relighting_light(entry: Mapping[str, Any]) -> relighting.Lighting:
    """The relighting code's `Lighting` for a meta light entry: its SH environment and its directional lights.

    The studio also darkens by ambient occlusion and cast shadows, which a Lambertian relighting model has no
    term for; that difference is part of what the relighting error measures.
    """
    lamps = []
    for light in entry.get("lights", ()):
        direction = direction_from_angles(float(light["azimuth"]), float(light["elevation"]))
        lamps.append(
            relighting.DirectionalLight(
                direction=tuple(direction.tolist()),
                intensity=float(light["intensity"]),
                color=tuple(float(c) for c in light["colour"]),
            )
        )
    coefficients = torch.tensor(entry["sh_coefficients"], dtype=torch.float32)
    return relighting.Lighting(lamps=tuple(lamps), sh_coefficients=coefficients)
