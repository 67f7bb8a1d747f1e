"""Tasks on files: read the user's files, run the pipeline, write one result folder per result.

What the CLI commands call, usable from Python alike. Each result goes to `out_dir/NAME/` (see
`rgbd_portrait.pipelines.export` for its files), NAME derived from the input file's name:

    generate     out_dir/<reference>_<k>/   one per sample k
    depth        out_dir/<image>/           images processed in batches, with a progress bar
    render       out_dir/<depth>_<k>/       one per sample k
    relight      out_dir/<image>/

`pipeline` is a pipeline, or a function that makes one: it is called only after the input files and the
destinations are checked, so a wrong path fails in a moment rather than after loading a model. Images of a
batch run are read batch by batch: an unreadable one stops the run with an error naming it, after the results
of the earlier batches are complete. Seeds make runs reproducible: input i of a batch run gets `seed + i`
whatever the batch size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rgbd_portrait.data.image_io import load_depth, load_image
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.pipelines.export import DEFAULT_EXPORT, ExportOptions, result_images, write_result
from rgbd_portrait.pipelines.output import RGBDPortraitOutput
from rgbd_portrait.pipelines.pipeline import LightInput, RGBDPortraitPipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

PipelineSource = RGBDPortraitPipeline | Callable[[], RGBDPortraitPipeline]


def _pipeline(source: PipelineSource) -> RGBDPortraitPipeline:
    return source if isinstance(source, RGBDPortraitPipeline) else source()


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (a folder contributes its images, recursively, in sorted order)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file()
                and candidate.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
            )
            if not images:
                raise UserInputError(f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise UserInputError(f"{path}: no such file or folder")
    return found


def result_names(paths: Sequence[Path]) -> list[str]:
    """A distinct folder name per input: its stem, with its suffix and then an index where stems collide."""
    stems = [path.stem for path in paths]
    names = [
        stem if stems.count(stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.')}" for stem, path in zip(stems, paths)
    ]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}_{count}")
    return unique


def _generator(seed: int) -> torch.Generator:
    # Noise is drawn on the CPU, so a seed gives the same noise on every device.
    return torch.Generator(device="cpu").manual_seed(seed)


def _record(task: str, options: dict[str, Any], **files: Any) -> dict[str, Any]:
    """result.json: the task, the input files and the options, as JSON values."""
    values = {
        key: value if isinstance(value, int | float | str | bool | None) else str(value)
        for key, value in options.items()
    }
    return {"task": task, **{key: str(value) for key, value in files.items() if value is not None}, **values}


def _write_samples(
    output: RGBDPortraitOutput,
    folders: Sequence[Path],
    export: ExportOptions,
    *,
    preview_inputs: list[tuple[str, np.ndarray]],
    record: dict[str, Any],
) -> list[Path]:
    """One folder per sample of a single-input task; the sample index goes to each result.json."""
    written = []
    for index, result in enumerate(result_images(output)):
        result.preview_inputs = preview_inputs
        written.append(write_result(folders[index], result, record=record | {"sample": index}, options=export))
    return written


def run_depth(
    pipeline: PipelineSource,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    batch_size: int = 4,
    seed: int = 0,
    export: ExportOptions = DEFAULT_EXPORT,
    progress: bool = True,
    **options: Any,
) -> list[Path]:
    """Image→depth for every image in `inputs` (files or folders); `options` go to `predict_depth`.

    `mask` (optional, one mask file) applies to a single input image.
    """
    if batch_size <= 0:
        raise UserInputError(f"batch_size: must be positive, got {batch_size}")
    paths = collect_images(inputs)
    if mask is not None and len(paths) != 1:
        raise UserInputError(f"{mask}: a mask file applies to one input image, got {len(paths)} images")
    folders = [Path(out_dir) / name for name in result_names(paths)]
    export.check(folders)
    pipeline = _pipeline(pipeline)
    written = []
    with tqdm(total=len(paths), desc="depth", unit="image", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            output = pipeline.predict_depth(
                [str(path) for path in batch],
                mask=None if mask is None else str(mask),
                generator=[_generator(seed + start + offset) for offset in range(len(batch))],
                output_type="np",
                **options,
            )
            for offset, result in enumerate(result_images(output)):
                index = start + offset
                result.preview_inputs = [("input", result.rgb)]
                result.rgb_caption = None
                record = _record("image_to_depth", options | {"seed": seed + index}, image=paths[index], mask=mask)
                written.append(write_result(folders[index], result, record=record, options=export))
            bar.update(len(batch))
    return written


def run_generate(
    pipeline: PipelineSource,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_samples: int = 1,
    seed: int = 0,
    export: ExportOptions = DEFAULT_EXPORT,
    **options: Any,
) -> list[Path]:
    """Joint generation from one reference file; `options` go to `generate` (e.g. `known_depth=PATH`)."""
    reference = Path(reference)
    folders = [Path(out_dir) / f"{reference.stem}_{index}" for index in range(num_samples)]
    export.check(folders)
    reference_image = load_image(reference)
    output = _pipeline(pipeline).generate(
        reference_image, num_samples=num_samples, generator=_generator(seed), output_type="np", **options
    )
    record = _record("joint", options | {"seed": seed}, reference=reference)
    return _write_samples(output, folders, export, preview_inputs=[("reference", reference_image)], record=record)


def run_render(
    pipeline: PipelineSource,
    depth: str | os.PathLike,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    num_samples: int = 1,
    seed: int = 0,
    export: ExportOptions = DEFAULT_EXPORT,
    **options: Any,
) -> list[Path]:
    """Depth→image from a depth file and a reference file; `options` go to `render`."""
    depth, reference = Path(depth), Path(reference)
    folders = [Path(out_dir) / f"{depth.stem}_{index}" for index in range(num_samples)]
    export.check(folders)
    reference_image = load_image(reference)
    load_depth(depth, mask_path=mask)  # fail on a bad depth or mask file before the model loads
    output = _pipeline(pipeline).render(
        str(depth),
        reference_image,
        mask=None if mask is None else str(mask),
        num_samples=num_samples,
        generator=_generator(seed),
        output_type="np",
        **options,
    )
    record = _record("depth_to_image", options | {"seed": seed}, depth=depth, reference=reference, mask=mask)
    return _write_samples(output, folders, export, preview_inputs=[("reference", reference_image)], record=record)


def run_relight(
    pipeline: PipelineSource,
    image: str | os.PathLike,
    light: LightInput,
    out_dir: str | os.PathLike,
    *,
    depth: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    seed: int = 0,
    export: ExportOptions = DEFAULT_EXPORT,
    **options: Any,
) -> Path:
    """Relight one image file (depth from `depth` or predicted); `options` go to `relight`."""
    image = Path(image)
    folder = Path(out_dir) / image.stem
    export.check([folder])
    input_image = load_image(image)
    if depth is not None:
        load_depth(depth)  # fail on a bad depth file before the model loads
    output = _pipeline(pipeline).relight(
        str(image),
        light,
        depth=None if depth is None else str(depth),
        mask=None if mask is None else str(mask),
        generator=_generator(seed),
        output_type="np",
        **options,
    )
    (result,) = result_images(output)
    result.preview_inputs = [("input", input_image)]
    result.rgb_caption = "relit"
    record = _record("relight", options | {"seed": seed, "light": light}, image=image, depth=depth, mask=mask)
    return write_result(folder, result, record=record, options=export)
