"""Training clips from talking sequences: consecutive frames, each frame's audio, and a reference frame.

`TalkingClipDataset(root, audio_features=...)` finds every sequence folder below `root` (the layout of
`rgbd_portrait.data.sample_format`: written by `rgbd-portrait synth --sequences` and by `rgbd-portrait prepare`
for videos) and serves every run of `clip_frames` consecutive frames present in a sequence. Frames are read by
a `PortraitDataset` over the sequence's `frames/` folder, so they have exactly the image data set's tensors
(depth normalised per frame, the Marigold convention the model is trained with).

Items (default collation works on them; F = clip_frames, W = 2·audio_radius + 1):
    rgb            (F, 3, H, W) float in [-1, 1]
    depth          (F, 1, H, W) float in [-1, 1], background +1
    mask           (F, 1, H, W) float, 1 on the person
    pseudo_depth   (F,) float, 1 for frames whose depth is pseudo-depth (prepared videos: face-mesh depth)
    depth_observed (F, 1, H, W) float, 1 where that depth was observed rather than extrapolated
    audio          (F, W, D) each frame's audio features with its ± audio_radius neighbours
    reference_rgb  (3, H, W) another frame of the same sequence, outside the clip when there is one
    reference_depth (1, H, W) its depth, as `depth`
    mouth_box      (4,) float the clip's mouth region (`mouth_box_of`), NaN for frames without face landmarks
    mouth_opening  (F,) float each frame's `face_regions.mouth_opening`, NaN for frames without face landmarks
    frame_index    (F,) int64 the frames' indices in their sequence
    identity, key  strings
The reference of item i in epoch e is fixed by (seed, e, i), as in `PortraitDataset`.

`TalkingClipMixture` reads the clips of several such data sets (e.g. synthetic and prepared real videos) as
one, each folder with its share of the training stream whatever its size, as `PortraitMixture` does for images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rgbd_portrait.data.audio import AudioFeatures, audio_windows
from rgbd_portrait.data.dataset import SPLITS, PortraitDataset
from rgbd_portrait.data.face_regions import JAW_OUTLINE, mouth_box, mouth_opening
from rgbd_portrait.data.sample_format import FRAMES_FOLDER, is_sequence, read_meta, read_sequence_audio
from rgbd_portrait.errors import UserInputError


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """Sequence folders at or below `root`, sorted; hidden (unfinished) folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: data folder not found")
    found = []
    for directory, subfolders, _files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        if is_sequence(directory):
            found.append(Path(directory))
            subfolders.clear()
    return sorted(found)


@dataclass
class _Sequence:
    folder: Path
    identity: str
    fps: float
    frame_count: int
    frames: PortraitDataset  # its entries in time order
    position: dict[int, int]  # frame index → entry of `frames`


@dataclass(frozen=True)
class _Clip:
    sequence: int
    first_frame: int


def _frame_index(key: str, folder: Path) -> int:
    try:
        return int(Path(key).name)
    except ValueError as error:
        raise UserInputError(f"{folder / FRAMES_FOLDER / key}: frame folder names must be frame numbers") from error


class TalkingClipDataset(Dataset):
    """Clips of `clip_frames` consecutive frames of the sequences of one split (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        audio_features: AudioFeatures,
        split: str | None = "train",
        resolution: int | None = None,
        clip_frames: int = 8,
        audio_radius: int = 2,
        seed: int = 0,
    ):
        if split is not None and split not in SPLITS:
            raise UserInputError(f"split {split!r}: expected one of {', '.join(SPLITS)} (or None for all)")
        if clip_frames <= 0:
            raise UserInputError(f"clip_frames: must be positive, got {clip_frames}")
        if audio_radius < 0:
            raise UserInputError(f"audio_radius: must not be negative, got {audio_radius}")
        self.audio_features = audio_features
        self.split = split
        self.clip_frames = clip_frames
        self.audio_radius = audio_radius
        self.resolution = resolution
        self.seed = seed
        self.epoch = 0
        self.sequences: list[_Sequence] = []
        self.clips: list[_Clip] = []
        # Every frame of every sequence, (sequence, entry of its `frames`), for caching frames once each.
        self.frame_entries: list[tuple[int, int]] = []
        self._first_frame_entry: list[int] = []
        for folder in find_sequences(root):
            meta = read_meta(folder)
            if split is not None and meta.get("split", "train") != split:
                continue
            frames = PortraitDataset(folder / FRAMES_FOLDER, split=None, resolution=resolution, seed=seed)
            position = {_frame_index(entry.key, folder): index for index, entry in enumerate(frames.entries)}
            sequence = _Sequence(
                folder=folder,
                identity=str(meta.get("identity", folder.name)),
                fps=float(meta["fps"]),
                frame_count=int(meta.get("frame_count", max(position, default=-1) + 1)),
                frames=frames,
                position=position,
            )
            number = len(self.sequences)
            self.sequences.append(sequence)
            self._first_frame_entry.append(len(self.frame_entries))
            self.frame_entries += [(number, entry) for entry in range(len(frames))]
            # Every run of clip_frames consecutive frames present (prepared videos miss frames without a face).
            self.clips += [
                _Clip(number, first)
                for first in sorted(position)
                if all(first + offset in position for offset in range(clip_frames))
            ]
        self._features: dict[int, np.ndarray] = {}
        self._mouths: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frame_features(self, sequence_number: int) -> np.ndarray:
        """Audio features (frame_count, D) of a whole sequence, computed once and kept."""
        if sequence_number not in self._features:
            sequence = self.sequences[sequence_number]
            samples, sample_rate = read_sequence_audio(sequence.folder)
            self._features[sequence_number] = self.audio_features.frame_features(
                samples, sample_rate, fps=sequence.fps, frame_count=sequence.frame_count
            )
        return self._features[sequence_number]

    def _frame_mouths(self, sequence_number: int) -> tuple[np.ndarray, np.ndarray]:
        """`face_regions.mouth_box` (frames, 4) and `mouth_opening` (frames,) of every frame of a sequence, in its
        `frames` order, the boxes in the clips' pixels; NaN for frames without face landmarks. Read once, kept."""
        if sequence_number not in self._mouths:
            frames = self.sequences[sequence_number].frames
            boxes = np.full((len(frames), 4), np.nan, dtype=np.float32)
            openings = np.full(len(frames), np.nan, dtype=np.float32)
            for position, entry in enumerate(frames.entries):
                landmarks = np.asarray(entry.read_meta().get("face_landmarks", []), dtype=np.float64).reshape(-1, 3)
                if len(landmarks) > max(JAW_OUTLINE):
                    stored = entry.read().depth.shape[-1]  # the landmarks are in the stored crop's pixels
                    # Pixel centres are at integers in both the stored crop and the resized one.
                    boxes[position] = mouth_box((landmarks[:, :2] + 0.5) * ((self.resolution or stored) / stored) - 0.5)
                    openings[position] = mouth_opening(landmarks)
            self._mouths[sequence_number] = boxes, openings
        return self._mouths[sequence_number]

    def _frame_positions(self, clip: _Clip) -> list[int]:
        sequence = self.sequences[clip.sequence]
        return [sequence.position[frame] for frame in self._frame_numbers(clip)]

    def mouth_box_of(self, index: int) -> np.ndarray:
        """Clip `index`'s mouth region (4,): the union of its frames' `mouth_box`es, NaN if a frame has none."""
        clip = self.clips[index]
        boxes = self._frame_mouths(clip.sequence)[0][self._frame_positions(clip)]
        # NaN propagates through min and max: a clip with a frame without landmarks has no region.
        top, bottom, left, right = boxes.T
        return np.array([top.min(), bottom.max(), left.min(), right.max()], dtype=np.float32)

    def mouth_openings_of(self, index: int) -> np.ndarray:
        """Clip `index`'s mouth opening per frame (F,), NaN for frames without face landmarks."""
        clip = self.clips[index]
        return self._frame_mouths(clip.sequence)[1][self._frame_positions(clip)]

    def _reference_frame(self, clip: _Clip, index: int, epoch: int) -> int:
        sequence = self.sequences[clip.sequence]
        outside = [frame for frame in sorted(sequence.position) if not 0 <= frame - clip.first_frame < self.clip_frames]
        candidates = outside or sorted(sequence.position)
        return candidates[int(np.random.default_rng([self.seed, epoch, index]).integers(len(candidates)))]

    def frame_keys(self) -> list[str]:
        """A name for each frame of `frame_entries` that changes when the frame is written again: its sequence
        folder, frame folder and `SampleEntry.stamp`."""
        names = []
        for sequence, entry in self.frame_entries:
            frame = self.sequences[sequence].frames.entries[entry]
            names.append(f"{self.sequences[sequence].folder}:{frame.key}:{frame.stamp()}")
        return names

    def _frame_numbers(self, clip: _Clip) -> list[int]:
        return list(range(clip.first_frame, clip.first_frame + self.clip_frames))

    def frames_of(self, index: int, *, epoch: int | None = None) -> tuple[list[int], int]:
        """Clip `index`'s frames and its reference frame in `epoch`, as positions in `frame_entries`."""
        epoch = self.epoch if epoch is None else epoch
        clip = self.clips[index]
        sequence, first = self.sequences[clip.sequence], self._first_frame_entry[clip.sequence]
        frames = [first + sequence.position[frame] for frame in self._frame_numbers(clip)]
        return frames, first + sequence.position[self._reference_frame(clip, index, epoch)]

    def audio_of(self, index: int) -> np.ndarray:
        """Clip `index`'s audio windows (F, W, D)."""
        clip = self.clips[index]
        return audio_windows(self.frame_features(clip.sequence), self._frame_numbers(clip), radius=self.audio_radius)

    def get(self, index: int, *, epoch: int | None = None) -> dict[str, Any]:
        if not 0 <= index < len(self.clips):
            raise IndexError(f"index {index} out of range for {len(self.clips)} clips")
        epoch = self.epoch if epoch is None else epoch
        clip = self.clips[index]
        sequence = self.sequences[clip.sequence]
        frame_numbers = self._frame_numbers(clip)
        items = [sequence.frames.get(sequence.position[frame], epoch=epoch) for frame in frame_numbers]
        reference = sequence.frames.get(sequence.position[self._reference_frame(clip, index, epoch)], epoch=epoch)
        windows = self.audio_of(index)
        return {
            "rgb": torch.stack([item["rgb"] for item in items]),
            "depth": torch.stack([item["depth"] for item in items]),
            "mask": torch.stack([item["mask"] for item in items]),
            "pseudo_depth": torch.stack([item["pseudo_depth"] for item in items]),
            "depth_observed": torch.stack([item["depth_observed"] for item in items]),
            "audio": torch.from_numpy(windows),
            "reference_rgb": reference["rgb"],
            "reference_depth": reference["depth"],
            "mouth_box": torch.from_numpy(self.mouth_box_of(index)),
            "mouth_opening": torch.from_numpy(self.mouth_openings_of(index)),
            "frame_index": torch.tensor(frame_numbers, dtype=torch.int64),
            "identity": sequence.identity,
            "key": f"{sequence.folder.name}:{clip.first_frame:06d}",
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)


class TalkingClipMixture(Dataset):
    """Several `TalkingClipDataset`s read as one, each with a share of the training stream.

    Items alternate between the parts (the first clip of each part, then the second, ...), so a fixed validation
    batch of the first few items shows every part. `sample_weights` gives each clip its part's weight over the
    part's clip count, so that drawn by these weights a part's share of the draws is its weight's share.
    """

    def __init__(self, parts: list[TalkingClipDataset], weights: list[float]):
        if len(parts) != len(weights) or not parts:
            raise ValueError("a mixture needs one weight per part and at least one part")
        self.parts = parts
        self.locations: list[tuple[int, int]] = []  # (part, clip of the part) per item
        for position in range(max(len(part) for part in parts)):
            self.locations += [(number, position) for number, part in enumerate(parts) if position < len(part)]
        self.sample_weights = torch.tensor(
            [weights[number] / len(parts[number]) for number, _ in self.locations], dtype=torch.float64
        )

    def __len__(self) -> int:
        return len(self.locations)

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def get(self, index: int, *, epoch: int | None = None) -> dict[str, Any]:
        if not 0 <= index < len(self.locations):
            raise IndexError(f"index {index} out of range for {len(self.locations)} clips")
        number, local = self.locations[index]
        return self.parts[number].get(local, epoch=epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)
