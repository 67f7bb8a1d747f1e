"""Finding the photos, videos and depth-camera captures to prepare, and naming their outputs.

A depth-camera capture is a folder in rap3df's layout (`data.rgbd_captures`): one input, whose files are not
inputs of their own. An input's NAME is its path relative to the folder it was found in (or its file name, when given
directly), without the suffix, with "/" replaced by "__"; inputs that differ only in their suffix keep it
(`face_jpg`, `face_png`).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rgbd_portrait.data.prepare.media import PHOTO_SUFFIXES, VIDEO_SUFFIXES
from rgbd_portrait.data.rgbd_captures import is_capture
from rgbd_portrait.errors import UserInputError

IDENTITY_SOURCES = ("file", "folder")


@dataclass(frozen=True)
class InputFile:
    path: Path
    name: str  # output name (see the module text)
    identity: str

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES

    @property
    def is_capture(self) -> bool:
        """A depth-camera capture folder (`data.rgbd_captures`)."""
        return self.path.is_dir()


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_inputs(
    inputs: Sequence[str | os.PathLike], *, identity_from: str = "file", exclude: str | os.PathLike | None = None
) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Photos, videos and capture folders among `inputs` (files or folders, searched recursively, hidden entries
    skipped).

    Returns the inputs and, separately, the files of unsupported formats with the reason. `exclude` is a
    folder to leave out (the output folder, when it lies inside an input folder). Identities are the
    input's NAME (`identity_from="file"`) or the name of the folder holding it (`"folder"`).
    """
    if identity_from not in IDENTITY_SOURCES:
        raise UserInputError(f"--identity-from {identity_from!r}: expected one of {', '.join(IDENTITY_SOURCES)}")
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, tuple[str, ...]]] = []
    unsupported: list[tuple[str, str]] = []
    supported = PHOTO_SUFFIXES + VIDEO_SUFFIXES
    for given in map(Path, inputs):
        if is_capture(given):
            found.append((given, (given.name,)))
            continue
        if given.is_dir():
            entries = [
                path
                for path in given.rglob("*")
                if not _is_hidden(path, given) and (excluded is None or not path.resolve().is_relative_to(excluded))
            ]
            captures = sorted(path for path in entries if path.is_dir() and is_capture(path))
            found += [(capture, capture.relative_to(given).parts) for capture in captures]
            files = sorted(
                path
                for path in entries
                if path.is_file() and not any(path.is_relative_to(capture) for capture in captures)
            )
            relative_parts = [path.relative_to(given).parts for path in files]
        elif given.is_file():
            files, relative_parts = [given], [(given.name,)]
        else:
            raise UserInputError(f"{given}: no such file or folder")
        for path, parts in zip(files, relative_parts):
            if path.suffix.lower() in supported:
                found.append((path, parts))
            else:
                reason = f"unsupported format {path.suffix or '(none)'!r} (supported: {' '.join(supported)})"
                unsupported.append((str(path), reason))
    return _named_inputs(found, identity_from=identity_from), unsupported


def _named_inputs(found: list[tuple[Path, tuple[str, ...]]], *, identity_from: str) -> list[InputFile]:
    stems = ["__".join([*parts[:-1], Path(parts[-1]).stem]) for _, parts in found]
    stem_counts = Counter(stems)
    names = [
        stem if stem_counts[stem] == 1 else f"{stem}_{path.suffix.lstrip('.').lower()}"
        for stem, (path, _) in zip(stems, found)
    ]
    first_with_name: dict[str, Path] = {}
    for name, (path, _) in zip(names, found):
        if name in first_with_name:
            raise UserInputError(
                f"{path}: its output name {name!r} is also that of {first_with_name[name]}; rename one"
            )
        first_with_name[name] = path
    return [
        InputFile(path=path, name=name, identity=name if identity_from == "file" else path.resolve().parent.name)
        for name, (path, _) in zip(names, found)
    ]


def split_for(identity: str, val_fraction: float, test_fraction: float = 0.0) -> str:
    """'test', 'val' or 'train', fixed per identity by a hash, so no identity is in two splits.

    The test share comes first on the hash's scale, so changing `val_fraction` never moves a test identity.
    """
    position = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"
