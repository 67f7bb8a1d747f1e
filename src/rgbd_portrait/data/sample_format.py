"""The on-disk sample format shared by the synthetic studio, real-portrait preparation and the datasets.

One folder per sample::

    rgb.png       8-bit RGB
    depth.npy     float32 metres along the optical axis (z-depth), larger = farther; 0 where mask is 0
    mask.png      8-bit, 255 = person (valid depth), 0 = background
    normal.png    optional: camera-space unit normals, x right, y up, z towards the camera, (n + 1) / 2 * 255
    albedo.png    optional: 8-bit RGB reflectance
    relit_K.png   optional: the same view under other lights, described in meta["relit"][K]
    meta.json     identity id, split, parameters, intrinsics; "depth_source": "exact" | "pseudo"

A sample is written to a hidden temporary folder next to its destination and renamed into place, so a
reader never sees a half-written sample. The same files, as bytes, make up a sample in a tar shard
(`rgbd_portrait.data.shards`), so `encode_sample`/`decode_sample` serve both.

A talking sequence is a folder too::

    meta.json             identity, split, "fps", "audio" (file name), "audio_sample_rate",
                          "frame_count" (frames in the source), "frames" (the indices present)
    audio.wav             mono 16-bit PCM starting at frame 0
    frames/NNNNNN/        the sample of frame NNNNNN, shown from NNNNNN / fps seconds on
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import atomic_folder

REQUIRED_FILES = ("rgb.png", "depth.npy", "mask.png", "meta.json")
SEQUENCE_FPS = 25
AUDIO_SAMPLE_RATE = 16000
AUDIO_FILE = "audio.wav"
FRAMES_FOLDER = "frames"


@dataclass
class PortraitSample:
    """One view of one identity, with arrays in their on-disk units."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 on the background
    mask: np.ndarray  # (H, W) bool
    meta: dict[str, Any]
    normal: np.ndarray | None = None  # (H, W, 3) float32 unit vectors, zero on the background
    albedo: np.ndarray | None = None  # (H, W, 3) uint8
    relit: list[np.ndarray] = field(default_factory=list)  # each (H, W, 3) uint8


def _check_shapes(sample: PortraitSample) -> None:
    height, width = sample.depth.shape
    expected = {
        "rgb": (height, width, 3),
        "mask": (height, width),
        "normal": (height, width, 3),
        "albedo": (height, width, 3),
    }
    for name, shape in expected.items():
        array = getattr(sample, name)
        if array is not None and array.shape != shape:
            raise ValueError(f"sample {name} has shape {array.shape}, expected {shape}")
    for index, image in enumerate(sample.relit):
        if image.shape != (height, width, 3):
            raise ValueError(f"sample relit_{index} has shape {image.shape}, expected {(height, width, 3)}")


def encode_normals(normal: np.ndarray) -> np.ndarray:
    """Unit normals in [-1, 1] → 8-bit RGB."""
    return np.clip(np.round((normal + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_normals(image: np.ndarray) -> np.ndarray:
    """8-bit RGB → unit normals (renormalised; zero where the image is black-ish background)."""
    normal = image.astype(np.float32) / 127.5 - 1.0
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    return np.where(length > 0.5, normal / np.maximum(length, 1e-6), 0.0).astype(np.float32)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_sample(sample: PortraitSample) -> dict[str, bytes]:
    """The files of a sample, name → content, in the order they are written."""
    _check_shapes(sample)
    depth = io.BytesIO()
    np.save(depth, sample.depth.astype(np.float32), allow_pickle=False)
    files = {
        "rgb.png": _png(sample.rgb),
        "depth.npy": depth.getvalue(),
        "mask.png": _png(sample.mask.astype(np.uint8) * 255),
    }
    if sample.normal is not None:
        files["normal.png"] = _png(encode_normals(sample.normal))
    if sample.albedo is not None:
        files["albedo.png"] = _png(sample.albedo)
    for index, image in enumerate(sample.relit):
        files[f"relit_{index}.png"] = _png(image)
    files["meta.json"] = (json.dumps(sample.meta, indent=2, sort_keys=True) + "\n").encode()
    return files


def write_sample(directory: str | os.PathLike, sample: PortraitSample, *, overwrite: bool = False) -> Path:
    """Write `sample` to `directory` atomically (temporary folder, then rename)."""
    _check_shapes(sample)
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise UserInputError(f"{directory}: sample folder already exists")
    with atomic_folder(directory) as temporary:
        for name, content in encode_sample(sample).items():
            (temporary / name).write_bytes(content)
    return directory


def _decode_image(content: bytes, mode: str, origin: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(content)) as image:
            return np.asarray(image.convert(mode))
    except (OSError, SyntaxError) as error:
        raise UserInputError(f"{origin}: cannot read image ({error})") from error


def is_sample(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return all((directory / name).is_file() for name in REQUIRED_FILES)


def decode_meta(content: bytes, origin: str) -> dict[str, Any]:
    try:
        return json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{origin}: cannot read sample metadata ({error})") from error


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    try:
        content = path.read_bytes()
    except OSError as error:
        raise UserInputError(f"{path}: cannot read sample metadata ({error})") from error
    return decode_meta(content, str(path))


def decode_sample(files: Mapping[str, bytes], *, origin: str, extras: bool = True) -> PortraitSample:
    """A sample from its files' contents (see `encode_sample`); `origin` names it in error messages."""
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise UserInputError(f"{origin}: not a sample (missing {', '.join(missing)})")
    try:
        depth = np.load(io.BytesIO(files["depth.npy"]), allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserInputError(f"{origin}/depth.npy: cannot read depth ({error})") from error
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise UserInputError(f"{origin}/depth.npy: depth must be a 2-D float array, got {depth.dtype} {depth.shape}")
    sample = PortraitSample(
        rgb=_decode_image(files["rgb.png"], "RGB", f"{origin}/rgb.png"),
        depth=depth.astype(np.float32),
        mask=_decode_image(files["mask.png"], "L", f"{origin}/mask.png") > 127,
        meta=decode_meta(files["meta.json"], f"{origin}/meta.json"),
    )
    if extras:
        if "normal.png" in files:
            sample.normal = decode_normals(_decode_image(files["normal.png"], "RGB", f"{origin}/normal.png"))
        if "albedo.png" in files:
            sample.albedo = _decode_image(files["albedo.png"], "RGB", f"{origin}/albedo.png")
        index = 0
        while f"relit_{index}.png" in files:
            sample.relit.append(_decode_image(files[f"relit_{index}.png"], "RGB", f"{origin}/relit_{index}.png"))
            index += 1
    try:
        _check_shapes(sample)
    except ValueError as error:
        raise UserInputError(f"{origin}: {error}") from error
    return sample


def read_sample(directory: str | os.PathLike, *, extras: bool = True) -> PortraitSample:
    """Read a sample folder; `extras=False` skips normals, albedo and relit images."""
    directory = Path(directory)
    if not is_sample(directory):
        raise UserInputError(f"{directory}: not a sample folder (needs rgb.png, depth.npy, mask.png, meta.json)")
    names = list(REQUIRED_FILES)
    if extras:
        names += [name for name in ("normal.png", "albedo.png") if (directory / name).is_file()]
        names += [path.name for path in sorted(directory.glob("relit_*.png"))]
    files = {}
    for name in names:
        try:
            files[name] = (directory / name).read_bytes()
        except OSError as error:
            raise UserInputError(f"{directory / name}: cannot read ({error})") from error
    return decode_sample(files, origin=str(directory), extras=extras)


def find_samples(root: str | os.PathLike, *, include_sequences: bool = False) -> list[Path]:
    """Sample folders at or below `root`, sorted; frames of sequences only with `include_sequences`.

    Hidden folders (temporary ones of unfinished writes) are skipped.
    """
    found = []
    for directory, subfolders, _files in os.walk(root):
        path = Path(directory)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        if is_sample(path):
            found.append(path)
            subfolders.clear()
        elif is_sequence(path) and not include_sequences:
            subfolders.clear()
    return sorted(found)


def frame_folder_name(index: int) -> str:
    return f"{index:06d}"


def is_sequence(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / "meta.json").is_file() and (directory / FRAMES_FOLDER).is_dir()


def sequence_frames(directory: str | os.PathLike) -> list[Path]:
    """The frame sample folders of a sequence, in time order."""
    directory = Path(directory)
    if not is_sequence(directory):
        raise UserInputError(f"{directory}: not a sequence folder (needs meta.json and {FRAMES_FOLDER}/)")
    return sorted(path for path in (directory / FRAMES_FOLDER).iterdir() if is_sample(path))


def read_sequence_audio(directory: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The sequence's audio as float32 mono in [-1, 1] and its sample rate."""
    directory = Path(directory)
    path = directory / read_meta(directory).get("audio", AUDIO_FILE)
    try:
        audio, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as error:  # libsndfile errors are RuntimeErrors
        raise UserInputError(f"{path}: cannot read audio ({error})") from error
    return audio.mean(axis=1), int(sample_rate)


def write_sequence(
    directory: str | os.PathLike,
    frames: Iterable[PortraitSample],
    *,
    meta: dict[str, Any],
    audio: np.ndarray,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    fps: int = SEQUENCE_FPS,
    overwrite: bool = False,
) -> Path:
    """Write a sequence of consecutive frames (from frame 0) with its mono audio, atomically.

    `frames` may be a generator: frames are written as they come, into the temporary folder.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise UserInputError(f"{directory}: sequence folder already exists")
    with atomic_folder(directory) as temporary:
        count = 0
        for count, frame in enumerate(frames, start=1):
            write_sample(temporary / FRAMES_FOLDER / frame_folder_name(count - 1), frame)
        audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
        soundfile.write(temporary / AUDIO_FILE, audio, sample_rate, subtype="PCM_16", format="WAV")
        sequence_meta = {
            **meta,
            "fps": fps,
            "audio": AUDIO_FILE,
            "audio_sample_rate": sample_rate,
            "frame_count": count,
            "frames": list(range(count)),
        }
        (temporary / "meta.json").write_text(json.dumps(sequence_meta, indent=2, sort_keys=True) + "\n")
    return directory
