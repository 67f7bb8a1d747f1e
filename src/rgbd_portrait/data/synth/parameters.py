"""The parameters of a synthetic portrait and how the studio samples them.

Everything a sample depends on is one of these dataclasses (stored in its meta.json): who (Identity), the
face it makes (Expression), how the head is held (Pose), the camera (Camera) and the light (Lighting).
Sampling takes a `numpy.random.Generator`, so one seed reproduces a whole data set.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from rgbd_portrait.geometry.camera import CameraIntrinsics
from rgbd_portrait.geometry.shading import NUM_SH_COEFFICIENTS, shade_sh

RGB = tuple[float, float, float]

HAIR_STYLES = ("bald", "buzz", "short", "fringe", "bob", "long", "bun", "curly")

# Palettes in sRGB: the studio samples between neighbouring entries, so tones vary continuously.
SKIN_TONES: tuple[RGB, ...] = (
    (0.96, 0.83, 0.75),
    (0.92, 0.74, 0.62),
    (0.82, 0.62, 0.48),
    (0.68, 0.48, 0.34),
    (0.52, 0.34, 0.23),
    (0.36, 0.23, 0.15),
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (0.05, 0.04, 0.04),
    (0.16, 0.10, 0.06),
    (0.33, 0.21, 0.12),
    (0.55, 0.40, 0.25),
    (0.86, 0.73, 0.47),
    (0.56, 0.23, 0.10),
    (0.62, 0.61, 0.59),
    (0.88, 0.87, 0.85),
)
IRIS_COLOURS: tuple[RGB, ...] = (
    (0.20, 0.11, 0.05),
    (0.38, 0.22, 0.10),
    (0.45, 0.38, 0.18),
    (0.30, 0.45, 0.28),
    (0.30, 0.48, 0.72),
    (0.50, 0.56, 0.62),
)
# 35 mm-equivalent sensor width: focal lengths are quoted as on a full-frame camera.
SENSOR_WIDTH_MM = 36.0


@dataclass(frozen=True)
class Identity:
    """A person: head shape (metres or unitless factors around 1), colouring (sRGB in [0, 1]), hair, voice."""

    identity_id: str
    head_width: float
    head_height: float
    head_length: float
    face_length: float
    jaw_width: float
    chin_width: float
    chin_projection: float
    cheek_size: float
    brow_ridge: float
    eye_spacing: float
    eye_opening: float
    nose_length: float
    nose_projection: float
    nose_width: float
    mouth_width: float
    upper_lip: float
    lower_lip: float
    ear_size: float
    ear_protrusion: float
    neck_radius: float
    shoulder_width: float
    skin_colour: RGB
    lip_colour: RGB
    iris_colour: RGB
    hair_colour: RGB
    brow_colour: RGB
    clothing_colour: RGB
    blush: float
    hair_style: str
    hair_thickness: float
    hairline_height: float
    voice_pitch_hz: float


@dataclass(frozen=True)
class Expression:
    """Facial action amounts in [0, 1], gaze in degrees."""

    jaw_open: float = 0.0
    smile: float = 0.0
    blink: float = 0.0
    brow_raise: float = 0.0
    gaze_yaw: float = 0.0
    gaze_pitch: float = 0.0


@dataclass(frozen=True)
class Pose:
    """Head rotation about the top of the neck and body rotation, in degrees (yaw: to the image's right)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    body_yaw: float = 0.0


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking along -z at the subject, which stands `distance` metres away.

    `offset_x`/`offset_y` place the subject's origin (the head centre at rest) in the camera frame.
    """

    size: int
    focal_length_mm: float
    distance: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    @property
    def focal_length_pixels(self) -> float:
        return self.size * self.focal_length_mm / SENSOR_WIDTH_MM

    def intrinsics(self) -> CameraIntrinsics:
        """Principal point at the image centre, pixel centres at half-integers (`rgbd_portrait.geometry.camera`)."""
        focal = self.focal_length_pixels
        return CameraIntrinsics(fx=focal, fy=focal, cx=self.size / 2.0, cy=self.size / 2.0)


@dataclass(frozen=True)
class DirectionalLight:
    """A distant light; azimuth/elevation as in `rgbd_portrait.geometry.shading.direction_from_angles`."""

    azimuth: float
    elevation: float
    intensity: float
    colour: RGB
    casts_shadow: bool


@dataclass(frozen=True)
class Lighting:
    """Radiance of a low-frequency environment (SH, 9 x RGB) plus directional lights, and the backdrop."""

    sh_coefficients: tuple[RGB, ...]
    lights: tuple[DirectionalLight, ...]
    backdrop_top: RGB
    backdrop_bottom: RGB


@dataclass(frozen=True)
class View:
    """Everything one rendered image depends on."""

    identity: Identity
    expression: Expression
    pose: Pose
    camera: Camera
    lighting: Lighting
    relights: tuple[Lighting, ...] = field(default_factory=tuple)


def to_meta(value) -> dict:
    """A parameter dataclass as JSON-ready dict (tuples become lists)."""
    return asdict(value)


def _between(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _from_palette(rng: np.random.Generator, palette: tuple[RGB, ...], jitter: float = 0.03) -> RGB:
    """A colour between two neighbouring palette entries, slightly jittered per channel."""
    position = rng.uniform(0.0, len(palette) - 1)
    index = min(int(position), len(palette) - 2)
    weight = position - index
    colour = (1.0 - weight) * np.asarray(palette[index]) + weight * np.asarray(palette[index + 1])
    colour = colour * (1.0 + rng.uniform(-jitter, jitter, 3))
    return tuple(float(c) for c in np.clip(colour, 0.0, 1.0))


def _hsv_colour(rng: np.random.Generator, *, saturation: tuple[float, float], value: tuple[float, float]) -> RGB:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(float(c) for c in rgb)


def sample_identity(rng: np.random.Generator, identity_id: str) -> Identity:
    skin = _from_palette(rng, SKIN_TONES)
    hair = _from_palette(rng, HAIR_COLOURS, jitter=0.06)
    # Lips are the skin tone shifted towards red and darkened, as in real faces.
    lips = tuple(float(c) for c in np.clip(np.asarray(skin) * np.array([0.90, 0.70, 0.70]) + [0.03, 0, 0], 0, 1))
    # Very light hair (blond, grey) usually comes with darker brows.
    brow = tuple(float(c) for c in np.asarray(hair) * (0.6 if sum(hair) > 1.5 else 0.9))
    style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    thickness = {"bald": 0.0, "buzz": 0.003, "curly": _between(rng, 0.022, 0.034)}.get(
        style, _between(rng, 0.008, 0.016)
    )
    return Identity(
        identity_id=identity_id,
        head_width=_between(rng, 0.068, 0.080),
        head_height=_between(rng, 0.084, 0.094),
        head_length=_between(rng, 0.086, 0.098),
        face_length=_between(rng, 0.90, 1.05),
        jaw_width=_between(rng, 0.046, 0.058),
        chin_width=_between(rng, 0.016, 0.026),
        chin_projection=_between(rng, -0.006, 0.008),
        cheek_size=_between(rng, 0.022, 0.031),
        brow_ridge=_between(rng, 0.0, 0.005),
        eye_spacing=_between(rng, 0.029, 0.034),
        eye_opening=_between(rng, 8.0, 22.0),
        nose_length=_between(rng, 0.86, 1.14),
        nose_projection=_between(rng, 0.008, 0.020),
        nose_width=_between(rng, 0.011, 0.018),
        mouth_width=_between(rng, 0.020, 0.027),
        upper_lip=_between(rng, 0.0035, 0.0065),
        lower_lip=_between(rng, 0.0045, 0.0080),
        ear_size=_between(rng, 0.024, 0.031),
        ear_protrusion=_between(rng, 0.0, 0.005),
        neck_radius=_between(rng, 0.050, 0.062),
        shoulder_width=_between(rng, 0.17, 0.22),
        skin_colour=skin,
        lip_colour=lips,
        iris_colour=_from_palette(rng, IRIS_COLOURS, jitter=0.08),
        hair_colour=hair,
        brow_colour=brow,
        clothing_colour=_hsv_colour(rng, saturation=(0.0, 0.8), value=(0.15, 0.9)),
        blush=_between(rng, 0.0, 1.0),
        hair_style=style,
        hair_thickness=thickness,
        hairline_height=_between(rng, 0.045, 0.070),
        voice_pitch_hz=_between(rng, 95.0, 230.0),
    )


def sample_expression(rng: np.random.Generator) -> Expression:
    """Mostly relaxed faces, with a fair share of open mouths, smiles, blinks and raised brows."""
    return Expression(
        jaw_open=_between(rng, 0.0, 0.1) if rng.uniform() < 0.55 else _between(rng, 0.1, 1.0),
        smile=0.0 if rng.uniform() < 0.45 else _between(rng, 0.0, 1.0),
        blink=_between(rng, 0.0, 0.15) if rng.uniform() < 0.85 else _between(rng, 0.6, 1.0),
        brow_raise=_between(rng, 0.0, 0.2) if rng.uniform() < 0.7 else _between(rng, 0.3, 1.0),
        gaze_yaw=float(np.clip(rng.normal(0.0, 8.0), -20.0, 20.0)),
        gaze_pitch=float(np.clip(rng.normal(0.0, 5.0), -12.0, 12.0)),
    )


def sample_pose(rng: np.random.Generator) -> Pose:
    yaw = float(np.clip(rng.normal(0.0, 16.0), -40.0, 40.0))
    return Pose(
        yaw=yaw,
        pitch=float(np.clip(rng.normal(0.0, 7.0), -20.0, 20.0)),
        roll=float(np.clip(rng.normal(0.0, 5.0), -12.0, 12.0)),
        body_yaw=float(np.clip(0.3 * yaw + rng.normal(0.0, 6.0), -25.0, 25.0)),
    )


def sample_camera(rng: np.random.Generator, size: int) -> Camera:
    """Head-and-shoulders framing: the field of view at the subject spans 30–40 cm whatever the lens."""
    focal_length_mm = _between(rng, 45.0, 110.0)
    field_width = _between(rng, 0.34, 0.44)
    return Camera(
        size=size,
        focal_length_mm=focal_length_mm,
        distance=field_width * focal_length_mm / SENSOR_WIDTH_MM,
        offset_x=_between(rng, -0.015, 0.015),
        offset_y=_between(rng, -0.01, 0.02),
    )


# Unit directions spread over the sphere, for checking that an SH environment never shades negatively.
_CHECK_DIRECTIONS = torch.nn.functional.normalize(
    torch.randn(512, 3, generator=torch.Generator().manual_seed(0)), dim=-1
)


def _light_colour(rng: np.random.Generator) -> RGB:
    """A colour temperature between warm tungsten and cool daylight, normalised to unit mean."""
    warmth = rng.uniform(-1.0, 1.0)
    colour = np.array([1.0 + 0.18 * warmth, 1.0, 1.0 - 0.22 * warmth])
    return tuple(float(c) for c in colour / colour.mean())


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """A soft environment brighter from above, a shadow-casting key light, and often a fill light."""
    ambient = _between(rng, 0.22, 0.45)
    tint = np.asarray(_light_colour(rng))
    # Radiance ambient * (1 + gradient . ω) projects onto Y00 and band 1 as below (Y1m ∝ (y, z, x)).
    gradient_direction = np.array([rng.normal(0, 0.3), 1.0, rng.normal(0, 0.5)])
    gradient = _between(rng, 0.1, 0.6) * gradient_direction / np.linalg.norm(gradient_direction)
    band1_scale = math.sqrt(3.0 / (4.0 * math.pi)) * 4.0 * math.pi / 3.0
    coefficients = np.zeros((NUM_SH_COEFFICIENTS, 3))
    coefficients[0] = ambient * 2.0 * math.sqrt(math.pi) * tint
    coefficients[1:4] = ambient * band1_scale * np.outer(gradient[[1, 2, 0]], tint)
    coefficients[4:] = ambient * rng.normal(0.0, 0.25, (5, 1)) * tint
    shading = shade_sh(_CHECK_DIRECTIONS, torch.tensor(coefficients, dtype=torch.float32))
    if float(shading.min()) < 0.2 * ambient:  # rare: tame the higher bands rather than shade negatively
        coefficients[4:] *= 0.0
    key_azimuth = _between(rng, 15.0, 80.0) * (1 if rng.uniform() < 0.5 else -1)
    lights = [
        DirectionalLight(
            azimuth=key_azimuth,
            elevation=_between(rng, -10.0, 55.0),
            intensity=_between(rng, 0.5, 1.1),
            colour=_light_colour(rng),
            casts_shadow=True,
        )
    ]
    if rng.uniform() < 0.5:
        lights.append(
            DirectionalLight(
                azimuth=-math.copysign(_between(rng, 30.0, 80.0), key_azimuth),
                elevation=_between(rng, -10.0, 30.0),
                intensity=_between(rng, 0.1, 0.35),
                colour=_light_colour(rng),
                casts_shadow=False,
            )
        )
    backdrop = _hsv_colour(rng, saturation=(0.0, 0.35), value=(0.25, 0.85))
    return Lighting(
        sh_coefficients=tuple(tuple(float(c) for c in row) for row in coefficients),
        lights=tuple(lights),
        backdrop_top=backdrop,
        backdrop_bottom=tuple(float(c) * _between(rng, 0.5, 0.9) for c in backdrop),
    )
