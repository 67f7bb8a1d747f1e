"""A talking video → a sequence folder: one sample per frame with a face, plus the audio track.

    NAME/meta.json          fps, audio file and rate, frame count, the indices of the frames present
    NAME/audio.wav          16 kHz mono 16-bit PCM, starting with frame 0
    NAME/frames/NNNNNN/     a sample folder for frame NNNNNN (at `SEQUENCE_FPS`), whose audio starts at
                            NNNNNN / fps seconds; frames without a face are absent

The folder is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rgbd_portrait.data.prepare.alignment import smooth_alignments
from rgbd_portrait.data.prepare.media import extract_audio, probe_video, video_frames
from rgbd_portrait.data.prepare.portrait import PortraitPreparer
from rgbd_portrait.data.sample_format import (
    AUDIO_FILE,
    AUDIO_SAMPLE_RATE,
    FRAMES_FOLDER,
    SEQUENCE_FPS,
    frame_folder_name,
    write_sample,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import atomic_folder


def prepare_sequence(
    preparer: PortraitPreparer,
    video: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    meta: dict[str, Any],
    crop_smoothing_s: float,
    progress: bool = False,
) -> tuple[int, list[int]]:
    """Write the sequence of `video` (largest face per frame) to `destination`, replacing it.

    `meta` (identity, split, source) goes into every frame's and the sequence's meta.json. Returns the
    number of frames read and the indices of those written; nothing is written when no frame has a face.
    """
    video, destination = Path(video), Path(destination)
    if not probe_video(video).has_audio:
        raise UserInputError(f"{video}: video has no audio track")
    # First pass: the largest face per frame. Crops are smoothed over time before any frame is written,
    # so the second pass decodes the video again rather than holding every frame in memory.
    faces = {}
    frames_read = 0
    for index, frame in enumerate(
        tqdm(video_frames(video, fps=SEQUENCE_FPS), desc=f"faces in {video.name}", disable=not progress, leave=False)
    ):
        frames_read += 1
        found = preparer.find_faces(frame)
        if found:
            faces[index] = found[0]
    indices = sorted(faces)
    if not indices:
        return frames_read, []
    alignments = smooth_alignments(
        [preparer.align(faces[index]) for index in indices],
        np.array(indices) / SEQUENCE_FPS,
        sigma_s=crop_smoothing_s,
    )
    alignment_of = dict(zip(indices, alignments))
    with atomic_folder(destination) as temporary:
        extract_audio(video, temporary / AUDIO_FILE, sample_rate=AUDIO_SAMPLE_RATE)
        written = 0
        bar = tqdm(total=len(indices), desc=f"frames of {video.name}", disable=not progress, leave=False)
        for index, frame in enumerate(video_frames(video, fps=SEQUENCE_FPS)):
            if index in alignment_of:
                frame_meta = {**meta, "frame_index": index, "time_s": index / SEQUENCE_FPS}
                sample = preparer.sample(frame, faces[index], alignment_of[index], meta=frame_meta)
                write_sample(temporary / FRAMES_FOLDER / frame_folder_name(index), sample)
                written += 1
                bar.update()
        bar.close()
        if written != len(indices):
            raise RuntimeError(f"{video}: the second decoding pass gave fewer frames than the first")
        sequence_meta = {
            **meta,
            "fps": SEQUENCE_FPS,
            "audio": AUDIO_FILE,
            "audio_sample_rate": AUDIO_SAMPLE_RATE,
            "frame_count": frames_read,
            "frames": indices,
            "depth_source": "pseudo",
            "depth_backend": preparer.depth_backend.name,
        }
        (temporary / "meta.json").write_text(json.dumps(sequence_meta, indent=2, sort_keys=True) + "\n")
    return frames_read, indices
