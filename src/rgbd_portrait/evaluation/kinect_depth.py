"""Image→depth against real measured depth: rap3df's Kinect v2 head-and-shoulder captures.

A capture folder `<person>/<pose>_<k>/` holds `rgb.png` (registered to the depth, background black),
`depth_raw.png` (16-bit Kinect units, larger = farther, 0 = no data) and `mask.png` (`data.rgbd_captures`).
People a model was trained on (`rgbd-portrait prepare` made training samples of some of the captures) are
left out by name. Each image goes through
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
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rgbd_portrait.data.image_io import colorize_depth
from rgbd_portrait.data.rgbd_captures import (
    PERSON_DEPTH_RANGE,
    DepthCapture,
    find_captures,
    person_pixels,
    read_capture,
)
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

FACE_MESH = "face mesh (its own landmark depth)"
SHEET_NAME = "rap3df_sheet.png"
DENSE_KEYS = ("abs_rel", "delta1")


def evaluate_kinect_depth(
    pipeline,
    root: str | os.PathLike,
    *,
    options: EvaluationOptions,
    out_dir: str | os.PathLike,
    find_landmarks: LandmarkFinder,
    baseline_pipeline=None,
    exclude_people: Collection[str] = (),
    show_progress: bool = True,
) -> dict[str, Any]:
    """Image→depth on rap3df captures against their Kinect depth; see the module docstring.

    `options.limit` caps the captures (people in turn) after those of `exclude_people` are left out;
    `find_landmarks` gives each image's face-mesh landmarks.
    """
    found = find_captures(root)
    kept = [folder for folder in found if folder.parent.name not in exclude_people]
    if not kept:
        raise UserInputError(f"{root}: every person's captures are left out as trained on")
    folders = people_in_turn(kept, lambda folder: folder.parent.name)[: options.limit]
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
        "people_left_out": len({folder.parent.name for folder in found} & set(exclude_people)),
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


def _sheet_row(capture: DepthCapture, region: torch.Tensor, predictions: Mapping[str, torch.Tensor]):
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
        f"{section['scored']} of {section['captures']} captures scored ({section['people']} people"
        + (f"; {section['people_left_out']} people trained on left out" if section.get("people_left_out") else "")
        + f"); no face found "
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
