"""What the app's controls run: the pipeline's tasks on uploaded files, and relighting in memory.

Each method takes the values of the components wired to it (`rgbd_portrait.app.layout`) and returns theirs.
Uploads arrive as paths in the app's temporary folder. Results are written by the functions the CLI runs
(`rgbd_portrait.pipelines.files`, `rgbd_portrait.pipelines.animation_export`) into a new folder under the
app's `results/`, so a download here is the file `rgbd-portrait depth` (generate, render, animate) writes.

Relighting keeps the subject of the last depth prediction (`Subject`: the portrait as the model saw it and its
depth) and shades it under each new light with `RGBDPortraitPipeline.relight(..., depth=...)`: moving a light
never runs the model again. An uploaded depth map replaces the predicted one until it is removed.

Bad input raises `gradio.Error` with the CLI's one-line message; an uploaded file is named there by its own
name rather than by its temporary path.
"""

from __future__ import annotations

import functools
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np

from rgbd_portrait.data.image_io import colorize_depth, load_image, to_uint8_rgb
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.relighting import DirectionalLight
from rgbd_portrait.pipelines.animation_export import run_animate
from rgbd_portrait.pipelines.export import ExportOptions
from rgbd_portrait.pipelines.files import run_depth, run_generate, run_render
from rgbd_portrait.pipelines.pipeline import RGBDPortraitPipeline

# The light choice that uses the azimuth, elevation and intensity controls; the other choices are presets.
LAMP = "lamp"
# A method with a parameter defaulting to this shows the pipeline's tqdm progress bars in the page.
TRACK_PROGRESS = gr.Progress(track_tqdm=True)
DEPTH_DOWNLOADS = ("depth.npy", "depth.png", "point_cloud.ply", "mesh.glb")
# Image→depth writes what the page shows and offers; generate and render write every export, zipped.
DEPTH_EXPORT = ExportOptions(
    exports=("rgb", "depth_npy", "depth_png", "depth_color", "normals", "uncertainty", "point_cloud", "mesh")
)


@dataclass(frozen=True)
class Subject:
    """The portrait being relit, at the model's resolution S."""

    rgb: np.ndarray  # (S, S, 3) in [0, 1]: the portrait as the model saw it
    predicted: np.ndarray  # (S, S) its predicted depth in [0, 1]
    depth: np.ndarray  # (S, S) the depth in use: the predicted one or an uploaded one fitted to the model
    mask: np.ndarray | None  # (S, S) bool: where the depth in use is valid (None: everywhere)


def _page_errors(method):
    """A `UserInputError` → `gradio.Error` with the same message, uploaded files named by their own names."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except UserInputError as error:
            message = str(error)
            for value in (*args, *kwargs.values()):
                if isinstance(value, str) and Path(value).is_absolute():
                    message = message.replace(value, Path(value).name)
            raise gr.Error(message, print_exception=False) from None

    return run


def _portrait(path: str | None) -> str:
    if path is None:
        raise UserInputError("no portrait: upload one at the top of the page or pick an example")
    return path


def _seed(value: float | None) -> int:
    if value is None:  # the number field was emptied
        raise UserInputError("seed: empty; give a whole number")
    return int(value)


def _lighting(light: str, azimuth: float, elevation: float, intensity: float) -> DirectionalLight | str:
    """What the pipeline's `relight` takes for the light controls: a lamp at the angles, or a preset's name."""
    if light == LAMP:
        return DirectionalLight.from_angles(float(azimuth), float(elevation), intensity=float(intensity))
    return light


def _zip(folder: Path) -> str:
    """Every result folder of a request in one archive beside it."""
    return shutil.make_archive(str(folder), "zip", root_dir=folder)


class AppTasks:
    """The app's work on one shared pipeline; results go to new folders under `results`."""

    def __init__(self, pipeline: RGBDPortraitPipeline, results: Path):
        self.pipeline = pipeline
        self.results = results

    def _new_folder(self, task: str) -> Path:
        return self.results / f"{task}-{uuid.uuid4().hex}"

    @_page_errors
    def depth(self, portrait: str | None, ensemble: float, steps: float, seed: float):
        """Image→depth of the portrait: (portrait as seen, depth, normals, uncertainty, mesh, downloads, subject);
        all empty when there is no portrait (it was removed)."""
        if portrait is None:
            return None, None, None, None, None, None, None
        (folder,) = run_depth(
            self.pipeline,
            [portrait],
            self._new_folder("depth"),
            seed=_seed(seed),
            export=DEPTH_EXPORT,
            progress=False,
            ensemble_size=int(ensemble),
            num_inference_steps=int(steps),
        )
        depth = np.load(folder / "depth.npy")
        subject = Subject(rgb=load_image(folder / "rgb.png"), predicted=depth, depth=depth, mask=None)
        uncertainty_file = folder / "uncertainty.npy"
        uncertainty = None
        if uncertainty_file.is_file():
            uncertainty = colorize_depth(np.load(uncertainty_file), value_range=None)
        return (
            str(folder / "rgb.png"),
            str(folder / "depth_color.png"),
            str(folder / "normals.png"),
            uncertainty,
            str(folder / "mesh.glb"),
            [str(folder / name) for name in DEPTH_DOWNLOADS],
            subject,
        )

    def _relit(self, subject: Subject, light: str, azimuth: float, elevation: float, intensity: float, ambient: float):
        output = self.pipeline.relight(
            subject.rgb,
            _lighting(light, azimuth, elevation, intensity),
            depth=subject.depth,
            mask=subject.mask,
            ambient=float(ambient),
            center_on_face=False,
            output_type="np",
        )
        return tuple(to_uint8_rgb(images[0]) for images in (output.rgb, output.shading, output.albedo))

    @_page_errors
    def relight(self, subject: Subject | None, light: str, azimuth, elevation, intensity, ambient):
        """(relit, shading, albedo) of the subject under `light`: LAMP (the angles and intensity) or a preset."""
        if subject is None:
            raise UserInputError("no depth to relight with: upload a portrait at the top of the page first")
        return self._relit(subject, light, azimuth, elevation, intensity, ambient)

    @_page_errors
    def relight_new_subject(self, subject: Subject | None, light: str, azimuth, elevation, intensity, ambient):
        """`relight` after a depth prediction; nothing when the portrait was removed."""
        if subject is None:
            return None, None, None
        return self._relit(subject, light, azimuth, elevation, intensity, ambient)

    @_page_errors
    def use_depth(
        self,
        portrait: str | None,
        subject: Subject | None,
        depth: str | None,
        light,
        azimuth,
        elevation,
        intensity,
        ambient,
    ):
        """An uploaded depth map of the portrait (its size) replaces the predicted depth; None restores that.
        Returns the relit images and the subject."""
        if portrait is None or subject is None:
            raise UserInputError("no portrait to relight: upload one at the top of the page first")
        if depth is None:
            subject = replace(subject, depth=subject.predicted, mask=None)
            return *self._relit(subject, light, azimuth, elevation, intensity, ambient), subject
        # The portrait and its depth fitted together, as `rgbd-portrait relight IMAGE --depth DEPTH` does; the
        # fitted depth is kept for the next lights.
        lighting = _lighting(light, azimuth, elevation, intensity)
        output = self.pipeline.relight(portrait, lighting, depth=depth, ambient=float(ambient), output_type="np")
        subject = replace(subject, depth=output.depth[0], mask=output.mask[0])
        images = tuple(to_uint8_rgb(images[0]) for images in (output.rgb, output.shading, output.albedo))
        return *images, subject

    @_page_errors
    def generate(self, portrait, samples, seed, steps, guidance, progress=TRACK_PROGRESS):
        """Joint generation with the portrait as reference: (images and depths, first mesh, zip of all results)."""
        out = self._new_folder("generate")
        folders = run_generate(
            self.pipeline,
            _portrait(portrait),
            out,
            num_samples=int(samples),
            seed=_seed(seed),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
        )
        gallery = []
        for index, folder in enumerate(folders):
            gallery += [
                (str(folder / "rgb.png"), f"image {index}"),
                (str(folder / "depth_color.png"), f"depth {index}"),
            ]
        return gallery, str(folders[0] / "mesh.glb"), _zip(out)

    @_page_errors
    def render(self, portrait, depth, samples, seed, steps, guidance, progress=TRACK_PROGRESS):
        """Depth→image with the portrait as reference: (images, the depth as used, first mesh, zip of all results)."""
        reference = _portrait(portrait)
        if depth is None:
            raise UserInputError("no depth map: upload one (.npy, 16-bit PNG or EXR)")
        out = self._new_folder("render")
        folders = run_render(
            self.pipeline,
            depth,
            reference,
            out,
            num_samples=int(samples),
            seed=_seed(seed),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
        )
        gallery = [(str(folder / "rgb.png"), f"image {index}") for index, folder in enumerate(folders)]
        return gallery, str(folders[0] / "depth_color.png"), str(folders[0] / "mesh.glb"), _zip(out)

    @_page_errors
    def animate(self, portrait, audio, seconds, seed, steps, guidance, progress=TRACK_PROGRESS):
        """The portrait speaking the audio: (side by side, RGB and depth videos, the depth of every frame)."""
        reference = _portrait(portrait)
        if audio is None:
            raise UserInputError("no audio: upload or record a speech clip")
        folder = run_animate(
            self.pipeline,
            reference,
            audio,
            self._new_folder("animate"),
            seconds=float(seconds),
            seed=_seed(seed),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
        )
        videos = tuple(str(folder / name) for name in ("side_by_side.mp4", "rgb.mp4", "depth.mp4"))
        return *videos, str(folder / "depth.npy")
