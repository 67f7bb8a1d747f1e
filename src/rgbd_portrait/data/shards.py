"""WebDataset-style tar shards of samples, for data sets too large for one folder per sample.

A shard is a plain, uncompressed tar whose members are a sample's files prefixed by the sample's key:
`KEY.rgb.png`, `KEY.depth.npy`, `KEY.mask.png`, `KEY.meta.json`, ... (the files of
`rgbd_portrait.data.sample_format`), consecutive per sample. Keys contain no dots. Shards are named
`PREFIX-NNNNNN.tar` and written under a temporary name, then renamed. Member headers carry no time stamps
or owners, so the same samples give byte-identical shards.

Reading needs no tar library at random access time: `index_shard` records each member's byte range once.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rgbd_portrait.data.sample_format import (
    PortraitSample,
    decode_meta,
    decode_sample,
    encode_sample,
    find_samples,
    read_meta,
    read_sample,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import temporary_file_beside

SHARD_SUFFIX = ".tar"


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}{SHARD_SUFFIX}"


class ShardWriter:
    """Writes samples into `directory/PREFIX-NNNNNN.tar`, `samples_per_shard` per shard.

    Use as a context manager; a shard becomes visible (renamed from its temporary name) when it is full
    or when the writer closes. On an exception the shard in progress is deleted.
    """

    def __init__(self, directory: str | os.PathLike, *, prefix: str, samples_per_shard: int = 1000):
        if samples_per_shard < 1:
            raise UserInputError(f"samples per shard must be at least 1, got {samples_per_shard}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._temporary: Path | None = None
        self._count = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._discard()

    def write(self, key: str, sample: PortraitSample) -> None:
        self.write_files(key, encode_sample(sample))

    def write_files(self, key: str, files: dict[str, bytes]) -> None:
        """Add a sample already encoded by `encode_sample`."""
        if "." in key or "/" in key:
            raise ValueError(f"shard keys may not contain '.' or '/': {key!r}")
        if self._tar is None:
            self._temporary = temporary_file_beside(self.directory / shard_name(self.prefix, len(self.written)))
            # Open across `write` calls; `_finish_shard` or `_discard` closes it.
            self._tar = tarfile.open(self._temporary, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        for name, content in files.items():
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            self._tar.addfile(info, io.BytesIO(content))
        self._count += 1
        if self._count == self.samples_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._tar.close()
        destination = self.directory / shard_name(self.prefix, len(self.written))
        os.replace(self._temporary, destination)
        self.written.append(destination)
        self._tar, self._temporary, self._count = None, None, 0

    def close(self) -> None:
        if self._tar is not None:
            self._finish_shard()

    def _discard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._temporary.unlink(missing_ok=True)
            self._tar, self._temporary, self._count = None, None, 0


@dataclass
class ShardedSample:
    """Where one sample's files lie in a shard: file name → (byte offset, size)."""

    shard: Path
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)

    def read_files(self, names: Iterable[str] | None = None) -> dict[str, bytes]:
        wanted = self.members if names is None else [name for name in names if name in self.members]
        files = {}
        with open(self.shard, "rb") as handle:
            for name in wanted:
                offset, size = self.members[name]
                handle.seek(offset)
                files[name] = handle.read(size)
        return files

    def read_meta(self) -> dict:
        if "meta.json" not in self.members:
            raise UserInputError(f"{self.shard}: sample {self.key} has no meta.json")
        return decode_meta(self.read_files(["meta.json"])["meta.json"], f"{self.shard}:{self.key}/meta.json")

    def read(self, *, extras: bool = True) -> PortraitSample:
        names = None if extras else ("rgb.png", "depth.npy", "mask.png", "meta.json")
        return decode_sample(self.read_files(names), origin=f"{self.shard}:{self.key}", extras=extras)


def index_shard(path: str | os.PathLike) -> list[ShardedSample]:
    """The samples of a shard in order, with their members' byte ranges."""
    path = Path(path)
    samples: dict[str, ShardedSample] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, name = member.name.rpartition("/")[2].partition(".")
                if not name:
                    continue
                sample = samples.setdefault(key, ShardedSample(shard=path, key=key))
                sample.members[name] = (member.offset_data, member.size)
    except (OSError, tarfile.TarError) as error:
        raise UserInputError(f"{path}: cannot read shard ({error})") from error
    return list(samples.values())


def pack_shards(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    samples_per_shard: int = 1000,
    show_progress: bool = True,
) -> list[Path]:
    """Convert every sample folder under `source` (not sequence frames) into shards in `destination`,
    one set per split (the samples' `meta["split"]`, "train" if absent).

    Keys are the folders' paths relative to `source` with '/' and '.' replaced by '_'.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() and any(destination.glob(f"*{SHARD_SUFFIX}")):
        raise UserInputError(f"{destination}: already holds shards")
    if destination.resolve().is_relative_to(source.resolve()):
        raise UserInputError(f"{destination}: must not be inside {source}, or readers would see samples twice")
    folders = find_samples(source)
    if not folders:
        raise UserInputError(f"{source}: no sample folders found")
    by_split: dict[str, list[Path]] = {}
    for sample in folders:
        by_split.setdefault(read_meta(sample).get("split", "train"), []).append(sample)
    keys = [str(folder.relative_to(source)).replace("/", "_").replace(".", "_") for folder in folders]
    if len(set(keys)) != len(keys):
        raise UserInputError(f"{source}: sample folder names collide once '/' and '.' become '_'")
    key_of = dict(zip(folders, keys))
    written = []
    with tqdm(total=len(folders), desc="packing shards", unit="sample", disable=not show_progress) as bar:
        for split, samples in sorted(by_split.items()):
            with ShardWriter(destination, prefix=split, samples_per_shard=samples_per_shard) as writer:
                for folder in samples:
                    writer.write(key_of[folder], read_sample(folder))
                    bar.update()
            written += writer.written
    return written
