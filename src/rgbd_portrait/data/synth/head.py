"""A parametric human head, neck and shoulders as smooth signed-distance fields, with its colouring.

Frames (metres, y up, z towards the face's front, x to the image's right when facing the camera):
- body frame: the object frame of the scene; origin at the head centre at rest, shoulders below.
- head frame: the body frame rotated by the head pose about the top of the neck (`NECK_PIVOT`).
- jaw frame: the head frame rotated about the jaw hinge by the mouth opening; carries chin, mandible,
  lower lip and lower teeth.

`head_rows` turns a `View` into the named numbers the field needs (primitive centres, radii, rotations),
computed once per sample in Python; `HeadScene.distance` evaluates the field for many rays at once.
Paired features (eyes, ears, cheeks...) are modelled once on |x|.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from rgbd_portrait.data.synth.parameters import View
from rgbd_portrait.data.synth.scene import Columns, ParameterTable, Points
from rgbd_portrait.data.synth.sdf import (
    capsule,
    ellipsoid,
    length,
    smooth_intersect,
    smooth_subtract,
    smooth_union,
    sphere,
)

NECK_PIVOT = (0.0, -0.075, -0.015)
JAW_HINGE = (0.0, -0.008, -0.008)
MAX_JAW_ANGLE_DEGREES = 14.0
# The condyle glides forward as the jaw opens, so the chin drops more than it retreats.
JAW_GLIDE = 0.004
# How far in front of the head centre the lower lip sits (its ellipsoid's centre).
LOWER_LIP_DEPTH = 0.082
EYEBALL_RADIUS = 0.012
EYE_HEIGHT = 0.0
EYE_DEPTH = 0.064
CRANIUM_CENTRE_Y = 0.025
CLOSED_LID_ANGLE_DEGREES = -20.0
LOWER_LID_ANGLE_DEGREES = -24.0
# Half-angles of the iris and pupil seen from the eyeball centre (a 12.7 mm iris on a 12 mm-radius eye).
IRIS_HALF_ANGLE_DEGREES = 32.0
PUPIL_HALF_ANGLE_DEGREES = 12.0
# Bounds (centre, radii) of the head without hanging hair (a sphere in the head frame) and of neck,
# shoulders and chest (an ellipsoid in the body frame), to skip rays that miss; the body's also skips
# evaluating the body far from it.
HEAD_CENTRE = (0.0, 0.0, -0.005)
HEAD_BOUND_RADIUS = 0.18
BODY_BOUND = ((0.0, -0.30, -0.03), (0.36, 0.30, 0.15))

# Bounding ellipsoid (head frame: centre, radii) of every part of the face with any opening of the jaw,
# and how close a point must come to a group's bound to need the group evaluated. Within 3 mm of the
# surface (where marching converges and normals are sampled) culling then leaves the field unchanged.
FACE_BOUND = ((0.0, -0.05, 0.04), (0.09, 0.11, 0.10))
CULL_MARGIN = 0.04
# A smooth union of blend k lies at most k / 4 below the plain union; the face chains blends of 1.2, 2, 3,
# 1, 2, 0.3 and 0.3 cm.
FACE_BLEND_DEPTH = (0.012 + 0.02 + 0.03 + 0.01 + 0.02 + 0.003 + 0.003) / 4

# Colours shared by everyone (sRGB).
SCLERA_SRGB = (0.74, 0.69, 0.65)
TEETH_SRGB = (0.74, 0.70, 0.60)
MOUTH_SRGB = (0.30, 0.09, 0.09)

# Material order used by `HeadScene.materials`.
MATERIALS = ("skin", "lips", "eye", "teeth", "mouth", "hair", "clothing")

# Hair styles as (front hairline lowered to a fringe, curtain bottom y or None, bun, curl amplitude).
_HAIR_SHAPES = {
    "bald": (False, None, False, 0.0),
    "buzz": (False, None, False, 0.0),
    "short": (False, None, False, 0.0),
    "fringe": (True, -0.06, False, 0.0),
    "bob": (False, -0.085, False, 0.0),
    "long": (False, -0.23, False, 0.0),
    "bun": (False, None, True, 0.0),
    "curly": (False, -0.04, False, 0.003),
}


def srgb_to_linear(colour):
    colour = np.asarray(colour, dtype=np.float64)
    return np.where(colour <= 0.04045, colour / 12.92, ((colour + 0.055) / 1.055) ** 2.4)


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head frame → body frame. Degrees; yaw turns the face to the image's right, pitch up, roll
    counter-clockwise as seen by the camera."""
    return _rotation_y(math.radians(yaw)) @ _rotation_x(-math.radians(pitch)) @ _rotation_z(math.radians(roll))


def body_rotation(body_yaw: float) -> np.ndarray:
    """Body frame → camera frame."""
    return _rotation_y(math.radians(body_yaw))


def head_rows(view: View) -> dict[str, float]:
    """The per-sample numbers of the head field: primitive placements derived from the view."""
    who, face = view.identity, view.expression
    rows: dict[str, float] = {}

    head_to_body = head_rotation(view.pose.yaw, view.pose.pitch, view.pose.roll)
    for i in range(3):
        for j in range(3):
            rows[f"head_r{i}{j}"] = float(head_to_body[j, i])  # transposed: body → head
    jaw_angle = math.radians(MAX_JAW_ANGLE_DEGREES * face.jaw_open)
    rows["jaw_cos"], rows["jaw_sin"] = math.cos(jaw_angle), math.sin(jaw_angle)
    rows["jaw_glide"] = JAW_GLIDE * face.jaw_open

    width, height, length_ = who.head_width, who.head_height, who.head_length
    cranium_z = 0.078 - length_
    rows.update(cranium_x=width, cranium_y=height, cranium_z=length_, cranium_cz=cranium_z)
    rows["brow_y"] = 0.017 + 0.003 * face.brow_raise
    rows["brow_z"] = 0.078 + who.brow_ridge
    rows["eye_x"] = who.eye_spacing

    # Lids: the upper lid edge sits `eye_opening` degrees above straight ahead and closes with a blink.
    upper = math.radians(who.eye_opening + (CLOSED_LID_ANGLE_DEGREES - who.eye_opening) * face.blink)
    lower = math.radians(LOWER_LID_ANGLE_DEGREES)
    rows.update(upper_lid_cos=math.cos(upper), upper_lid_sin=math.sin(upper))
    rows.update(lower_lid_cos=math.cos(lower), lower_lid_sin=math.sin(lower))
    gaze_yaw, gaze_pitch = math.radians(face.gaze_yaw), math.radians(face.gaze_pitch)
    rows.update(
        gaze_x=math.sin(gaze_yaw) * math.cos(gaze_pitch),
        gaze_y=math.sin(gaze_pitch),
        gaze_z=math.cos(gaze_yaw) * math.cos(gaze_pitch),
    )

    face_length = who.face_length
    rows["face_length"] = face_length
    rows["cheek_r"] = who.cheek_size
    rows["cheek_y"] = -0.010 + 0.005 * face.smile
    rows["cheek_x"] = 0.042 + 0.003 * face.smile
    rows["nose_tip_y"] = -0.040 * who.nose_length
    rows["nose_tip_z"] = 0.094 + who.nose_projection
    rows["nose_width"] = who.nose_width
    rows["nose_tip_r"] = 0.009 + 0.3 * (who.nose_width - 0.011)

    stomion = -0.068 * face_length
    mouth_width = who.mouth_width * (1.0 + 0.12 * face.smile)
    rows.update(stomion=stomion, mouth_width=mouth_width, upper_lip=who.upper_lip, lower_lip=who.lower_lip)
    rows["smile_lift"] = 0.007 * face.smile - 0.001
    rows["smile_pull"] = 0.004 * face.smile
    # How far the lower lip drops when the jaw rotates: sizes the mouth cavity.
    lip = np.array([stomion - who.lower_lip - JAW_HINGE[1], LOWER_LIP_DEPTH - JAW_HINGE[2]])
    rotated = np.array(
        [
            lip[0] * math.cos(jaw_angle) - lip[1] * math.sin(jaw_angle),
            lip[0] * math.sin(jaw_angle) + lip[1] * math.cos(jaw_angle),
        ]
    )
    rows["mouth_opening"] = float(lip[0] - rotated[0])
    rows["jaw_x"] = who.jaw_width
    rows["chin_x"] = who.chin_width
    rows["chin_z"] = 0.068 + who.chin_projection

    ear_y = -0.004
    rows["ear_x"] = width * math.sqrt(max(0.0, 1.0 - ((ear_y - CRANIUM_CENTRE_Y) / height) ** 2)) + 0.002
    rows["ear_x"] += who.ear_protrusion
    rows["ear_z"] = cranium_z + 0.010
    rows["ear_h"] = who.ear_size
    rows["neck_r"] = who.neck_radius
    rows["shoulder_x"] = who.shoulder_width

    fringe, curtain_bottom, bun, curl = _HAIR_SHAPES[who.hair_style]
    thickness = who.hair_thickness if who.hair_style != "bald" else -0.01
    rows["hair_t"] = thickness
    front = 0.025 if fringe else who.hairline_height
    nape_y, front_z, back_z = -0.055, 0.07, 0.078 - 2.0 * length_
    rows["hairline_y"] = front
    rows["hairline_curve"] = (front - nape_y) / (front_z - back_z) ** 2
    if curtain_bottom is None:  # hidden inside the cranium
        rows.update(curtain_cy=CRANIUM_CENTRE_Y, curtain_rx=0.01, curtain_ry=0.01, curtain_rz=0.01)
    else:
        top = CRANIUM_CENTRE_Y + height * 0.6
        rows.update(
            curtain_cy=(top + curtain_bottom) / 2.0,
            curtain_rx=width + thickness + 0.006,
            curtain_ry=(top - curtain_bottom) / 2.0,
            curtain_rz=length_ + thickness - 0.006,
        )
    rows["bun_r"] = 0.032 if bun else 0.01
    rows["bun_y"] = CRANIUM_CENTRE_Y + (0.62 * height if bun else 0.0)
    rows["bun_z"] = cranium_z - (0.78 * length_ if bun else 0.0)
    rows["hair_curl"] = curl
    return rows


def camera_to_body(view: View) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, translation) with p_body = rotation @ p_camera + translation."""
    to_camera = body_rotation(view.pose.body_yaw)
    origin = np.array([view.camera.offset_x, view.camera.offset_y, -view.camera.distance])
    rotation = to_camera.T
    return rotation, -rotation @ origin


def _ellipsoid_bound(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, bound) -> torch.Tensor:
    """A lower bound of the distance to an ellipsoid ((centre), (radii)): its scaled distance times the
    smallest radius, since scaling by 1 / radius stretches distances at most 1 / smallest radius times."""
    (cx, cy, cz), radii = bound
    return (length((x - cx) / radii[0], (y - cy) / radii[1], (z - cz) / radii[2]) - 1.0) * min(radii)


def _linear_column(colour, like: torch.Tensor) -> torch.Tensor:
    """An sRGB colour as linear (3, M) like `like`."""
    return torch.tensor(srgb_to_linear(colour), dtype=like.dtype, device=like.device).view(3, 1).expand_as(like)


def _linear(colour) -> tuple[float, float, float]:
    return tuple(float(c) for c in srgb_to_linear(colour))


def colour_rows(view: View) -> dict[str, float]:
    who = view.identity
    rows: dict[str, float] = {"blush": who.blush}
    for name, colour in (
        ("skin", who.skin_colour),
        ("lips", who.lip_colour),
        ("iris", who.iris_colour),
        ("hair", who.hair_colour),
        ("brow", who.brow_colour),
        ("clothing", who.clothing_colour),
    ):
        for channel, value in zip("rgb", _linear(colour)):
            rows[f"{name}_{channel}"] = value
    return rows


class HeadScene:
    """B heads (one per view) ready to render; see `rgbd_portrait.data.synth.scene.Scene`."""

    def __init__(self, views: Sequence[View], *, device: torch.device | str = "cpu", cull: bool = True):
        """`cull=False` evaluates face and body everywhere (slower; the field near the surface is the same)."""
        self.views = list(views)
        self.cull = cull
        self.parameters = ParameterTable([head_rows(v) | colour_rows(v) for v in self.views], device=device)
        transforms = [camera_to_body(v) for v in self.views]
        self.rotation = torch.tensor(np.stack([r for r, _ in transforms]), dtype=torch.float32, device=device)
        self.translation = torch.tensor(np.stack([t for _, t in transforms]), dtype=torch.float32, device=device)
        bounds = []
        for view in self.views:
            centre = np.asarray(NECK_PIVOT) + head_rotation(view.pose.yaw, view.pose.pitch, view.pose.roll) @ (
                np.asarray(HEAD_CENTRE) - np.asarray(NECK_PIVOT)
            )
            bounds.append([[*centre, *(HEAD_BOUND_RADIUS,) * 3], [*BODY_BOUND[0], *BODY_BOUND[1]]])
        self.bounding_ellipsoids = torch.tensor(bounds, dtype=torch.float32, device=device)
        self._curly = self.parameters.any_nonzero("hair_curl")
        self._hair_pieces = any(_HAIR_SHAPES[view.identity.hair_style][1:3] != (None, False) for view in self.views)

    # -- geometry -------------------------------------------------------------------------------------

    @staticmethod
    def _to_head(points: Points, p: Columns) -> Points:
        x, y, z = points[0] - NECK_PIVOT[0], points[1] - NECK_PIVOT[1], points[2] - NECK_PIVOT[2]
        return (
            p["head_r00"] * x + p["head_r01"] * y + p["head_r02"] * z + NECK_PIVOT[0],
            p["head_r10"] * x + p["head_r11"] * y + p["head_r12"] * z + NECK_PIVOT[1],
            p["head_r20"] * x + p["head_r21"] * y + p["head_r22"] * z + NECK_PIVOT[2],
        )

    @staticmethod
    def _to_jaw(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, p: Columns) -> Points:
        """Head frame → jaw frame: undo the jaw's rotation about the hinge (x axis)."""
        dy, dz = y - JAW_HINGE[1], z - JAW_HINGE[2]
        c, s = p["jaw_cos"], p["jaw_sin"]
        return x, c * dy + s * dz + JAW_HINGE[1], c * dz - s * dy + JAW_HINGE[2] - p["jaw_glide"]

    def _face(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, p: Columns, cranium: torch.Tensor):
        """The face on the cranium (head frame): brow, cheeks, eye sockets, nose, jaw, lips, mouth, eyes.

        Returns the parts `skin`, `surface`, `lips`, `eye`, `lids`, `teeth` and `mouth` (see `_parts`).
        """
        ax = x.abs()
        face_length = p["face_length"]
        brow = ellipsoid(ax, y, z, (0.021, p["brow_y"], p["brow_z"] - 0.011), (0.025, 0.009, 0.011))
        skin = smooth_union(cranium, brow, 0.012)
        maxilla = ellipsoid(x, y, z, (0.0, -0.046 * face_length, 0.036), (0.048, 0.044 * face_length, 0.056))
        skin = smooth_union(skin, maxilla, 0.02)
        cheeks = sphere(ax, y, z, (p["cheek_x"], p["cheek_y"], 0.052), p["cheek_r"])
        skin = smooth_union(skin, cheeks, 0.03)
        eye_x = p["eye_x"]
        socket = ellipsoid(ax, y, z, (eye_x, EYE_HEIGHT + 0.002, EYE_DEPTH + 0.010), (0.018, 0.0135, 0.012))
        skin = smooth_subtract(skin, socket, 0.006)

        tip_y, tip_z = p["nose_tip_y"], p["nose_tip_z"]
        nose = capsule(x, y, z, (0.0, 0.012, 0.083), (0.0, tip_y, tip_z - 0.006), 0.005, 0.0075)
        nose = smooth_union(nose, sphere(x, y, z, (0.0, tip_y - 0.002, tip_z - 0.008), p["nose_tip_r"]), 0.008)
        alae = sphere(ax, y, z, (p["nose_width"], tip_y - 0.007, tip_z - 0.018), 0.0075)
        nose = smooth_union(nose, alae, 0.006)
        nostrils = ellipsoid(ax, y, z, (0.0055, tip_y - 0.0115, tip_z - 0.011), (0.0035, 0.0022, 0.005))
        nose = smooth_subtract(nose, nostrils, 0.002)
        skin = smooth_union(skin, nose, 0.01)

        # The mouth: lips and teeth bend with the smile (corners up and back).
        stomion, mouth_width = p["stomion"], p["mouth_width"]
        bend = (x / mouth_width).square()
        by, bz = y - p["smile_lift"] * bend, z + p["smile_pull"] * bend
        upper_lip = ellipsoid(x, by, bz, (0.0, stomion + p["upper_lip"], 0.084), (mouth_width, p["upper_lip"], 0.0085))

        jx, jy, jz = self._to_jaw(x, y, z, p)
        jaw_by, jaw_bz = jy - p["smile_lift"] * bend, jz + p["smile_pull"] * bend
        lower_face = ellipsoid(
            jx, jy, jz, (0.0, -0.078 * face_length, 0.028), (p["jaw_x"] * 0.9, 0.042 * face_length, 0.058)
        )
        mandible = capsule(
            jx.abs(),
            jy,
            jz,
            (p["jaw_x"] - 0.006, -0.062 * face_length, -0.012),
            (p["chin_x"] * 0.7, -0.110 * face_length, p["chin_z"] - 0.010),
            0.013,
        )
        chin = ellipsoid(jx, jy, jz, (0.0, -0.106 * face_length, p["chin_z"]), (p["chin_x"], 0.017, 0.016))
        jaw = smooth_union(smooth_union(lower_face, mandible, 0.02), chin, 0.015)
        lower_lip = ellipsoid(
            jx, jaw_by, jaw_bz, (0.0, stomion - p["lower_lip"], LOWER_LIP_DEPTH), (mouth_width, p["lower_lip"], 0.0085)
        )
        skin = smooth_union(skin, jaw, 0.02)
        lips = torch.minimum(upper_lip, lower_lip)
        surface = smooth_union(skin, lips, 0.003)

        opening = p["mouth_opening"]
        mouth = ellipsoid(
            x, by, bz, (0.0, stomion - 0.5 * opening, 0.080), (mouth_width * 0.88, 0.0012 + 0.5 * opening, 0.016)
        )
        surface = smooth_subtract(surface, mouth, 0.002)
        upper_teeth = ellipsoid(x, by, bz, (0.0, stomion + 0.004, 0.073), (mouth_width * 0.8, 0.005, 0.0055))
        lower_teeth = ellipsoid(
            jx, jaw_by, jaw_bz, (0.0, stomion - 0.0045, 0.072), (mouth_width * 0.78, 0.0045, 0.0055)
        )
        teeth = torch.minimum(upper_teeth, lower_teeth)
        surface = torch.minimum(surface, teeth)

        # Eyes: an eyeball in each socket, covered by lids (a slightly larger sphere cut by a plane
        # through the eye centre: above the upper lid angle, below the lower one).
        ex, ey, ez = ax - eye_x, y - EYE_HEIGHT, z - EYE_DEPTH
        eyeball = length(ex, ey, ez) - EYEBALL_RADIUS
        lid_sphere = eyeball - 0.0016
        # The lid edges curve towards the eye corners, giving the opening its almond shape.
        corner = ex.square() * (0.9 / EYEBALL_RADIUS)
        upper_lid = torch.maximum(lid_sphere, p["upper_lid_sin"] * ez - p["upper_lid_cos"] * (ey + corner))
        lower_lid = torch.maximum(lid_sphere, p["lower_lid_cos"] * (ey - 0.5 * corner) - p["lower_lid_sin"] * ez)
        lids = torch.minimum(upper_lid, lower_lid)
        surface = torch.minimum(smooth_union(surface, lids, 0.003), eyeball)
        return {
            "skin": skin,
            "surface": surface,
            "lips": lips,
            "eye": eyeball,
            "lids": lids,
            "teeth": teeth,
            "mouth": -mouth,
        }

    def _parts(self, points: Points, p: Columns, *, every_part: bool = True) -> dict[str, torch.Tensor]:
        """Signed distances of the named parts; `surface` is the whole field (alone if not `every_part`).

        The face and the body, most of the field's work, are evaluated only for points near their bounds
        (`FACE_BOUND`, `BODY_BOUND`): most points a ray visits are near one of them only. Elsewhere their
        parts take a lower bound of their distance, so the field within 3 mm of the surface is the same as
        without culling, and a lower bound of it further out.
        """
        x, y, z = self._to_head(points, p)
        ax = x.abs()
        cranium = ellipsoid(
            x, y, z, (0.0, CRANIUM_CENTRE_Y, p["cranium_cz"]), (p["cranium_x"], p["cranium_y"], p["cranium_z"])
        )
        face_bound = _ellipsoid_bound(x, y, z, FACE_BOUND)
        near = face_bound < CULL_MARGIN
        if self.cull and not bool(near.all()):
            rays = near.nonzero().squeeze(1)
            face = self._face(x[rays], y[rays], z[rays], p.select(rays), cranium[rays])
            # Far from the face, the field is the cranium's or the face's bound, whichever is nearer; the
            # face's smooth unions can dig below both by at most `FACE_BLEND_DEPTH`.
            far = torch.minimum(cranium, face_bound - FACE_BLEND_DEPTH)
            parts = {"surface": far.index_put((rays,), face["surface"])}
            if every_part:
                parts |= {name: face_bound.index_put((rays,), face[name]) for name in face if name != "surface"}
                parts["skin"] = far.index_put((rays,), face["skin"])
        else:
            parts = self._face(x, y, z, p, cranium)

        ear_h = p["ear_h"]
        ear = ellipsoid(ax, y, z, (p["ear_x"], -0.004, p["ear_z"]), (0.0085, ear_h, 0.6 * ear_h))
        concha = ellipsoid(
            ax, y, z, (p["ear_x"] + 0.0075, -0.006, p["ear_z"] + 0.002), (0.006, 0.55 * ear_h, 0.33 * ear_h)
        )
        ear = smooth_subtract(ear, concha, 0.003)
        surface = smooth_union(parts["surface"], ear, 0.005)

        thickness = p["hair_t"]
        shell = ellipsoid(
            x,
            y,
            z,
            (0.0, CRANIUM_CENTRE_Y + 0.004 + 0.3 * thickness, p["cranium_cz"] - 0.003),
            (p["cranium_x"] + thickness, p["cranium_y"] + 1.5 * thickness, p["cranium_z"] + 1.2 * thickness),
        )
        if self._curly:
            shell = shell - p["hair_curl"] * torch.sin(180.0 * x) * torch.sin(180.0 * y) * torch.sin(180.0 * z)
        behind_hairline = (0.07 - z).clamp_min(0.0)
        region = p["hairline_y"] - p["hairline_curve"] * behind_hairline.square() - y
        hair = smooth_intersect(shell, region, 0.008)
        if self._hair_pieces:  # curtains and buns; hidden inside the cranium for styles without them
            curtain = ellipsoid(
                x,
                y,
                z,
                (0.0, p["curtain_cy"], p["cranium_cz"] - 0.004),
                (p["curtain_rx"], p["curtain_ry"], p["curtain_rz"]),
            )
            # Hair hangs behind the neck below the jaw, beside the face above it.
            curtain = smooth_intersect(curtain, z - 0.015 + 0.6 * (-0.04 - y).clamp_min(0.0), 0.01)
            bun = sphere(x, y, z, (0.0, p["bun_y"], p["bun_z"]), p["bun_r"])
            hair = smooth_union(hair, torch.minimum(curtain, bun), 0.015)
        surface = torch.minimum(surface, hair)

        # Neck and torso live in the body frame: they do not turn with the head.
        bx, by, bz = points
        body_bound = _ellipsoid_bound(bx, by, bz, BODY_BOUND)
        near = body_bound < CULL_MARGIN
        if self.cull and not bool(near.all()):
            rays = near.nonzero().squeeze(1)
            body = self._body(bx[rays], by[rays], bz[rays], p.select(rays))
            neck, clothing = (body_bound.index_put((rays,), body[name]) for name in ("neck", "clothing"))
        else:
            neck, clothing = self._body(bx, by, bz, p).values()
        surface = smooth_union(surface, smooth_union(neck, clothing, 0.035), 0.012)
        if not every_part:
            return {"surface": surface}
        skin = smooth_union(smooth_union(parts["skin"], ear, 0.005), neck, 0.012)
        return {**parts, "surface": surface, "skin": skin, "hair": hair, "clothing": clothing}

    @staticmethod
    def _body(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, p: Columns) -> dict[str, torch.Tensor]:
        """Neck and clothed shoulders, in the body frame."""
        neck = capsule(x, y, z, (0.0, -0.30, -0.035), (0.0, NECK_PIVOT[1], -0.025), p["neck_r"])
        shoulders = capsule(x.abs(), y, z, (0.0, -0.215, -0.03), (p["shoulder_x"], -0.265, -0.035), 0.058)
        chest = ellipsoid(x, y, z, (0.0, -0.36, -0.025), (p["shoulder_x"] * 0.95, 0.15, 0.105))
        return {"neck": neck, "clothing": smooth_union(shoulders, chest, 0.05)}

    def distance(self, points: Points, parameters: Columns) -> torch.Tensor:
        return self._parts(points, parameters, every_part=False)["surface"]

    # -- appearance -----------------------------------------------------------------------------------

    def materials(self, points: Points, parameters: Columns) -> torch.Tensor:
        """Index into MATERIALS (M,) of the part whose surface each point lies on (smallest |distance|)."""
        parts = self._parts(points, parameters)
        lids_or_skin = torch.minimum(parts["skin"].abs(), parts["lids"].abs())
        candidates = torch.stack(
            [
                lids_or_skin,
                parts["lips"].abs(),
                parts["eye"].abs(),
                parts["teeth"].abs(),
                parts["mouth"].abs(),
                parts["hair"].abs(),
                parts["clothing"].abs(),
            ]
        )
        return candidates.argmin(0)

    def albedo(self, points: Points, parameters: Columns) -> torch.Tensor:
        p = parameters
        material = self.materials(points, p)
        x, y, z = self._to_head(points, p)
        ax = x.abs()

        def colour(name: str) -> torch.Tensor:
            return torch.stack((p[f"{name}_r"], p[f"{name}_g"], p[f"{name}_b"]))

        # Skin: base tone with blush on cheeks and nose, brows, and a faint mottling.
        skin = colour("skin")
        cheek_weight = torch.exp(-((ax - 0.042).square() + (y + 0.02).square() + (z - 0.07).square()) / 0.0004)
        nose_weight = torch.exp(
            -(x.square() + (y - p["nose_tip_y"]).square() + (z - p["nose_tip_z"]).square()) / 0.0002
        )
        redness = p["blush"] * (0.5 * cheek_weight + 0.35 * nose_weight)
        skin = skin * torch.stack((1.0 + 0.10 * redness, 1.0 - 0.18 * redness, 1.0 - 0.15 * redness))
        mottling = 1.0 + 0.04 * torch.sin(610.0 * x + 37.0) * torch.sin(570.0 * y + 11.0) * torch.sin(530.0 * z)
        skin = skin * mottling
        brow_offset = (ax - p["eye_x"] - 0.002) / 0.021
        brow_centre = EYE_HEIGHT + 0.021 + 0.007 * (p["brow_y"] - 0.017) / 0.003 - 0.005 * brow_offset.square()
        brow_half_height = 0.0035 * (1.0 - 0.45 * brow_offset.clamp(-1.0, 1.0))
        in_brow = (brow_offset.abs() < 1.0) & ((y - brow_centre).abs() < brow_half_height) & (z > 0.05)
        skin = torch.where(in_brow, colour("brow"), skin)
        # Lashes: a dark line along the edge of the upper lid.
        ex, ey, ez = ax - p["eye_x"], y - EYE_HEIGHT, z - EYE_DEPTH
        corner = ex.square() * (0.9 / EYEBALL_RADIUS)
        lid_edge = p["upper_lid_sin"] * ez - p["upper_lid_cos"] * (ey + corner)
        on_lid = (length(ex, ey, ez) - EYEBALL_RADIUS - 0.0016).abs() < 0.001
        lashes = on_lid & (lid_edge > -0.0015) & (lid_edge < 0.0005) & (ez > 0)
        skin = torch.where(lashes, 0.3 * colour("brow"), skin)

        lips = colour("lips") * (1.0 + 0.05 * torch.sin(900.0 * x))

        # Eyes: sclera, iris (darker towards the limbus) and pupil, by the angle to the gaze direction.
        # ex is mirrored for the eye on the image's left (x < 0); mirror the gaze with it.
        gaze_cos = (ex * x.sign() * p["gaze_x"] + ey * p["gaze_y"] + ez * p["gaze_z"]) / EYEBALL_RADIUS
        iris_cos, pupil_cos = (
            math.cos(math.radians(IRIS_HALF_ANGLE_DEGREES)),
            math.cos(math.radians(PUPIL_HALF_ANGLE_DEGREES)),
        )
        iris_radial = ((1.0 - gaze_cos) / (1.0 - iris_cos)).clamp(0.0, 1.0)
        iris = colour("iris") * (1.1 - 0.5 * iris_radial.square())
        sclera = _linear_column(SCLERA_SRGB, iris)
        eye = torch.where(gaze_cos > iris_cos, iris, sclera)
        eye = torch.where(gaze_cos > pupil_cos, torch.full_like(eye, 0.01), eye)

        teeth = _linear_column(TEETH_SRGB, eye)
        mouth = _linear_column(MOUTH_SRGB, eye)
        strands = torch.sin(1700.0 * x + 50.0 * torch.sin(130.0 * z) + 30.0 * torch.sin(95.0 * y)) * torch.sin(
            400.0 * z + 9.0
        )
        hair = colour("hair") * (0.92 + 0.12 * strands)
        bx, by, bz = points
        clothing = colour("clothing") * (0.92 + 0.08 * torch.sin(60.0 * bx + 25.0 * by))

        choices = torch.stack((skin, lips, eye, teeth, mouth, hair, clothing))  # (materials, 3, M)
        index = material.view(1, 1, -1).expand(1, 3, -1)
        return choices.gather(0, index).squeeze(0).clamp(0.0, 1.0)
