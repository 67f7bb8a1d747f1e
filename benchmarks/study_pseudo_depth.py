"""How good is face-mesh pseudo-depth, on the face and off it? Measured against real Kinect depth (rap3df).

Real photos train with the face-mesh pseudo-depth of `rgbd-portrait prepare`: the mesh on the face, a smooth
fill over the rest of the person (hair, ears, neck). This study prepares each rap3df capture exactly as
`prepare` does (same crop, same depth backend), warps the capture's Kinect depth into that crop, and compares
the two after one least-squares scale and shift per capture on the pixels where both are valid. Errors are
reported separately where the depth is observed (inside the landmarks' outline, `observed_depth_region`, what
training trusts) and where it is extrapolated, so the joint stage's `extrapolated_depth_weight` follows from
a measurement.

    python benchmarks/study_pseudo_depth.py ../shared/data/depth/rap3df --out benchmarks/results/pseudo_depth
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rgbd_portrait.data.dataset import observed_depth_region
from rgbd_portrait.data.prepare.alignment import warp_to_crop
from rgbd_portrait.data.prepare.backends import create_depth_backend
from rgbd_portrait.data.prepare.portrait import PortraitPreparer
from rgbd_portrait.evaluation.metrics import align_scale_shift

# Kinect pixels further than this share of the capture's median person depth from it are stray background or
# flying pixels (a head and shoulders span about a tenth of their distance).
OUTLIER_FRACTION = 0.2


def kinect_in_crop(depth_raw: np.ndarray, alignment) -> np.ndarray:
    """The Kinect depth (0 = no data) resampled into the prepared crop by nearest neighbour."""
    import cv2

    affine = alignment.crop_to_image()
    shape = (alignment.size, alignment.size)
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(depth_raw.astype(np.float32), affine, shape, flags=flags, borderValue=0.0)


def compare(pseudo: np.ndarray, kinect: np.ndarray, person: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """AbsRel of the aligned pseudo-depth against Kinect depth, on the observed and the extrapolated parts."""
    valid = person & (kinect > 0)
    if valid.sum() < 50:
        return {}
    median = np.median(kinect[valid])
    valid &= np.abs(kinect - median) < OUTLIER_FRACTION * median
    aligned = (
        align_scale_shift(torch.from_numpy(pseudo)[None], torch.from_numpy(kinect)[None], torch.from_numpy(valid)[None])
        .aligned[0]
        .numpy()
    )
    error = np.abs(aligned - kinect) / kinect.clip(1)
    rows = {"abs_rel_person": float(error[valid].mean())}
    for name, part in (("observed", observed), ("extrapolated", ~observed)):
        region = valid & part
        if region.sum() >= 20:
            rows[f"abs_rel_{name}"] = float(error[region].mean())
            rows[f"pixels_{name}"] = int(region.sum())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rap3df", help="the rap3df folder (<person>/<pose>_<k>/rgb.png, depth_raw.png, mask.png)")
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--size", type=int, default=128, help="crop side, as prepared for training")
    args = parser.parse_args()

    captures = sorted(path.parent for path in Path(args.rap3df).glob("*/*/rgb.png"))
    preparer = PortraitPreparer(size=args.size, depth_backend=create_depth_backend("face-mesh"))
    per_capture: dict[str, dict[str, float]] = {}
    for capture in tqdm(captures, desc="captures", unit="capture"):
        image = np.asarray(Image.open(capture / "rgb.png").convert("RGB"))
        depth_raw = np.asarray(Image.open(capture / "depth_raw.png")).astype(np.float32)
        faces = preparer.find_faces(image)
        if not faces:
            continue
        alignment = preparer.align(faces[0])
        sample = preparer.sample(image, faces[0], alignment, meta={})
        kinect = kinect_in_crop(depth_raw, alignment)
        _, inside = warp_to_crop(image, alignment)
        person = sample.mask & inside
        mask = torch.from_numpy(sample.mask.astype(np.float32))[None]
        observed = observed_depth_region(sample.meta, mask, args.size)[0].numpy() > 0.5
        rows = compare(sample.depth, kinect, person, observed)
        if rows:
            per_capture[str(capture.relative_to(args.rap3df))] = rows
    preparer.close()

    keys = sorted({key for rows in per_capture.values() for key in rows if key.startswith("abs_rel")})
    summary = {
        key: {
            "mean": float(np.mean([rows[key] for rows in per_capture.values() if key in rows])),
            "median": float(np.median([rows[key] for rows in per_capture.values() if key in rows])),
            "captures": sum(key in rows for rows in per_capture.values()),
        }
        for key in keys
    }
    both = [rows for rows in per_capture.values() if "abs_rel_observed" in rows and "abs_rel_extrapolated" in rows]
    ratio = float(np.median([rows["abs_rel_extrapolated"] / rows["abs_rel_observed"] for rows in both]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "captures_found": len(captures),
        "captures_scored": len(per_capture),
        "summary": summary,
        "median_ratio_extrapolated_to_observed": ratio,
        "per_capture": per_capture,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "# Face-mesh pseudo-depth against real Kinect depth (rap3df)",
        "",
        f"`python benchmarks/study_pseudo_depth.py {args.rap3df} --out {args.out} --size {args.size}`; "
        f"{len(per_capture)} of {len(captures)} captures with a face found. AbsRel after one least-squares "
        "scale and shift per capture on the person's Kinect-valid pixels.",
        "",
        "| region | mean AbsRel | median AbsRel | captures |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {key.removeprefix('abs_rel_')} | {row['mean']:.4f} | {row['median']:.4f} | {row['captures']} |"
        for key, row in summary.items()
    ]
    lines += ["", f"Median per-capture ratio, extrapolated / observed AbsRel: {ratio:.2f}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
