"""How much do the choices of the rap3df protocol move its numbers? Image→depth against real Kinect depth.

    python benchmarks/study_rap3df_protocol.py --model src/rgbd_portrait/weights/default \
        --rap3df ../shared/data/depth/rap3df --out benchmarks/results/rap3df_protocol.md

`rgbd-portrait eval --rap3df` (`evaluation.kinect_depth`) fixes five choices; this study changes one at a time,
on the same captures and seeds, and reports AbsRel and Spearman at the landmarks of the model and the radial
baseline for each:

- the pixels scored: the person (Kinect pixels within 0.7–1.35× the face's depth) or all of mask.png, which in
  some captures holds the wall behind the person;
- the scale of the scale/shift fit: kept >= 0, or free (a depth with near and far swapped then fits too);
- the mask: none given to the pipeline (as a user's photo), or mask.png given (the ensemble aligns on it);
- the crop: face-centred (as a user gets it) or centred on the image;
- the backdrop: the captures' own black (their background removed) or mid-grey in its place.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark_support import command_line, load_study_pipeline, machine_line, write_markdown
from rgbd_portrait.data.rgbd_captures import find_captures, person_pixels, read_capture
from rgbd_portrait.evaluation.baselines import radial_depth
from rgbd_portrait.evaluation.metrics import depth_metrics, rank_correlation
from rgbd_portrait.evaluation.real_support import (
    FaceMeshLandmarks,
    landmark_centre,
    landmarks_on,
    people_in_turn,
    values_at_landmarks,
)
from rgbd_portrait.evaluation.results import MetricAccumulator, format_markdown_table
from rgbd_portrait.evaluation.runner import EvaluationOptions, mean_rows, predict_unit_depth

AS_EVALUATED = "as `eval` scores it"
# (pixels, nonnegative scale, mask given, face-centred crop, grey backdrop) per variant; each differs from the
# first in one.
VARIANTS = {
    AS_EVALUATED: ("person", True, False, True, False),
    "all of mask.png scored (walls included)": ("mask", True, False, True, False),
    "free scale": ("person", False, False, True, False),
    "mask.png given to the pipeline": ("person", True, True, True, False),
    "crop centred on the image": ("person", True, False, False, False),
    "mid-grey backdrop in place of black": ("person", True, False, True, True),
}
GREY = 128


def on_grey(rgb: np.ndarray) -> np.ndarray:
    """The capture with its removed background (pure black pixels) mid-grey instead."""
    return np.where((rgb == 0).all(axis=-1, keepdims=True), np.uint8(GREY), rgb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="src/rgbd_portrait/weights/default")
    parser.add_argument("--rap3df", default="../shared/data/depth/rap3df")
    parser.add_argument("--limit", type=int, help="captures (people in turn; default all)")
    parser.add_argument("--out", default="benchmarks/results/rap3df_protocol.md")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args(argv)
    pipeline = load_study_pipeline(args)
    options = EvaluationOptions()
    find_landmarks = FaceMeshLandmarks()
    folders = people_in_turn(find_captures(args.rap3df), lambda folder: folder.parent.name)[: args.limit]
    rows = {(variant, method): MetricAccumulator() for variant in VARIANTS for method in ("model", "radial")}
    scored = 0
    for folder in tqdm(folders, desc="captures", unit="capture"):
        capture = read_capture(folder)
        landmarks = find_landmarks(capture.rgb)
        if landmarks is None:
            continue
        predictions = {}
        for choice in {(mask, centred, grey) for _, _, mask, centred, grey in VARIANTS.values()}:
            given_mask, face_centred, grey = choice
            predictions[choice] = predict_unit_depth(
                pipeline,
                [on_grey(capture.rgb) if grey else capture.rgb],
                [capture.key],
                options=options,
                masks=[capture.depth > 0] if given_mask else None,
                center_on_face=face_centred,
            )
        # Every variant scores the same pixels: those all its predictions cover.
        covered = torch.stack([mask[0] for _, mask in predictions.values()]).all(dim=0)
        regions = {"person": person_pixels(capture.depth, landmarks) & covered, "mask": (capture.depth > 0) & covered}
        if min(int(landmarks_on(region, landmarks).sum()) for region in regions.values()) < 20:
            continue
        scored += 1
        kinect_values, _ = values_at_landmarks(capture.depth, landmarks)
        radial = radial_depth(tuple(capture.depth.shape), landmark_centre(landmarks))
        for variant, (pixels, nonnegative, *choice) in VARIANTS.items():
            region = regions[pixels]
            on_region = landmarks_on(region, landmarks)
            for method, depth in (("model", predictions[tuple(choice)][0][0]), ("radial", radial)):
                dense = depth_metrics(depth, capture.depth, region, nonnegative_scale=nonnegative)
                values, _ = values_at_landmarks(depth, landmarks)
                rows[variant, method].update(
                    {
                        "abs_rel": dense["abs_rel"],
                        "landmark_spearman": rank_correlation(values, kinect_values, on_region),
                    }
                )
    means = mean_rows({f"{variant}: {method}": accumulator for (variant, method), accumulator in rows.items()})
    report = "\n".join(
        [
            "# rap3df protocol choices, one at a time",
            "",
            f"Command: `{command_line(__file__, argv)}`",
            "",
            f"Model `{args.model}`; {scored} of {len(folders)} captures scored (a face found and at least 20 "
            f"landmarks on both pixel sets). Machine: {machine_line(pipeline.device)}.",
            "",
            format_markdown_table(means, row_heading="variant: method"),
        ]
    )
    write_markdown(args.out, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
