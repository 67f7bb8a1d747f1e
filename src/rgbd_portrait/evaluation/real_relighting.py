"""Relighting real faces between known lights: Extended Yale B (cropped).

Files `yaleBNN/yaleBNN_P00A±aaaE±ee.png` show one person in the frontal pose lit by a single point light at
azimuth A and elevation E degrees (168×192 greyscale, the face filling the frame). For each light pair of
`LIGHT_PAIRS`, the person's photo under the source light is relit to the target light with
`RGBDPortraitPipeline.relight` from its predicted depth, as a user would (framed by the model's default fit,
results at the photo's pixels), once with the original light estimated by the pipeline and once with it known,
and compared with the person's photo under the target light: PSNR and SSIM, greyscale, on the face region.
Baselines: the input unrelit, and a baseline model.

Light convention
    `direction_from_angles`, which every light of the pipeline goes through: azimuth 0 = from the camera,
    positive = from the image's right (the subject's left); elevation positive = from above. In Yale B a
    positive A lights the image's *left* side of the face and a positive E lights from above: the data shows
    it (`light_side_agreement`, reported with every run). A Yale light (A, E) is therefore our (-A, E)
    (`yale_light`): one lamp of intensity 1 plus an ambient of `YALE_AMBIENT` (the data set's ambient-only
    photos are about 1 % as bright as the frontally lit ones).
Face region
    A central ellipse with semi-axes `FACE_ELLIPSE` times the width and height (the crops are aligned by the
    data set, and MediaPipe finds no face in crops this tight to outline one), inside the square the pipeline
    relit.
Light pairs
    Frontal (A+000E+00) to ±25°, ±50° and ±70° azimuth, to above (E+45) and below (E-35), and from ±25° and
    ±50° back to frontal. Lights with |A| > 85° or |E| > 60° leave most of the face in shadow and are not used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.metrics import image_metrics
from rgbd_portrait.evaluation.real_support import (
    BASELINE_MODEL,
    SHEET_PEOPLE,
    format_table,
    people_in_turn,
    write_sheet,
)
from rgbd_portrait.evaluation.results import MetricAccumulator
from rgbd_portrait.evaluation.runner import EvaluationOptions, mean_rows, predict_unit_depth
from rgbd_portrait.geometry.relighting import DirectionalLight, Lighting

# (azimuth, elevation) in Yale B's degrees.
FRONTAL = (0, 0)
LIGHT_PAIRS = (
    *((FRONTAL, (azimuth, 0)) for azimuth in (25, -25, 50, -50, 70, -70)),
    (FRONTAL, (0, 45)),
    (FRONTAL, (0, -35)),
    *(((azimuth, 0), FRONTAL) for azimuth in (25, -25, 50, -50)),
)
# Yale B's azimuth is positive towards the image's left; `direction_from_angles` towards the image's right.
YALE_AZIMUTH_SIGN = -1
YALE_AMBIENT = 0.01
FACE_ELLIPSE = (0.42, 0.43)
SHEET_PAIR = (FRONTAL, (50, 0))
SHEET_NAME = "yaleb_sheet.png"
UNRELIT = "input unrelit"
METRIC_KEYS = ("psnr", "ssim")
_PHOTO_NAME = re.compile(r"^(?P<person>.+)_P(?P<pose>\d+)A(?P<azimuth>[+-]\d+)E(?P<elevation>[+-]\d+)\.png$")


def yale_light(azimuth: float, elevation: float) -> Lighting:
    """The pipeline's `Lighting` for Yale B's point light at (azimuth, elevation) in Yale B's degrees."""
    lamp = DirectionalLight.from_angles(YALE_AZIMUTH_SIGN * azimuth, elevation)
    return Lighting(lamps=(lamp,), ambient=YALE_AMBIENT)


def find_photos(root: str | os.PathLike) -> dict[tuple[str, str], dict[tuple[int, int], Path]]:
    """Yale B photos under `root` by (person, pose), then by light (azimuth, elevation)."""
    root = Path(root)
    photos: dict[tuple[str, str], dict[tuple[int, int], Path]] = {}
    for path in sorted(root.glob("*/*.png")):
        match = _PHOTO_NAME.match(path.name)
        if match:
            light = (int(match["azimuth"]), int(match["elevation"]))
            photos.setdefault((match["person"], match["pose"]), {})[light] = path
    if not photos:
        raise UserInputError(f"{root}: no Extended Yale B photo (<person>/<person>_P00A+000E+00.png) in this folder")
    return photos


def read_photo(path: Path) -> np.ndarray:
    """A greyscale photo as (H, W) uint8."""
    try:
        return np.asarray(Image.open(path).convert("L"))
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the photo ({error})") from error


def face_ellipse(shape: tuple[int, int]) -> torch.Tensor:
    """The central ellipse (H, W) bool of `FACE_ELLIPSE` semi-axes."""
    height, width = shape
    rows = (torch.arange(height) - (height - 1) / 2) / (FACE_ELLIPSE[1] * height)
    columns = (torch.arange(width) - (width - 1) / 2) / (FACE_ELLIPSE[0] * width)
    return rows[:, None] ** 2 + columns[None, :] ** 2 <= 1


def light_side_agreement(photos: Mapping[tuple[int, int], np.ndarray]) -> dict[str, int]:
    """Which side a light's sign brightens, from one person's photos by light (Yale B degrees).

    For each mirrored pair of lateral lights (±25°, ±50°, ±70° azimuth, elevation 0), the ratio of the face's
    mean brightness on the image's left half to its right half is compared between +A and -A; for above (E+45)
    against below (E-35), the top half's ratio to the bottom half's. Comparing a pair divides out the face's
    own reflectance. Returns how many pairs were compared and how many say that a positive azimuth lights the
    image's left and a positive elevation the top.
    """
    counts = {"azimuth_pairs": 0, "positive_azimuth_lights_image_left": 0}
    counts |= {"elevation_pairs": 0, "positive_elevation_lights_top": 0}
    if not photos:
        return counts
    shape = next(iter(photos.values())).shape
    face = face_ellipse(shape).numpy()
    half_rows, half_columns = shape[0] // 2, shape[1] // 2

    def ratio(photo: np.ndarray, axis: int) -> float:
        first = face.copy()
        if axis == 0:
            first[half_rows:] = False
        else:
            first[:, half_columns:] = False
        second = face & ~first
        return float(photo[first].mean() + 1) / float(photo[second].mean() + 1)

    for azimuth in (25, 50, 70):
        if (azimuth, 0) in photos and (-azimuth, 0) in photos:
            counts["azimuth_pairs"] += 1
            left_brighter = ratio(photos[(azimuth, 0)], axis=1) > ratio(photos[(-azimuth, 0)], axis=1)
            counts["positive_azimuth_lights_image_left"] += int(left_brighter)
    if (0, 45) in photos and (0, -35) in photos:
        counts["elevation_pairs"] += 1
        counts["positive_elevation_lights_top"] += int(ratio(photos[(0, 45)], axis=0) > ratio(photos[(0, -35)], axis=0))
    return counts


def _grey(image: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 → (1, H, W) float in [0, 1]."""
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None]


def evaluate_real_relighting(
    pipeline,
    root: str | os.PathLike,
    *,
    options: EvaluationOptions,
    out_dir: str | os.PathLike,
    baseline_pipeline=None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Relighting between Yale B's known lights against the photos; see the module docstring.

    `options.limit` caps the light pairs, people taken in turn.
    """
    photos = find_photos(root)
    tasks = [
        (person, source, target)
        for person, lights in photos.items()
        for source, target in LIGHT_PAIRS
        if source in lights and target in lights
    ]
    tasks = people_in_turn(tasks, lambda task: task[0])[: options.limit]
    models = {"model": pipeline} | ({BASELINE_MODEL: baseline_pipeline} if baseline_pipeline is not None else {})
    names = [UNRELIT, *(f"{model}, light {mode}" for model in models for mode in ("estimated", "known"))]
    all_pairs = {name: MetricAccumulator() for name in names}
    groups = {
        group: {name: MetricAccumulator() for name in names} for group in ("frontal to other", "other to frontal")
    }
    convention_check = light_side_agreement({})
    checked_people = set()
    # Predicted depth and the pixels it covers, by (model, person, source light): each photo is predicted once.
    depths: dict[tuple[str, tuple[str, str], tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}
    sheet_rows = []
    for person, source, target in tqdm(tasks, desc="Yale B: relighting", unit="pair", disable=not show_progress):
        lights = photos[person]
        if person not in checked_people:
            checked_people.add(person)
            counts = light_side_agreement({light: read_photo(path) for light, path in lights.items()})
            convention_check = {name: convention_check[name] + count for name, count in counts.items()}
        source_photo, target_photo = read_photo(lights[source]), read_photo(lights[target])
        if source_photo.shape != target_photo.shape:
            raise UserInputError(f"{lights[target]}: size {target_photo.shape} differs from {lights[source]}")
        rgb = np.repeat(source_photo[..., None], 3, axis=-1)
        key = f"{person[0]}/{lights[source].name}"
        region = face_ellipse(source_photo.shape)
        for name, model in models.items():
            if (name, person, source) not in depths:
                depth, covered = predict_unit_depth(model, [rgb], [key], options=options, center_on_face=True)
                depths[(name, person, source)] = depth[0], covered[0]
            region &= depths[(name, person, source)][1]
        truth = _grey(target_photo)
        results = {UNRELIT: _grey(source_photo)}
        for name, model in models.items():
            depth, covered = depths[(name, person, source)]
            for mode, original in (("estimated", None), ("known", yale_light(*source))):
                relit = model.relight(
                    rgb,
                    yale_light(*target),
                    depth=torch.where(covered, depth, torch.nan).numpy(),
                    original_light=original,
                    center_on_face=True,
                    match_input_size=True,
                    output_type="pt",
                )
                results[f"{name}, light {mode}"] = relit.rgb[0].mean(dim=0, keepdim=True)
        group = groups["frontal to other" if source == FRONTAL else "other to frontal"]
        for name, image in results.items():
            metrics = image_metrics(image, truth, region)
            scores = {metric: metrics[metric] for metric in METRIC_KEYS}
            group[name].update(scores)
            all_pairs[name].update(scores)
        if (source, target) == SHEET_PAIR and len(sheet_rows) < SHEET_PEOPLE:
            # Short captions: a sheet's column is as wide as a photo.
            captions = {UNRELIT: f"input {lights[source].stem[-9:]}"}
            captions |= {name: name.replace(BASELINE_MODEL, "baseline").replace(", light ", ", ") for name in names[1:]}
            sheet_rows.append(
                [(captions[name], image[0].numpy()) for name, image in results.items()]
                + [(f"photo {lights[target].stem[-9:]}", truth[0].numpy())]
            )
    section: dict[str, Any] = {
        "data": str(root),
        "people": len({task[0] for task in tasks}),
        "pairs": len(tasks),
        "light_pairs": [[list(source), list(target)] for source, target in LIGHT_PAIRS],
        "convention_check": convention_check,
        "rows": mean_rows(all_pairs),
        "by_direction": {group: {"rows": mean_rows(rows)} for group, rows in groups.items()},
    }
    if sheet_rows:
        section["sheet"] = write_sheet(Path(out_dir) / SHEET_NAME, sheet_rows).name
    return section


def format_real_relighting(section: Mapping[str, Any]) -> str:
    """The Yale B results as Markdown."""
    check = section["convention_check"]
    lines = [
        f"## Real relighting (Extended Yale B): `{section['data']}`",
        "",
        f"{section['pairs']} light pairs of {section['people']} people: each photo relit from its known light to "
        "another (predicted depth, framed by each model's default fit) and compared with the photo under that "
        "light, greyscale, on a central ellipse of the face. Lights: Yale B (A, E) = our (−A, E), one lamp plus "
        "1 % ambient.",
        "",
    ]
    if check["azimuth_pairs"] or check["elevation_pairs"]:
        lines += [
            f"Convention check on the photos: a positive Yale azimuth lights the image's left in "
            f"{check['positive_azimuth_lights_image_left']} of {check['azimuth_pairs']} mirrored pairs; a positive "
            f"elevation lights the top in {check['positive_elevation_lights_top']} of {check['elevation_pairs']}.",
            "",
        ]
    lines += ["All pairs:", "", format_table(section)]
    for group, rows in section["by_direction"].items():
        if rows["rows"]:
            lines += [f"{group.capitalize()}:", "", format_table(rows)]
    if "sheet" in section:
        lines += [f"Frontal → A+050E+00, side by side: `{section['sheet']}`.", ""]
    return "\n".join(lines)
