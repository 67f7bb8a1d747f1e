"""The batch: prepare every photo, video and depth-camera capture (in worker processes), resume, and summarise.

Output layout under the output folder:

    NAME/                   a photo's sample (largest face), or NAME_faceK/ per face with `all_faces`
    NAME/                   a depth-camera capture's sample (largest face), with its measured depth
    NAME/                   a video's sequence (see `sequences`)
    .prepare/NAME.json      the record of a finished input, which makes a rerun with the same options skip it
    prepare_summary.json    the last run's summary

NAME comes from the input's path (see `inputs`). Samples and sequences are written under temporary names
and renamed into place, so an interrupted run leaves nothing half-written; its unfinished inputs have no
record and are redone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rgbd_portrait.data.image_io import load_image, to_uint8_rgb
from rgbd_portrait.data.prepare.backends import check_depth_backend_options, create_depth_backend
from rgbd_portrait.data.prepare.dependencies import import_cv2, import_mediapipe
from rgbd_portrait.data.prepare.inputs import InputFile, find_inputs, split_for
from rgbd_portrait.data.prepare.portrait import PortraitPreparer
from rgbd_portrait.data.prepare.sequences import prepare_sequence
from rgbd_portrait.data.rgbd_captures import read_capture
from rgbd_portrait.data.sample_format import is_sample, write_sample
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import write_bytes_atomically

RECORDS_FOLDER = ".prepare"
SUMMARY_FILE = "prepare_summary.json"
# Crops must tile into VAE latents.
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides what a prepared sample looks like (recorded, so a rerun can tell)."""

    size: int = 512
    all_faces: bool = False
    depth_backend: str = "face-mesh"
    depth_model: str | None = None
    depth_model_output: str = "auto"
    identity_from: str = "file"  # "file": one identity per input; "folder": the name of the input's folder
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    min_face_confidence: float = 0.5
    crop_smoothing_s: float = 0.1  # Gaussian σ over time for video crops

    def check(self) -> None:
        if self.size < 2 * SIZE_MULTIPLE or self.size % SIZE_MULTIPLE:
            raise UserInputError(f"--size {self.size}: must be a multiple of {SIZE_MULTIPLE}, at least 16")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise UserInputError(f"--val-fraction {self.val_fraction}: must be in [0, 1]")
        if not 0.0 <= self.test_fraction <= 1.0 - self.val_fraction:
            raise UserInputError(
                f"--test-fraction {self.test_fraction}: must be in [0, 1 - val fraction = {1 - self.val_fraction:g}]"
            )
        if not 0.0 < self.min_face_confidence < 1.0:
            raise UserInputError(f"--min-face-confidence {self.min_face_confidence}: must be in (0, 1)")
        if self.crop_smoothing_s < 0:
            raise UserInputError(f"--crop-smoothing {self.crop_smoothing_s}: must be at least 0")
        check_depth_backend_options(self.depth_backend, model_path=self.depth_model, output=self.depth_model_output)


@dataclass
class FileOutcome:
    source: str
    is_video: bool
    outputs: list[str] = field(default_factory=list)  # folders written: samples, or one sequence
    faces_found: int = 0  # faces in a photo, or video frames with a face
    samples_written: int = 0  # photo samples, or sequence frames
    frames_read: int = 0
    failure: str | None = None


@dataclass
class PrepareSummary:
    files_found: int = 0
    already_prepared: int = 0
    files_read: int = 0
    faces_found: int = 0
    samples_written: int = 0  # photo samples plus video frames
    sequences_written: int = 0
    video_frames_without_face: int = 0
    files_without_face: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def add(self, outcome: FileOutcome) -> None:
        if outcome.failure is not None:
            self.failures.append((outcome.source, outcome.failure))
            return
        self.files_read += 1
        self.faces_found += outcome.faces_found
        self.samples_written += outcome.samples_written
        if outcome.faces_found == 0:
            self.files_without_face.append(outcome.source)
        if outcome.is_video:
            self.video_frames_without_face += outcome.frames_read - outcome.faces_found
            self.sequences_written += len(outcome.outputs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"files found: {self.files_found}, already prepared: {self.already_prepared}, read: {self.files_read}",
            f"faces found: {self.faces_found}, samples written: {self.samples_written} "
            f"(of which in {self.sequences_written} video sequences)",
            f"without a face: {len(self.files_without_face)} files, {self.video_frames_without_face} video frames",
            f"failures: {len(self.failures)}",
        ]
        lines += [f"  {source}: {reason}" for source, reason in self.failures]
        return "\n".join(lines)


def _record_path(out_dir: Path, item: InputFile) -> Path:
    return out_dir / RECORDS_FOLDER / f"{item.name}.json"


def is_prepared(out_dir: str | os.PathLike, item: InputFile, options: PrepareOptions) -> bool:
    """Whether an earlier run finished `item` with the same options and its outputs are still there."""
    out_dir = Path(out_dir)
    try:
        record = json.loads(_record_path(out_dir, item).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("settings") != asdict(options) or record.get("source") != str(item.path):
        return False
    return all(is_sample(out_dir / name) or (out_dir / name / "meta.json").is_file() for name in record["outputs"])


def _write_record(out_dir: Path, item: InputFile, options: PrepareOptions, outcome: FileOutcome) -> None:
    record = {"source": str(item.path), "outputs": outcome.outputs, "settings": asdict(options)}
    write_bytes_atomically(_record_path(out_dir, item), (json.dumps(record, indent=2) + "\n").encode())


def _base_meta(item: InputFile, identity: str, options: PrepareOptions) -> dict[str, Any]:
    return {
        "identity": identity,
        "split": split_for(identity, options.val_fraction, options.test_fraction),
        "source": str(item.path),
    }


def _prepare_photo(preparer: PortraitPreparer, item: InputFile, options: PrepareOptions, out_dir: Path) -> FileOutcome:
    image = to_uint8_rgb(load_image(item.path))
    faces = preparer.find_faces(image)
    outcome = FileOutcome(source=str(item.path), is_video=False, faces_found=len(faces))
    for index, face in enumerate(faces if options.all_faces else faces[:1]):
        name, identity = item.name, item.identity
        if options.all_faces:
            name = f"{item.name}_face{index}"
            # Faces in one photo are different people, unless identities come from folders of one person.
            identity = f"{item.identity}_face{index}" if options.identity_from == "file" else item.identity
        meta = {**_base_meta(item, identity, options), "face_index": index}
        write_sample(out_dir / name, preparer.sample(image, face, preparer.align(face), meta=meta), overwrite=True)
        outcome.outputs.append(name)
        outcome.samples_written += 1
    return outcome


def _prepare_capture(
    preparer: PortraitPreparer, item: InputFile, options: PrepareOptions, out_dir: Path
) -> FileOutcome:
    capture = read_capture(item.path)
    faces = preparer.find_faces(capture.rgb)
    outcome = FileOutcome(source=str(item.path), is_video=False, faces_found=len(faces))
    if faces:
        sample = preparer.measured_sample(
            capture, faces[0], preparer.align(faces[0]), meta=_base_meta(item, item.identity, options)
        )
        write_sample(out_dir / item.name, sample, overwrite=True)
        outcome.outputs.append(item.name)
        outcome.samples_written += 1
    return outcome


def _prepare_video(
    preparer: PortraitPreparer, item: InputFile, options: PrepareOptions, out_dir: Path, *, progress: bool
) -> FileOutcome:
    frames_read, written = prepare_sequence(
        preparer,
        item.path,
        out_dir / item.name,
        meta=_base_meta(item, item.identity, options),
        crop_smoothing_s=options.crop_smoothing_s,
        progress=progress,
    )
    return FileOutcome(
        source=str(item.path),
        is_video=True,
        outputs=[item.name] if written else [],
        faces_found=len(written),
        samples_written=len(written),
        frames_read=frames_read,
    )


def prepare_file(
    preparer: PortraitPreparer, item: InputFile, options: PrepareOptions, out_dir: Path, *, progress: bool = False
) -> FileOutcome:
    """Prepare one photo, video or capture; any failure is returned in the outcome, never raised."""
    try:
        if item.is_video:
            outcome = _prepare_video(preparer, item, options, out_dir, progress=progress)
        elif item.is_capture:
            outcome = _prepare_capture(preparer, item, options, out_dir)
        else:
            outcome = _prepare_photo(preparer, item, options, out_dir)
        _write_record(out_dir, item, options, outcome)
    except UserInputError as error:
        # The summary lists reasons under their file, which the message names already.
        reason = str(error).removeprefix(f"{item.path}: ")
        return FileOutcome(source=str(item.path), is_video=item.is_video, failure=reason)
    except Exception as error:  # a batch outlives any one bad file; the reason goes into the summary
        return FileOutcome(source=str(item.path), is_video=item.is_video, failure=f"{type(error).__name__}: {error}")
    return outcome


def _new_preparer(options: PrepareOptions, device: str | None) -> PortraitPreparer:
    backend = create_depth_backend(
        options.depth_backend, model_path=options.depth_model, device=device, output=options.depth_model_output
    )
    return PortraitPreparer(size=options.size, depth_backend=backend, min_face_confidence=options.min_face_confidence)


class WorkerStartError(Exception):
    """A worker process could not build its models; the message says why."""


# Each worker process builds its own models once (MediaPipe graphs are not shared across processes). A
# failure is kept and raised with the first task, so the main process can stop the batch with the reason.
_worker_preparer: PortraitPreparer | None = None
_worker_start_error: str | None = None


def _start_worker(options: PrepareOptions, device: str | None) -> None:
    global _worker_preparer, _worker_start_error
    try:
        _worker_preparer = _new_preparer(options, device)
    except Exception as error:
        _worker_start_error = str(error) if isinstance(error, UserInputError) else f"{type(error).__name__}: {error}"


def _prepare_in_worker(item: InputFile, options: PrepareOptions, out_dir: Path) -> FileOutcome:
    if _worker_preparer is None:
        raise WorkerStartError(_worker_start_error)
    return prepare_file(_worker_preparer, item, options, out_dir)


def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    size: int = 512,
    all_faces: bool = False,
    depth_backend: str = "face-mesh",
    depth_model: str | os.PathLike | None = None,
    depth_model_output: str = "auto",
    device: str | None = None,
    identity_from: str = "file",
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    min_face_confidence: float = 0.5,
    crop_smoothing_s: float = 0.1,
    workers: int = 1,
    progress: bool = True,
) -> PrepareSummary:
    """Turn photos and videos (files or folders) into samples under `out_dir`; see the module text.

    Inputs finished by an earlier run with the same options are skipped. Failures are reported per file
    in the returned summary (also written to `out_dir/prepare_summary.json`), never raised; bad options
    and missing inputs or packages raise `UserInputError` before any work.
    """
    options = PrepareOptions(
        size=size,
        all_faces=all_faces,
        depth_backend=depth_backend,
        depth_model=None if depth_model is None else str(depth_model),
        depth_model_output=depth_model_output,
        identity_from=identity_from,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_face_confidence=min_face_confidence,
        crop_smoothing_s=crop_smoothing_s,
    )
    options.check()
    if workers < 1:
        raise UserInputError(f"--workers {workers}: must be at least 1")
    import_mediapipe()
    import_cv2()
    out_dir = Path(out_dir)
    items, unsupported = find_inputs(inputs, identity_from=identity_from, exclude=out_dir)
    summary = PrepareSummary(files_found=len(items) + len(unsupported), failures=list(unsupported))
    todo = [item for item in items if not is_prepared(out_dir, item, options)]
    summary.already_prepared = len(items) - len(todo)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc="prepare", unit="file", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            _prepare_here(todo, options, device, out_dir, summary, bar, progress=progress)
        else:
            _prepare_in_pool(todo, options, device, out_dir, summary, bar, workers=workers)
    summary.failures.sort()
    write_bytes_atomically(out_dir / SUMMARY_FILE, (json.dumps(summary.to_dict(), indent=2) + "\n").encode())
    return summary


def _prepare_here(
    todo: list[InputFile],
    options: PrepareOptions,
    device: str | None,
    out_dir: Path,
    summary: PrepareSummary,
    bar: tqdm,
    *,
    progress: bool,
) -> None:
    if not todo:
        return
    preparer = _new_preparer(options, device)
    try:
        for item in todo:
            summary.add(prepare_file(preparer, item, options, out_dir, progress=progress))
            bar.update()
    finally:
        preparer.close()


def _prepare_in_pool(
    todo: list[InputFile],
    options: PrepareOptions,
    device: str | None,
    out_dir: Path,
    summary: PrepareSummary,
    bar: tqdm,
    *,
    workers: int,
) -> None:
    # "spawn": MediaPipe and torch hold threads and native state that a forked child must not inherit.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(todo)), mp_context=context, initializer=_start_worker, initargs=(options, device)
    ) as pool:
        futures: dict[Future, InputFile] = {
            pool.submit(_prepare_in_worker, item, options, out_dir): item for item in todo
        }
        for future in as_completed(futures):
            item = futures[future]
            try:
                outcome = future.result()
            except WorkerStartError as error:
                pool.shutdown(cancel_futures=True)
                raise UserInputError(str(error)) from error
            except BrokenProcessPool as error:
                reason = f"worker process stopped unexpectedly ({error})"
                outcome = FileOutcome(source=str(item.path), is_video=item.is_video, failure=reason)
            summary.add(outcome)
            bar.update()
