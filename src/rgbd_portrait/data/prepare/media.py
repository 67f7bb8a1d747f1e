"""Reading videos through ffmpeg: RGB frames at a fixed rate and the audio track; the suffixes prepared."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from rgbd_portrait.errors import UserInputError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    duration_s: float
    has_audio: bool


def _ffmpeg_message(text: str) -> str:
    """The last non-empty line of ffmpeg's error output, which names the problem."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown ffmpeg error"


def probe_video(path: str | os.PathLike) -> VideoInfo:
    frames = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(frames)
    except (OSError, RuntimeError, StopIteration) as error:
        raise UserInputError(f"{path}: cannot read video ({_ffmpeg_message(str(error))})") from error
    finally:
        frames.close()
    return VideoInfo(fps=float(meta["fps"]), duration_s=float(meta["duration"]), has_audio="audio_codec" in meta)


def video_frames(path: str | os.PathLike, *, fps: float) -> Iterator[np.ndarray]:
    """The frames (H, W, 3) uint8 of a video resampled to `fps` (frames duplicated or dropped by time)."""
    frames = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={fps}"])
    try:
        meta = next(frames)
        width, height = meta["size"]
        for buffer in frames:
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
    except (OSError, RuntimeError) as error:
        raise UserInputError(f"{path}: cannot decode video ({_ffmpeg_message(str(error))})") from error
    finally:
        frames.close()


def extract_audio(path: str | os.PathLike, destination: str | os.PathLike, *, sample_rate: int) -> None:
    """Write the first audio track of `path` as mono 16-bit PCM WAV at `sample_rate` to `destination`."""
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        "-y",
        str(destination),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not Path(destination).is_file():
        raise UserInputError(f"{path}: cannot extract audio ({_ffmpeg_message(result.stderr)})")
