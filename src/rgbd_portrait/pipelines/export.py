"""Writing one pipeline result to a folder: every requested export, all or nothing.

A result folder holds (each optional, chosen by `exports`)::

    rgb.png           the RGB result (the input image for image→depth; the relit image for relighting)
    depth.npy         float32 affine-invariant depth in [0, 1], larger = farther
    depth.png         the same as 16-bit greyscale (0 = near, 65535 = far)
    depth_color.png   colourised depth (Spectral: near red, far blue; black off the mask)
    normals.png       camera-space normals as (n + 1) / 2 RGB, black where undefined
    uncertainty.npy   ensemble uncertainty (image→depth with more than one member)
    albedo.png        relighting: the estimated reflectance
    shading.png       relighting: the new light's shading
    point_cloud.ply   coloured points on the mask, unprojected under the geometry module's assumptions
    mesh.glb|.obj     coloured triangle mesh of the same points
    preview.png       the inputs and results side by side
    result.json       what produced it: task, input files, options

The folder is written under a temporary name next to its destination and renamed into place, so a failed run
leaves nothing half-written; an existing folder is replaced only if it is a result folder (has result.json).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgbd_portrait.data.image_io import (
    colorize_depth,
    write_depth_colormap,
    write_depth_npy,
    write_depth_png16,
    write_normals_png,
    write_preview,
    write_rgb_png,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import atomic_folder
from rgbd_portrait.geometry.camera import unproject_relative_depth
from rgbd_portrait.geometry.pointcloud import write_mesh, write_point_cloud
from rgbd_portrait.pipelines.export_names import EXPORTS, MESH_FORMATS
from rgbd_portrait.pipelines.output import RGBDPortraitOutput

RESULT_RECORD = "result.json"


@dataclass
class ResultImages:
    """One result as numpy arrays at the file boundary (see `rgbd_portrait.data.image_io`)."""

    rgb: np.ndarray  # (H, W, 3) in [0, 1]
    depth: np.ndarray  # (H, W) in [0, 1]
    normals: np.ndarray  # (H, W, 3)
    mask: np.ndarray  # (H, W) bool
    uncertainty: np.ndarray | None = None  # (H, W)
    albedo: np.ndarray | None = None  # (H, W, 3)
    shading: np.ndarray | None = None  # (H, W, 3)
    # Images shown before the results in the preview, e.g. [("reference", image)], and the caption of the
    # RGB result there (None: not shown, e.g. when it is the input image).
    preview_inputs: list[tuple[str, np.ndarray]] = field(default_factory=list)
    rgb_caption: str | None = "rgb"


def result_images(output: RGBDPortraitOutput) -> list[ResultImages]:
    """Split an `output_type="np"` pipeline output into one `ResultImages` per result."""
    if not isinstance(output.depth[0], np.ndarray):
        raise ValueError("result_images needs a pipeline output with output_type='np'")
    optional = {name: getattr(output, name, None) for name in ("uncertainty", "albedo", "shading")}
    return [
        ResultImages(
            rgb=output.rgb[index],
            depth=output.depth[index],
            normals=output.normals[index],
            mask=output.mask[index],
            **{name: None if values is None else values[index] for name, values in optional.items()},
        )
        for index in range(len(output.depth))
    ]


def _preview_panels(result: ResultImages) -> list[tuple[str, np.ndarray]]:
    panels = list(result.preview_inputs)
    if result.rgb_caption is not None:
        panels.append((result.rgb_caption, result.rgb))
    panels.append(("depth", colorize_depth(result.depth, mask=result.mask)))
    panels.append(("normals", (result.normals + 1.0) / 2.0))
    if result.uncertainty is not None:
        panels.append(("uncertainty", colorize_depth(result.uncertainty, mask=result.mask, value_range=None)))
    for name in ("albedo", "shading"):
        image = getattr(result, name)
        if image is not None:
            panels.append((name, image))
    return panels


def _write_files(folder: Path, result: ResultImages, exports: Sequence[str], mesh_format: str) -> None:
    wanted = set(exports)
    if "rgb" in wanted:
        write_rgb_png(folder / "rgb.png", result.rgb)
    if "depth_npy" in wanted:
        write_depth_npy(folder / "depth.npy", result.depth)
    if "depth_png" in wanted:
        write_depth_png16(folder / "depth.png", result.depth)
    if "depth_color" in wanted:
        write_depth_colormap(folder / "depth_color.png", result.depth, mask=result.mask)
    if "normals" in wanted:
        write_normals_png(folder / "normals.png", result.normals)
    if "uncertainty" in wanted and result.uncertainty is not None:
        write_depth_npy(folder / "uncertainty.npy", result.uncertainty)
    for name in ("albedo", "shading"):
        if name in wanted and getattr(result, name) is not None:
            write_rgb_png(folder / f"{name}.png", getattr(result, name))
    if wanted & {"point_cloud", "mesh"}:
        points = unproject_relative_depth(torch.from_numpy(np.ascontiguousarray(result.depth)))
        points = points.movedim(0, -1).numpy()
        if "point_cloud" in wanted:
            write_point_cloud(folder / "point_cloud.ply", points, result.rgb, mask=result.mask)
        if "mesh" in wanted:
            write_mesh(folder / f"mesh.{mesh_format}", points, result.rgb, mask=result.mask)
    if "preview" in wanted:
        write_preview(folder / "preview.png", _preview_panels(result))


def check_destination(folder: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse a destination that exists (unless `overwrite` and it is a result folder)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not overwrite:
        raise UserInputError(f"{folder}: already exists (use another output folder or overwrite)")
    if not (folder / RESULT_RECORD).is_file():
        raise UserInputError(f"{folder}: exists and is not a result folder; refusing to replace it")


@dataclass(frozen=True)
class ExportOptions:
    """Which files to write (`EXPORTS` names), the mesh format, and whether to replace existing results."""

    exports: Sequence[str] = EXPORTS
    mesh_format: str = "glb"
    overwrite: bool = False

    def check(self, folders: Sequence[str | os.PathLike] = ()) -> None:
        """Validate the options and the destinations, before any work."""
        unknown = sorted(set(self.exports) - set(EXPORTS))
        if unknown:
            raise UserInputError(f"exports: unknown {', '.join(unknown)}; choose from {', '.join(EXPORTS)}")
        if self.mesh_format not in MESH_FORMATS:
            raise UserInputError(f"mesh_format: {self.mesh_format!r} is not one of {', '.join(MESH_FORMATS)}")
        for folder in folders:
            check_destination(folder, overwrite=self.overwrite)


# Every file, nothing replaced: the default everywhere.
DEFAULT_EXPORT = ExportOptions()


def write_result(
    folder: str | os.PathLike,
    result: ResultImages,
    *,
    record: dict[str, Any],
    options: ExportOptions = DEFAULT_EXPORT,
) -> Path:
    """Write `result` to `folder` (see the module docstring); `record` goes to result.json."""
    folder = Path(folder)
    options.check([folder])
    with atomic_folder(folder) as temporary:
        _write_files(temporary, result, options.exports, options.mesh_format)
        (temporary / RESULT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return folder
