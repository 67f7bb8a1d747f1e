"""Writing files and folders whole or not at all: a temporary name beside the destination, then a rename.

Every writer in the package goes through here, so a failed or interrupted run never leaves a half-written
sample, checkpoint or result, and everything written gets the permissions of the user's umask (Python's
`mkstemp`/`mkdtemp` would make it private).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temporary_folder_beside(destination: str | os.PathLike) -> Path:
    """A new, hidden, empty folder next to `destination` (same file system, so a rename is atomic)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    temporary.chmod(0o777 & ~_current_umask())
    return temporary


def temporary_file_beside(destination: str | os.PathLike) -> Path:
    """A new, hidden, empty file next to `destination`."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(0o666 & ~_current_umask())
    return temporary


def replace_folder(temporary: Path, destination: Path) -> None:
    """Move a finished folder into place; an existing `destination` is replaced only after the move."""
    previous = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.old")
    if destination.exists():
        os.replace(destination, previous)
    os.replace(temporary, destination)
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def atomic_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that becomes `destination` when the block succeeds and vanishes otherwise.

    An existing `destination` is replaced: callers decide beforehand whether that is allowed.
    """
    destination = Path(destination)
    temporary = temporary_folder_beside(destination)
    try:
        yield temporary
        replace_folder(temporary, destination)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextmanager
def atomic_file(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path that becomes `destination` when the block succeeds."""
    destination = Path(destination)
    temporary = temporary_file_beside(destination)
    try:
        yield temporary
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)
    return path
