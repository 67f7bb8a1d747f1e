"""Image→depth against real measured depth: rap3df's Kinect v2 head-and-shoulder captures.

A capture folder `<person>/<pose>_<k>/` holds `rgb.png` (registered to the depth, background black),
`depth_raw.png` (16-bit Kinect units, larger = farther, 0 = no data) and `mask.png`. Each image goes through
the pipeline as a user's photo does: framed by the model's default fit (its `fit` setting: a face-centred
square crop, or the face framed as in training), depth mapped back to the image's pixels (`match_input_size`),
no mask given. MediaPipe's face mesh on the image gives 478 landmarks; captures where it
finds no face are left out (and counted).

The person
    The Kinect-valid pixels whose depth lies within `PERSON_DEPTH_RANGE` times the face's depth (the median
    Kinect depth at the landmarks): some captures' masks also hold the wall behind, at 1.4 times the face's
    depth or more, while shoulders and a bowed head's body stay below 1.35 times. Only pixels inside the
    square the pipeline covers count, the same pixels for every row.
dense
    AbsRel and δ<1.25 after a least-squares scale (kept >= 0, so that near and far swapped are not flipped into
    a good fit) and shift on the person. The raw units are taken as proportional to distance.
Spearman at the landmarks
    The depth at each landmark's nearest pixel against the Kinect depth there, over the landmarks on the person;
    captures with fewer than `MIN_LANDMARKS` such landmarks are left out (and counted).
Baselines
    The radial map (distance from the landmarks' centre); the face mesh itself, its landmarks' own depth
    against the Kinect depth (Spearman only: it has no depth between landmarks); a baseline model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rgbd_portrait.data.image_io import colorize_depth
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.baselines import radial_depth
from rgbd_portrait.evaluation.metrics import depth_metrics, rank_correlation
from rgbd_portrait.evaluation.real_support import (
    BASELINE_MODEL,
    MIN_LANDMARKS,
    RADIAL,
    SHEET_PEOPLE,
    LandmarkFinder,
    format_table,
    landmark_centre,
    landmarks_on,
    people_in_turn,
    values_at_landmarks,
    write_sheet,
)
from rgbd_portrait.evaluation.results import MetricAccumulator
from rgbd_portrait.evaluation.runner import EvaluationOptions, mean_rows, predict_unit_depth

CAPTURE_FILES = ("rgb.png", "depth_raw.png", "mask.png")
PERSON_DEPTH_RANGE = (0.7, 1.35)
FACE_MESH = "face mesh (its own landmark depth)"
SHEET_NAME = "rap3df_sheet.png"
DENSE_KEYS = ("abs_rel", "delta1")
_CAPTURE_NAME = re.compile(r"^(?P<pose>.+)_(?P<take>\d+)$")


@dataclass
class KinectCapture:
    """One rap3df capture: the image, the raw Kinect depth (0 = no data) and where the depth is valid."""

    person: str
    name: str  # "<pose>_<k>"
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: torch.Tensor  # (H, W) float32, raw Kinect units

    @property
    def key(self) -> str:
        return f"{self.person}/{self.name}"


def find_captures(root: str | os.PathLike) -> list[Path]:
    """The capture folders `<person>/<pose>_<k>/` under `root` with all of rgb.png, depth_raw.png and mask.png."""
    root = Path(root)
    folders = sorted(path.parent for path in root.glob("*/*/rgb.png") if _CAPTURE_NAME.match(path.parent.name))
    folders = [folder for folder in folders if all((folder / name).is_file() for name in CAPTURE_FILES)]
    if not folders:
        raise UserInputError(
            f"{root}: no rap3df capture (<person>/<pose>_<k>/ with {', '.join(CAPTURE_FILES)}) in this folder"
        )
    return folders


def read_capture(folder: str | os.PathLike) -> KinectCapture:
    """A capture folder's image and Kinect depth, checked to match in size; the depth is zeroed off mask.png."""
    folder = Path(folder)
    try:
        rgb = np.asarray(Image.open(folder / "rgb.png").convert("RGB"))
        raw = np.asarray(Image.open(folder / "depth_raw.png"))
        mask = np.asarray(Image.open(folder / "mask.png").convert("L")) > 0
    except OSError as error:
        raise UserInputError(f"{folder}: cannot read the capture ({error})") from error
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise UserInputError(f"{folder / 'depth_raw.png'}: expected a 16-bit greyscale depth PNG, got {raw.dtype}")
    if raw.shape != rgb.shape[:2] or mask.shape != rgb.shape[:2]:
        raise UserInputError(
            f"{folder}: rgb.png {rgb.shape[:2]}, depth_raw.png {raw.shape} and mask.png {mask.shape} differ in size"
        )
    depth = torch.from_numpy(np.where(mask, raw, 0).astype(np.float32))
    return KinectCapture(person=folder.parent.name, name=folder.name, rgb=rgb, depth=depth)


def person_pixels(depth: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """The person (H, W) bool: Kinect-valid pixels within `PERSON_DEPTH_RANGE` of the face's depth (the median
    Kinect depth at the landmarks); all-False when no landmark has Kinect depth."""
    values, inside = values_at_landmarks(depth, landmarks)
    measured = values[inside & (values > 0)]
    if len(measured) == 0:
        return torch.zeros_like(depth, dtype=torch.bool)
    face_depth = measured.median()
    low, high = PERSON_DEPTH_RANGE
    return (depth >= low * face_depth) & (depth <= high * face_depth)


def evaluate_kinect_depth(
    pipeline,
    root: str | os.PathLike,
    *,
    options: EvaluationOptions,
    out_dir: str | os.PathLike,
    find_landmarks: LandmarkFinder,
    baseline_pipeline=None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Image→depth on rap3df captures against their Kinect depth; see the module docstring.

    `options.limit` caps the captures (people in turn); `find_landmarks` gives each image's face-mesh landmarks.
    """
    folders = people_in_turn(find_captures(root), lambda folder: folder.parent.name)[: options.limit]
    names = ["model", *([BASELINE_MODEL] if baseline_pipeline is not None else []), RADIAL, FACE_MESH]
    rows = {name: MetricAccumulator() for name in names}
    without_face, few_landmarks, scored_keys, landmark_counts, sheet_rows = [], [], [], [], []
    # The sheet shows captures spread over the list, so that it holds several poses and people.
    sheet_indices = {round(index) for index in np.linspace(0, len(folders) - 1, SHEET_PEOPLE)}
    for index, folder in enumerate(
        tqdm(folders, desc="rap3df: image→depth", unit="capture", disable=not show_progress)
    ):
        capture = read_capture(folder)
        landmarks = find_landmarks(capture.rgb)
        if landmarks is None:
            without_face.append(capture.key)
            continue
        predictions, covered = {}, torch.ones_like(capture.depth, dtype=torch.bool)
        for name, model in (("model", pipeline), (BASELINE_MODEL, baseline_pipeline)):
            if model is not None:
                depth, mask = predict_unit_depth(
                    model, [capture.rgb], [capture.key], options=options, center_on_face=True
                )
                predictions[name], covered = depth[0], covered & mask[0]
        region = person_pixels(capture.depth, landmarks) & covered
        scored = landmarks_on(region, landmarks)
        if int(scored.sum()) < MIN_LANDMARKS:
            few_landmarks.append(capture.key)
            continue
        scored_keys.append(capture.key)
        landmark_counts.append(int(scored.sum()))
        predictions[RADIAL] = radial_depth(tuple(capture.depth.shape), landmark_centre(landmarks))
        kinect_values, _ = values_at_landmarks(capture.depth, landmarks)
        for name, prediction in predictions.items():
            dense = depth_metrics(prediction, capture.depth, region, nonnegative_scale=True)
            predicted_values, _ = values_at_landmarks(prediction, landmarks)
            rows[name].update(
                {key: dense[key] for key in DENSE_KEYS}
                | {"landmark_spearman": rank_correlation(predicted_values, kinect_values, scored)}
            )
        mesh_depth = torch.as_tensor(np.asarray(landmarks, dtype=np.float64)[:, 2])
        rows[FACE_MESH].update({"landmark_spearman": rank_correlation(mesh_depth, kinect_values, scored)})
        if index in sheet_indices:
            sheet_rows.append(_sheet_row(capture, region, predictions))
    results: dict[str, Any] = {
        "data": str(root),
        "captures": len(folders),
        "scored": len(scored_keys),
        "people": len({key.split("/")[0] for key in scored_keys}),
        "without_face": without_face,
        "too_few_landmarks": few_landmarks,
        "fits": {
            name: model.model.settings.fit
            for name, model in (("model", pipeline), (BASELINE_MODEL, baseline_pipeline))
            if model is not None
        },
        "rows": mean_rows(rows),
    }
    if landmark_counts:
        results["landmarks_per_capture"] = float(np.mean(landmark_counts))
    if sheet_rows:
        results["sheet"] = write_sheet(Path(out_dir) / SHEET_NAME, sheet_rows).name
    return results


def _sheet_row(capture: KinectCapture, region: torch.Tensor, predictions: Mapping[str, torch.Tensor]):
    """The image, the Kinect depth and each prediction, colourised over the scored pixels (near = red)."""
    valid = region.numpy()
    row = [
        (f"{capture.person[:6]} {capture.name}", capture.rgb),
        ("Kinect depth", colorize_depth(capture.depth.numpy(), mask=valid, value_range=None)),
    ]
    for name, depth in predictions.items():
        row.append((name.split(" (")[0], colorize_depth(depth.numpy(), mask=valid, value_range=None)))
    return row


def _fits(section: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {fit}" for name, fit in section.get("fits", {}).items()) or "face-centred crop"


def format_kinect_depth(section: Mapping[str, Any]) -> str:
    """The rap3df results as Markdown."""
    lines = [
        f"## Real depth (Kinect v2): `{section['data']}`",
        "",
        f"{section['scored']} of {section['captures']} captures scored ({section['people']} people); no face found "
        f"in {len(section['without_face'])}, fewer than {MIN_LANDMARKS} landmarks on the person in "
        f"{len(section['too_few_landmarks'])}. Images given as a user's photo (framed by each model's default fit: "
        f"{_fits(section)}; depth mapped back to the image). AbsRel and δ after a least-squares scale (kept >= 0) "
        f"and shift on the person's Kinect pixels (within {PERSON_DEPTH_RANGE[0]}–{PERSON_DEPTH_RANGE[1]}× the "
        "face's depth) inside the predicted squares of every model; Spearman between depth and Kinect depth at the "
        "face-mesh landmarks on them"
        + (f" ({section['landmarks_per_capture']:.0f} per capture)." if "landmarks_per_capture" in section else "."),
        "",
        format_table(section),
    ]
    if "sheet" in section:
        lines += [f"Depth maps side by side: `{section['sheet']}`.", ""]
    return "\n".join(lines)
