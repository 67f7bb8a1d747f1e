"""The synthetic studio: plans, renders and writes a whole data set of portraits with exact geometry.

Layout of the output folder (see `docs/synth.md`)::

    dataset.json                      options, identities per split; written last, when the set is complete
    train/ID_NNN/, val/..., test/...  one sample folder per still (`rgbd_portrait.data.sample_format`)
    train-000000.tar, ...             instead of the folders with `shards=True` (`rgbd_portrait.data.shards`)
    sequences/SPLIT/ID_talkNNN/       talking sequences: frames/NNNNNN/ samples, audio.wav, meta.json
    preview.png                       with `preview=True`: a contact sheet of the first identities

Every random choice comes from a generator seeded by (seed, what, which), so a sample does not depend on
the batch it was rendered in, and the same options give byte-identical files.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rgbd_portrait import __version__
from rgbd_portrait.data.sample_format import (
    SEQUENCE_FPS,
    PortraitSample,
    decode_sample,
    encode_sample,
    read_sample,
    write_sample,
    write_sequence,
)
from rgbd_portrait.data.shards import ShardWriter
from rgbd_portrait.data.synth.head import HeadScene
from rgbd_portrait.data.synth.parameters import (
    Identity,
    Lighting,
    View,
    sample_camera,
    sample_expression,
    sample_identity,
    sample_lighting,
    sample_pose,
    to_meta,
)
from rgbd_portrait.data.synth.preview import write_contact_sheet
from rgbd_portrait.data.synth.renderer import RenderSettings, render
from rgbd_portrait.data.synth.talking import talking_sequence
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.geometry.shading import direction_from_angles

SPLITS = ("train", "val", "test")
DATASET_FILE = "dataset.json"
PREVIEW_FILE = "preview.png"
SEQUENCES_FOLDER = "sequences"
PREVIEW_ROWS = 6
# Image sides must tile into VAE latents.
SIZE_MULTIPLE = 8
# Streams of the random generator: one per kind of choice, so adding one kind does not shift another.
_IDENTITY_STREAM, _STILL_STREAM, _SEQUENCE_STREAM, _SPLIT_STREAM = range(4)


@dataclass(frozen=True)
class StudioOptions:
    """What to render. Counts are per data set; fractions of identities go to val and test."""

    identities: int
    samples_per_identity: int
    size: int = 128
    relights: int = 2
    sequences: int = 0
    sequence_seconds: float = 2.0
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def check(self) -> None:
        for name in ("identities", "samples_per_identity"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("relights", "sequences"):
            if getattr(self, name) < 0:
                raise UserInputError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.size < 2 * SIZE_MULTIPLE or self.size % SIZE_MULTIPLE:
            raise UserInputError(f"size must be a multiple of {SIZE_MULTIPLE} and at least 16, got {self.size}")
        if not self.sequence_seconds > 0:
            raise UserInputError(f"sequence_seconds must be positive, got {self.sequence_seconds}")
        if not (self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1):
            raise UserInputError("val and test fractions must be non-negative and sum to less than 1")


@dataclass
class StudioSummary:
    root: Path
    samples: int
    sequences: int
    frames: int
    identities_per_split: dict[str, int]
    shards: list[Path] = field(default_factory=list)
    preview: Path | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        splits = ", ".join(f"{count} {split}" for split, count in self.identities_per_split.items())
        lines = [
            f"wrote {self.samples} samples and {self.sequences} sequences ({self.frames} frames) to {self.root} "
            f"in {self.seconds:.1f} s; identities: {splits}"
        ]
        if self.shards:
            lines.append(f"shards: {len(self.shards)}")
        if self.preview:
            lines.append(f"preview: {self.preview}")
        return "\n".join(lines)


def identity_name(index: int) -> str:
    return f"id{index:05d}"


def assign_splits(count: int, *, seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """The split of each identity: a seeded shuffle, then val and test take their (rounded) shares.

    With at least three identities, val and test each get one or more when their fraction is positive.
    """
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(count)
    sizes = {}
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        wanted = round(fraction * count)
        sizes[split] = max(wanted, 1) if fraction > 0 and count >= 3 else wanted
    splits = ["train"] * count
    for position, identity in enumerate(order):
        if position < sizes["val"]:
            splits[identity] = "val"
        elif position < sizes["val"] + sizes["test"]:
            splits[identity] = "test"
    return splits


def studio_identity(seed: int, index: int) -> Identity:
    return sample_identity(np.random.default_rng([seed, _IDENTITY_STREAM, index]), identity_name(index))


def still_view(options: StudioOptions, identity: Identity, identity_index: int, sample_index: int) -> View:
    """Sample `sample_index` of an identity: its own expression, pose, camera, light and relights."""
    rng = np.random.default_rng([options.seed, _STILL_STREAM, identity_index, sample_index])
    return View(
        identity=identity,
        expression=sample_expression(rng),
        pose=sample_pose(rng),
        camera=sample_camera(rng, options.size),
        lighting=sample_lighting(rng),
        relights=tuple(sample_lighting(rng) for _ in range(options.relights)),
    )


def lighting_meta(lighting: Lighting) -> dict:
    """The light as stored in meta.json, with each light's unit direction in the camera frame."""
    meta = to_meta(lighting)
    for light, entry in zip(lighting.lights, meta["lights"]):
        entry["direction"] = [round(float(c), 6) for c in direction_from_angles(light.azimuth, light.elevation)]
    return meta


def view_meta(view: View) -> dict:
    intrinsics = view.camera.intrinsics()
    return {
        "source": "synth",
        "generator": f"rgbd-portrait {__version__}",
        "depth_source": "exact",
        "depth_scale": {"units": "metres"},
        "intrinsics": intrinsics.as_matrix(),
        "camera": to_meta(view.camera),
        "identity_parameters": to_meta(view.identity),
        "expression": to_meta(view.expression),
        "pose": to_meta(view.pose),
        "light": lighting_meta(view.lighting),
        "relit": [lighting_meta(lighting) for lighting in view.relights],
        "colour": "sRGB PNGs; linear image = linear albedo x shading (SH environment x ambient occlusion "
        "+ directional lights x soft shadows), clipped to [0, 1]",
        "normal_frame": "camera: x right, y up, z towards the camera",
    }


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


def render_samples(
    views: Sequence[View],
    *,
    device: torch.device | str = "cpu",
    settings: RenderSettings | None = None,
) -> list[PortraitSample]:
    """Render views (same size and number of relights) into samples whose meta describes the view."""
    output = render(
        HeadScene(views, device=device),
        [view.camera for view in views],
        [[view.lighting, *view.relights] for view in views],
        settings=settings,
    )
    images = _to_uint8(output.images)
    albedo = _to_uint8(output.albedo)
    depth, mask, normal = output.depth.cpu().numpy(), output.mask.cpu().numpy(), output.normal.cpu().numpy()
    return [
        PortraitSample(
            rgb=images[index, 0],
            depth=depth[index],
            mask=mask[index],
            meta=view_meta(view),
            normal=normal[index],
            albedo=albedo[index],
            relit=list(images[index, 1:]),
        )
        for index, view in enumerate(views)
    ]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UserInputError(f"device {device!r}: not a torch device ({error})") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r}: CUDA is not available on this machine")


def _check_output(root: Path) -> None:
    """The output folder must be new or empty, and writable; checked before anything is rendered."""
    if root.exists() and not root.is_dir():
        raise UserInputError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise UserInputError(f"{root}: output folder is not empty")
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check.", dir=root)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserInputError(f"{root}: cannot write there ({error.strerror or error})") from error


@dataclass(frozen=True)
class _Job:
    """What every task of one `render_dataset` call shares (sent once to each worker process)."""

    options: StudioOptions
    people: tuple[Identity, ...]
    splits: tuple[str, ...]
    root: Path
    device: str
    batch_size: int
    shards: bool


@dataclass
class _Done:
    """A finished task: its stills as (name, split, encoded files or None when written), or a sequence."""

    stills: list[tuple[str, str, dict[str, bytes] | None]] = field(default_factory=list)
    sequences: int = 0
    frames: int = 0


def _still_name(identity: int, sample: int) -> str:
    return f"{identity_name(identity)}_{sample:03d}"


def _render_stills(job: _Job, batch: Sequence[tuple[int, int]]) -> _Done:
    """Render a batch of stills; write them, or encode them for the parent's shard writer."""
    views = [still_view(job.options, job.people[i], i, k) for i, k in batch]
    done = _Done()
    for (i, k), sample in zip(batch, render_samples(views, device=job.device)):
        name, split = _still_name(i, k), job.splits[i]
        sample.meta = {"identity": identity_name(i), "split": split, "sample": name, **sample.meta}
        if job.shards:
            done.stills.append((name, split, encode_sample(sample)))
        else:
            write_sample(job.root / split / name, sample)
            done.stills.append((name, split, None))
    return done


def _run_task(job: _Job, task: tuple[str, object]) -> _Done:
    kind, what = task
    if kind == "stills":
        return _render_stills(job, what)
    return _Done(sequences=1, frames=_write_talking_sequence(job, what))


def _start_worker() -> None:
    # Workers split the work between cores; threads inside one would only contend for them.
    torch.set_num_threads(1)


def _results(job: _Job, tasks: Sequence[tuple[str, object]], workers: int) -> Iterator[_Done]:
    """Task results in task order, computed here or by `workers` processes (a few tasks ahead each)."""
    if workers == 1:
        for task in tasks:
            yield _run_task(job, task)
        return
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as executor:
        pending: deque[Future] = deque()
        try:
            for task in tasks:
                pending.append(executor.submit(_run_task, job, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise


def render_dataset(
    out: str | os.PathLike,
    *,
    identities: int,
    samples_per_identity: int,
    size: int = 128,
    relights: int = 2,
    sequences: int = 0,
    sequence_seconds: float = 2.0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    device: str = "cpu",
    batch_size: int = 16,
    workers: int = 1,
    shards: bool = False,
    samples_per_shard: int = 1000,
    preview: bool = False,
    show_progress: bool = True,
) -> StudioSummary:
    """Render a synthetic data set into the new or empty folder `out` (see the module docstring).

    `workers` > 1 renders batches in that many processes of one thread each, which uses several CPU
    cores better than threads do for the renderer's many small operations; the files are the same.
    """
    options = StudioOptions(
        identities=identities,
        samples_per_identity=samples_per_identity,
        size=size,
        relights=relights,
        sequences=sequences,
        sequence_seconds=sequence_seconds,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    options.check()
    for name, value in (("batch_size", batch_size), ("workers", workers), ("samples_per_shard", samples_per_shard)):
        if value < 1:
            raise UserInputError(f"{name} must be at least 1, got {value}")
    _check_device(device)
    root = Path(out)
    _check_output(root)

    started = time.perf_counter()
    splits = assign_splits(identities, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    job = _Job(
        options=options,
        people=tuple(studio_identity(seed, index) for index in range(identities)),
        splits=tuple(splits),
        root=root,
        device=device,
        batch_size=batch_size,
        shards=shards,
    )
    stills = [(i, k) for i in range(identities) for k in range(samples_per_identity)]
    tasks = [("stills", batch) for batch in _batches(stills, batch_size)]
    tasks += [("sequence", index) for index in range(sequences)]
    summary = StudioSummary(
        root=root,
        samples=0,
        sequences=0,
        frames=0,
        identities_per_split={split: splits.count(split) for split in SPLITS},
    )
    previews = {_still_name(i, 0) for i in range(min(PREVIEW_ROWS, identities))}
    preview_samples: dict[str, PortraitSample] = {}
    frames_per_sequence = max(1, math.floor(sequence_seconds * SEQUENCE_FPS))
    bar = tqdm(
        total=len(stills) + sequences * frames_per_sequence, desc="rendering", unit="image", disable=not show_progress
    )
    with bar, ExitStack() as open_shards:
        # A shard writer deletes its unfinished shard if rendering fails.
        writers = {
            split: open_shards.enter_context(ShardWriter(root, prefix=split, samples_per_shard=samples_per_shard))
            for split in (SPLITS if shards else ())
        }
        for done in _results(job, tasks, workers):
            for name, split, files in done.stills:
                if files is not None:
                    writers[split].write_files(name, files)
                if name in previews:
                    preview_samples[name] = (
                        read_sample(root / split / name) if files is None else decode_sample(files, origin=name)
                    )
            summary.samples += len(done.stills)
            summary.frames += done.frames
            summary.sequences += done.sequences
            bar.update(len(done.stills) + done.frames)
        for writer in writers.values():
            writer.close()
            summary.shards += writer.written
    if preview:
        summary.preview = write_contact_sheet(root / PREVIEW_FILE, [preview_samples[n] for n in sorted(previews)])
    summary.seconds = time.perf_counter() - started
    description = {
        "generator": f"rgbd-portrait {__version__}",
        "options": asdict(options),
        "layout": "shards" if shards else "folders",
        "splits": {split: [identity_name(i) for i in range(identities) if splits[i] == split] for split in SPLITS},
        "samples": summary.samples,
        "sequences": summary.sequences,
        "frames": summary.frames,
    }
    write_bytes_atomically(root / DATASET_FILE, (json.dumps(description, indent=2, sort_keys=True) + "\n").encode())
    return summary


def _write_talking_sequence(job: _Job, index: int) -> int:
    """Render and write talking sequence `index` (identities taken in turn); returns its frame count."""
    options = job.options
    rng = np.random.default_rng([options.seed, _SEQUENCE_STREAM, index])
    person = index % len(job.people)
    identity = job.people[person]
    sequence = talking_sequence(
        rng,
        identity,
        seconds=options.sequence_seconds,
        camera=sample_camera(rng, options.size),
        lighting=sample_lighting(rng),
    )
    name = f"{identity.identity_id}_talk{index:03d}"
    base = {"identity": identity.identity_id, "split": job.splits[person], "sequence": name}

    def frames() -> Iterator[PortraitSample]:
        for start in range(0, len(sequence.views), job.batch_size):
            views = sequence.views[start : start + job.batch_size]
            for offset, sample in enumerate(render_samples(views, device=job.device)):
                frame = start + offset
                sample.meta = {**base, "frame_index": frame, "time_s": frame / SEQUENCE_FPS, **sample.meta}
                yield sample

    first = sequence.views[0]
    write_sequence(
        job.root / SEQUENCES_FOLDER / job.splits[person] / name,
        frames(),
        meta={
            **base,
            "source": "synth",
            "depth_source": "exact",
            "identity_parameters": to_meta(identity),
            "camera": to_meta(first.camera),
            "intrinsics": first.camera.intrinsics().as_matrix(),
            "light": lighting_meta(first.lighting),
            **sequence.meta(),
        },
        audio=sequence.speech.audio,
        sample_rate=sequence.speech.sample_rate,
    )
    return len(sequence.views)
