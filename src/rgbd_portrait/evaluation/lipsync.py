"""Lip sync and crop stability of talking faces, measured the way talking-head papers do, from the face mesh.

* Mouth opening: the distance between the inner lips (face-mesh points 13 and 14) over the face's height
  (forehead point 10 to chin point 152), so it does not depend on the crop's scale
  (`rgbd_portrait.data.face_regions.mouth_opening`). Frames where MediaPipe finds no face are NaN and left out
  of every correlation.
* Loudness: the RMS of the audio over each frame's span (frame N's audio starts at N / fps).
* Speech from word timings: GRID's `.align` files (`start end word`, in 1/25 000 s; `sil` and `sp` are
  silence) as a per-frame 0/1 series.
* Offsets: the lag (in frames) that maximises the correlation of two series; positive = the second series
  comes later than the first.
* Crop jitter: the RMS of the second difference over time (frame-to-frame acceleration) of a track, in
  pixels; a smooth track scores near 0 whatever its slow motion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rgbd_portrait.data.face_regions import mouth_opening

ALIGN_UNITS_PER_SECOND = 25_000
SILENCE_WORDS = ("sil", "sp")


def mouth_openings(images, finder) -> np.ndarray:
    """Mouth opening per image (uint8 or [0, 1] float RGB, H×W×3) read by a `FaceFinder`; NaN without a face."""
    values = []
    for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        faces = finder.find(image)
        values.append(mouth_opening(faces[0].landmarks) if faces else float("nan"))
    return np.array(values)


def frame_loudness(samples: np.ndarray, sample_rate: int, *, fps: float, frames: int) -> np.ndarray:
    """RMS of mono `samples` over each of `frames` frames (0 past the audio's end)."""
    edges = np.round(np.arange(frames + 1) * sample_rate / fps).astype(int)
    return np.array(
        [np.sqrt(np.mean(samples[a:b] ** 2)) if b > a and a < len(samples) else 0.0 for a, b in zip(edges, edges[1:])]
    )


def read_align(path: str | os.PathLike) -> list[tuple[float, float, str]]:
    """(start_s, end_s, word) per line of a GRID `.align` file."""
    words = []
    for line in Path(path).read_text().split("\n"):
        parts = line.split()
        if len(parts) == 3:
            words.append((int(parts[0]) / ALIGN_UNITS_PER_SECOND, int(parts[1]) / ALIGN_UNITS_PER_SECOND, parts[2]))
    return words


def speech_frames(words: list[tuple[float, float, str]], *, fps: float, frames: int) -> np.ndarray:
    """1 for frames whose centre falls in a spoken word, else 0."""
    centres = (np.arange(frames) + 0.5) / fps
    spoken = np.zeros(frames)
    for start, end, word in words:
        if word not in SILENCE_WORDS:
            spoken[(centres >= start) & (centres < end)] = 1.0
    return spoken


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation over the frames where both are finite (NaN with fewer than 3 or no variation)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    length = min(len(first), len(second))
    first, second = first[:length], second[:length]
    keep = np.isfinite(first) & np.isfinite(second)
    if keep.sum() < 3 or first[keep].std() < 1e-12 or second[keep].std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(first[keep], second[keep])[0, 1])


def lagged_correlations(first: np.ndarray, second: np.ndarray, *, max_lag: int) -> np.ndarray:
    """Correlation of first[t] with second[t + lag] for lag = -max_lag … max_lag."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    length = min(len(first), len(second))
    values = []
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            values.append(pearson(first[: length - lag], second[lag:length]))
        else:
            values.append(pearson(first[-lag:length], second[: length + lag]))
    return np.array(values)


def peak_lag(correlations: np.ndarray) -> float:
    """The lag of the highest correlation, refined between frames by a parabola through its neighbours."""
    max_lag = (len(correlations) - 1) // 2
    best = int(np.nanargmax(correlations))
    lag = float(best - max_lag)
    if 0 < best < len(correlations) - 1:
        left, centre, right = correlations[best - 1 : best + 2]
        curvature = left - 2 * centre + right
        if np.isfinite(curvature) and curvature < 0:
            lag += 0.5 * (left - right) / curvature
    return lag


def jitter(track: np.ndarray) -> float:
    """RMS length of the second difference over time of a track (T,) or (T, D)."""
    track = np.asarray(track, dtype=np.float64)
    if track.ndim == 1:
        track = track[:, None]
    if len(track) < 3:
        return float("nan")
    return float(np.sqrt(np.mean(np.sum(np.diff(track, n=2, axis=0) ** 2, axis=1))))
