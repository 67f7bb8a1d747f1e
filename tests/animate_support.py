"""Shared by the animation tests: small talking sequences written directly (no rendering), in the studio's layout."""

from pathlib import Path

import numpy as np

from rgbd_portrait.data.sample_format import SEQUENCE_FPS, PortraitSample, write_sample, write_sequence
from rgbd_portrait.data.synth.speech import synthesize_speech

# What a prepared video's frames carry (for 16-px frames): face-mesh pseudo-depth, observed inside the landmarks.
PSEUDO_DEPTH_META = {"depth_source": "pseudo", "face_landmarks": [[4, 4, 0], [11, 4, 0], [11, 11, 0], [4, 11, 0]]}


def fake_frame(rng: np.random.Generator, size: int, *, opening: float, meta: dict) -> PortraitSample:
    """A disc-shaped 'head' whose lower part recedes with `opening` (a crude mouth), on a far background."""
    rows, columns = np.mgrid[0:size, 0:size] / size
    mask = (rows - 0.5) ** 2 + (columns - 0.5) ** 2 < 0.16
    depth = 1.0 + 0.2 * ((rows - 0.5) ** 2 + (columns - 0.5) ** 2)
    mouth = (np.abs(rows - 0.7) < 0.06) & (np.abs(columns - 0.5) < 0.12)
    depth = np.where(mouth, depth + 0.05 * opening, depth)
    rgb = (rng.random((size, size, 3)) * 60 + np.array([150, 110, 90])).astype(np.uint8)
    return PortraitSample(rgb=rgb, depth=np.where(mask, depth, 0.0).astype(np.float32), mask=mask, meta=meta)


def write_fake_sequence(
    folder: Path,
    *,
    identity: str,
    split: str,
    seconds: float,
    size: int = 16,
    seed: int = 0,
    missing: tuple[int, ...] = (),
    frame_meta: dict | None = None,
    speaking_landmarks: np.ndarray | None = None,
) -> Path:
    """A sequence of `seconds` at 25 fps whose mouth follows the speech's loudness; `missing` frames are left out,
    as `rgbd-portrait prepare` leaves out frames without a face; `frame_meta` is added to every frame's meta (e.g.
    a prepared video's `depth_source` and `face_landmarks`); `speaking_landmarks` (478, 3), a face mesh given to
    every frame with its inner lips (points 13, 14) parted by the frame's mouth opening."""
    rng = np.random.default_rng(seed)
    speech = synthesize_speech(rng, seconds=seconds, pitch_hz=120.0)
    count = int(seconds * SEQUENCE_FPS)
    loudness = speech.frame_envelope(SEQUENCE_FPS, count)
    base = {"identity": identity, "split": split}
    frames = []
    for index in range(count):
        meta = {**base, **(frame_meta or {}), "frame_index": index}
        if speaking_landmarks is not None:
            landmarks = np.array(speaking_landmarks, dtype=np.float64)
            landmarks[14, 1] = landmarks[13, 1] + 4.0 * float(loudness[index])
            meta["face_landmarks"] = landmarks.tolist()
        frames.append(fake_frame(rng, size, opening=float(loudness[index]), meta=meta))
    write_sequence(folder, frames, meta=base, audio=speech.audio, sample_rate=speech.sample_rate)
    for index in missing:
        for path in sorted((folder / "frames" / f"{index:06d}").iterdir()):
            path.unlink()
        (folder / "frames" / f"{index:06d}").rmdir()
    return folder


def write_fake_still(folder: Path, *, identity: str, split: str, size: int = 16) -> Path:
    """One still sample, so that image data sets over the same root are not empty."""
    frame = fake_frame(np.random.default_rng(9), size, opening=0.0, meta={"identity": identity, "split": split})
    return write_sample(folder, frame)
