"""Are prepared talking videos in sync and steady? GRID clips through `rgbd-portrait prepare`, checked against
GRID's word timings.

    rgbd-portrait prepare VIDEOS --out datasets/grid/test_s1 --size 128 ...     (see docs/prepare.md)
    python benchmarks/study_grid_sync.py datasets/grid/train datasets/grid/test_s1 datasets/grid/unseen \
        --crop-mesh datasets/grid/test_s1 datasets/grid/unseen --out benchmarks/results/grid_sync

For every prepared sequence below the folders given (word timings are read from `align/NAME.align` beside the
source video, as GRID lays them out, when the source is still there):

* Sync. Three per-frame series: speech from the word timings (1 inside a word), the loudness of the prepared
  `audio.wav` (RMS per frame), and the mouth opening of the face mesh that `prepare` stored for each frame
  (inner-lip distance over face height; `rgbd_portrait.evaluation.lipsync`). The lag that best correlates
  each pair, pooled over the clips (mean of the per-clip correlation curves) and per clip. Word timings vs
  loudness checks the audio track's timing; word timings vs mouth and loudness vs mouth check the frames'.
  Lips move a little before the sound they shape, so a mouth that leads by about a frame is the natural value,
  not an error; a broken pipeline shows up as several frames.
* Jitter. The crop window's corners per frame in output pixels, as prepared (smoothed over time) and as the
  per-frame alignment alone would have placed them (recomputed from the stored landmarks, which are what the
  crop was aligned on): the RMS of their second difference over time. Also the eye centres inside the
  prepared crops (what the model sees move).
* The face mesh at 128 px (`--crop-mesh FOLDER...`). The benchmark reads the mouth from the prepared 128-px
  crops (generated frames have no other resolution); its correlation with the stored mesh (found on the source
  frame) says how much of the mouth signal survives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmark_support import command_line, new_figure, write_figure, write_markdown
from rgbd_portrait.data.audio import load_audio
from rgbd_portrait.data.image_io import load_image
from rgbd_portrait.data.prepare.alignment import Alignment, align_face
from rgbd_portrait.data.prepare.faces import FaceFinder
from rgbd_portrait.data.prepare.nominal_scale import eye_centers
from rgbd_portrait.data.sample_format import read_meta, sequence_frames
from rgbd_portrait.data.sequence_dataset import find_sequences
from rgbd_portrait.evaluation.lipsync import (
    frame_loudness,
    jitter,
    lagged_correlations,
    mouth_opening,
    mouth_openings,
    peak_lag,
    pearson,
    read_align,
    speech_frames,
)

MAX_LAG = 8  # frames either way, plotted
# Peaks are searched within ± SEARCH_LAG frames: syllables come every 5–7 frames, so the loudness–mouth
# correlation peaks again one syllable away (see the figure); the sync point is the peak nearest 0.
SEARCH_LAG = 3
PAIRS = (
    ("words", "loudness", "word timings → audio loudness"),
    ("words", "mouth", "word timings → mouth opening"),
    ("loudness", "mouth", "audio loudness → mouth opening"),
)


def crop_corners(alignment: Alignment) -> np.ndarray:
    """The crop's four corners in source pixels, (4, 2)."""
    size = alignment.size
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) - [0.5, 0.5, 0]
    return corners @ alignment.crop_to_image().T


def read_sequence(folder: Path) -> dict:
    """Per-frame stored landmarks (crop pixels), the crops as prepared, and the raw per-frame crops."""
    frames = sequence_frames(folder)
    metas = [read_meta(frame) for frame in frames]
    size = load_image(frames[0] / "rgb.png").shape[0]
    landmarks, prepared, raw = [], [], []
    for meta in metas:
        crop = meta["crop_in_source"]
        alignment = Alignment(center=np.array(crop["center"]), half_axis=np.array(crop["half_axis"]), size=size)
        points = np.array(meta["face_landmarks"], dtype=np.float64)
        in_source = points[:, :2] @ alignment.crop_to_image()[:, :2].T + alignment.crop_to_image()[:, 2]
        landmarks.append(points)
        prepared.append(alignment)
        raw.append(align_face(np.concatenate([in_source, points[:, 2:] * alignment.pixel_scale], axis=1), size))
    return {"frames": frames, "metas": metas, "landmarks": landmarks, "prepared": prepared, "raw": raw}


def near_peak(curve: np.ndarray) -> float:
    """The peak lag of a ± MAX_LAG correlation curve within ± SEARCH_LAG frames."""
    return peak_lag(curve[MAX_LAG - SEARCH_LAG : MAX_LAG + SEARCH_LAG + 1])


def corner_jitter(alignments: list[Alignment]) -> float:
    """Jitter of the crop corners in output pixels (source pixels over the crop's pixel scale)."""
    scale = np.mean([alignment.pixel_scale for alignment in alignments])
    return jitter(np.stack([crop_corners(alignment).ravel() for alignment in alignments]) / scale) / 2.0


def study_sequence(folder: Path, finder: FaceFinder | None) -> dict:
    meta = read_meta(folder)
    data = read_sequence(folder)
    indices = [int(frame.name) for frame in data["frames"]]
    count = int(meta["frame_count"])
    mouth = np.full(count, np.nan)
    mouth[indices] = [mouth_opening(points) for points in data["landmarks"]]
    track = load_audio(folder / meta["audio"])
    series = {
        "mouth": mouth,
        "loudness": frame_loudness(track.samples, track.sample_rate, fps=meta["fps"], frames=count),
    }
    source = Path(meta.get("source", folder.name)).resolve()
    align = source.parent / "align" / f"{source.stem}.align"
    if align.is_file():
        series["words"] = speech_frames(read_align(align), fps=meta["fps"], frames=count)
    eyes = np.stack([np.concatenate(eye_centers(points[:, :2])) for points in data["landmarks"]])
    result = {
        "sequence": folder.name,
        "frames": len(indices),
        "frame_count": count,
        "series": series,
        "curves": {
            (a, b): lagged_correlations(series[a], series[b], max_lag=MAX_LAG)
            for a, b, _ in PAIRS
            if a in series and b in series
        },
        "jitter_raw": corner_jitter(data["raw"]),
        "jitter_prepared": corner_jitter(data["prepared"]),
        "jitter_eyes": jitter(eyes) / 2.0,
        "crop_speed": float(
            np.mean(np.linalg.norm(np.diff([crop_corners(a).mean(0) for a in data["prepared"]], axis=0), axis=1))
            / np.mean([a.pixel_scale for a in data["prepared"]])
        ),
    }
    if finder is not None:
        at_crop = np.full(count, np.nan)
        at_crop[indices] = mouth_openings([load_image(frame / "rgb.png") for frame in data["frames"]], finder)
        result["mesh_at_crop"] = pearson(at_crop, mouth)
        result["crop_found"] = float(np.isfinite(at_crop[indices]).mean())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="folders with prepared talking sequences")
    parser.add_argument("--limit", type=int, help="sequences studied (default all)")
    parser.add_argument(
        "--crop-mesh", nargs="*", default=[], help="folders whose sequences also get the mesh re-read at crop size"
    )
    parser.add_argument("--out", default="benchmarks/results/grid_sync")
    args = parser.parse_args(argv)
    sequences = [folder for root in args.data for folder in find_sequences(root)][: args.limit]
    finder = FaceFinder() if args.crop_mesh else None
    crop_mesh = {folder for root in args.crop_mesh for folder in find_sequences(root)}
    results = [
        study_sequence(folder, finder if folder in crop_mesh else None) for folder in tqdm(sequences, desc="sequences")
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lags = np.arange(-MAX_LAG, MAX_LAG + 1)
    figure, axes = new_figure(len(PAIRS), width=4.2, height=3.0)
    pooled_rows, clip_rows = [], []
    summary = {"sequences": len(results)}
    for axis, (a, b, title) in zip(axes, PAIRS):
        curves = [item["curves"][(a, b)] for item in results if (a, b) in item["curves"]]
        if not curves:
            continue
        pooled = np.nanmean(curves, axis=0)
        per_clip = np.array([near_peak(curve) for curve in curves])
        at_zero = np.array([curve[MAX_LAG] for curve in curves])
        peak = near_peak(pooled)
        summary[f"{a}_to_{b}"] = {"pooled_lag_frames": peak, "per_clip_lags": per_clip.tolist()}
        pooled_rows.append(
            f"| {title} | {len(curves)} | **{peak:+.2f}** ({peak * 40:+.0f} ms) | {np.median(per_clip):+.2f} | "
            f"{np.percentile(per_clip, 10):+.2f} … {np.percentile(per_clip, 90):+.2f} | "
            f"{np.nanmax(pooled[MAX_LAG - SEARCH_LAG : MAX_LAG + SEARCH_LAG + 1]):.2f} | {np.nanmean(at_zero):.2f} |"
        )
        for curve in curves:
            axis.plot(lags, curve, color="0.8", linewidth=0.6)
        axis.plot(lags, pooled, color="C0", linewidth=2)
        axis.axvline(0, color="k", linewidth=0.5)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("lag of the second series (frames)")
    axes[0].set_ylabel("correlation")
    figure_path = write_figure(out / "grid_sync.png", figure)
    for item in results:
        lag_text = " | ".join(
            f"{near_peak(item['curves'][(a, b)]):+.1f}" if (a, b) in item["curves"] else "" for a, b, _ in PAIRS
        )
        mesh = f"{item['mesh_at_crop']:.2f} ({item['crop_found']:.0%})" if "mesh_at_crop" in item else ""
        clip_rows.append(
            f"| {item['sequence']} | {item['frames']}/{item['frame_count']} | {lag_text} | {item['jitter_raw']:.3f} | "
            f"{item['jitter_prepared']:.3f} | {item['jitter_eyes']:.3f} | {item['crop_speed']:.3f} | {mesh} |"
        )
    jitters = {key: [item[key] for item in results] for key in ("jitter_raw", "jitter_prepared", "jitter_eyes")}
    summary["jitter"] = {key: {"median": float(np.median(values))} for key, values in jitters.items()}
    meshes = [item["mesh_at_crop"] for item in results if "mesh_at_crop" in item]
    if meshes:
        summary["mesh_at_crop_median"] = float(np.nanmedian(meshes))
    (out / "grid_sync.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = [
        "# Prepared GRID clips: audio–video sync and crop jitter",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"{len(results)} prepared sequences. Lags in frames at 25 fps (40 ms); positive = the second series comes "
        "later. Curves: [`grid_sync.png`](grid_sync.png) (grey per clip, blue pooled).",
        "",
        "## Sync",
        "",
        f"Peaks within ± {SEARCH_LAG} frames of 0: syllables come every 5–7 frames, so the loudness–mouth "
        "correlation peaks again a syllable away (the figure); the sync point is the peak nearest 0.",
        "",
        "| pair | clips | pooled peak lag | median per-clip lag | 10–90 % per clip | pooled peak correlation | "
        "mean correlation at lag 0 |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *pooled_rows,
        "",
        "## Jitter (crop pixels, RMS of the second difference over frames)",
        "",
        f"- crop corners, per-frame alignment alone: median **{np.median(jitters['jitter_raw']):.3f}** px",
        f"- crop corners, as prepared (smoothed): median **{np.median(jitters['jitter_prepared']):.3f}** px",
        f"- eye centres inside the prepared crop: median **{np.median(jitters['jitter_eyes']):.3f}** px",
        "",
        "## Per clip",
        "",
        "Lags: " + ", ".join(title for _, _, title in PAIRS) + ". Crop speed: mean frame-to-frame motion of the "
        "crop's centre (output px). Mesh at 128 px: correlation of the mouth opening read from the prepared crop "
        "with the stored one (share of frames with a face found).",
        "",
        "| sequence | frames | lag words→loud | lag words→mouth | lag loud→mouth | jitter, raw | jitter, prepared | "
        "jitter, eyes in crop | crop speed | mesh at 128 px |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *clip_rows,
        "",
    ]
    write_markdown(out / "grid_sync.md", "\n".join(report))
    print("\n".join(report))
    print(f"figure: {figure_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
