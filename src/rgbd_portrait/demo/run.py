"""Running the demo: the portraits through every task, timed, into a folder that appears whole at the end."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm

from rgbd_portrait import __version__
from rgbd_portrait.data.sample_format import AUDIO_SAMPLE_RATE
from rgbd_portrait.demo.overview import write_overview
from rgbd_portrait.demo.page import render_page
from rgbd_portrait.demo.portraits import INPUTS_FOLDER, Portrait, prepare_photos, render_synthetic, speech_clip
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.baselines import flat_plane_depth
from rgbd_portrait.evaluation.metrics import depth_metrics
from rgbd_portrait.evaluation.runner import describe_device
from rgbd_portrait.files import atomic_folder
from rgbd_portrait.geometry.relighting import LIGHT_PRESETS
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.pipelines.files import run_depth, run_generate, run_relight, run_render
from rgbd_portrait.pipelines.pipeline import RGBDPortraitPipeline
from rgbd_portrait.weights import default_model_dir

PAGE_FILE = "index.html"
RECORD_FILE = "demo.json"
DEFAULT_IDENTITIES = 2
DEFAULT_RELIGHT_PRESETS = ("left", "rim")

PipelineSource = RGBDPortraitPipeline | Callable[[], RGBDPortraitPipeline]


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(parameter.numel() for parameter in module.parameters())


def describe_model(model: RGBDPortraitModel, *, model_dir: str | os.PathLike | None) -> dict[str, Any]:
    """Parameters per component, resolution, steps and talking-head settings of a model, as JSON values."""
    motion = model.motion
    return {
        "folder": None if model_dir is None else str(model_dir),
        "shipped_default": model_dir is not None and Path(model_dir).resolve() == default_model_dir().resolve(),
        "parameters": _count(model),
        "component_parameters": {
            "backbone": _count(model.backbone),
            "reference_net": _count(model.reference_net),
            "context": _count(model.context),
            "vae": _count(model.vae),
            "motion": _count(motion),
        },
        "resolution": model.resolution,
        "default_steps": model.default_steps,
        "depth_steps": model.settings.depth_steps,
        "ensemble_size": model.settings.ensemble_size,
        "depth_self_reference": model.settings.depth_self_reference,
        "prediction_type": model.prediction_type,
        "scheduler": model.settings.scheduler.get("class_name"),
        "motion": None
        if motion is None
        else {
            "fps": float(motion.config.fps),
            "window_frames": motion.config.window_frames,
            "motion_frames": motion.config.motion_frames,
        },
    }


def describe_machine(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "device": describe_device(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rgbd_portrait": __version__,
    }


def check_demo_destination(folder: str | os.PathLike, *, overwrite: bool) -> None:
    """A new or empty folder is fine; a non-empty one only with `overwrite`, and only an earlier demo's."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserInputError(f"{folder}: exists and is not a folder")
    if not any(folder.iterdir()):
        return
    if not overwrite:
        raise UserInputError(f"{folder}: folder is not empty (choose another --out, or --overwrite an earlier demo)")
    if not (folder / RECORD_FILE).is_file():
        raise UserInputError(f"{folder}: not an earlier demo's folder (no {RECORD_FILE}); refusing to replace it")


def animation_unavailable(pipeline: RGBDPortraitPipeline, *, wanted: bool) -> str | None:
    """Why the page has no talking clip, or None when it has."""
    if not wanted:
        return "Animation was turned off (--no-animation)."
    if pipeline.model.motion is None:
        return "This model has no motion layers (it was not trained with the talking-head stage), so it cannot talk."
    try:
        import rgbd_portrait.pipelines.animation_export  # noqa: F401
    except ImportError as error:
        return f"Animation is not available on this machine ({error})."
    return None


@dataclass
class TaskRun:
    """One task on one portrait: wall-clock seconds (the model's work and every export) and result folders."""

    task: str
    portrait: str
    seconds: float
    folders: list[Path]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "portrait": self.portrait,
            "seconds": self.seconds,
            "folders": [folder.as_posix() for folder in self.folders],
            "settings": self.settings,
            "notes": self.notes,
        }


class _Tasks:
    """The tasks of one demo run, each on one portrait, timed and recorded into `runs`.

    Every input is already the model's square, so nothing is centred on a face again.
    """

    def __init__(self, pipeline: RGBDPortraitPipeline, root: Path, *, seed: int, steps: int | None, bar: tqdm):
        self.pipeline = pipeline
        self.model = pipeline.model
        self.root = root
        self.seed = seed
        self.steps = steps
        self.bar = bar
        self.runs: list[TaskRun] = []
        self.options = {"num_inference_steps": steps, "center_on_face": False}

    def _timed(self, task: str, portrait: Portrait, work: Callable[[], list[Path]], **settings: Any) -> TaskRun:
        self.bar.set_postfix_str(f"{task} {portrait.name}")
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            folders = work()
        notes = set()
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                # The pipeline's own warnings about the inputs go on the page, relative to the demo folder.
                notes.add(str(warning.message).replace(f"{self.root}{os.sep}", ""))
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        run = TaskRun(
            task=task,
            portrait=portrait.name,
            seconds=time.perf_counter() - started,
            folders=[folder.relative_to(self.root) for folder in folders],
            settings=settings,
            notes=sorted(notes),
        )
        self.runs.append(run)
        self.bar.update()
        return run

    def _predicted_depth(self, portrait: Portrait) -> Path:
        (run,) = [run for run in self.runs if run.task == "image_to_depth" and run.portrait == portrait.name]
        return self.root / run.folders[0] / "depth.npy"

    def image_to_depth(self, index: int, portrait: Portrait) -> None:
        self._timed(
            "image_to_depth",
            portrait,
            lambda: run_depth(
                self.pipeline,
                [self.root / portrait.target],
                self.root / "image_to_depth",
                seed=self.seed + index,
                progress=False,
                **self.options,
            ),
            steps=self.steps or self.model.settings.depth_steps,
            ensemble_size=self.model.settings.ensemble_size,
        )
        if portrait.synthetic:
            portrait.depth_scores = self._score_depth(portrait)

    def _score_depth(self, portrait: Portrait) -> dict[str, float]:
        """AbsRel and δ1 of the predicted depth against the exact one, and those of a flat plane for scale."""
        predicted = torch.from_numpy(np.load(self._predicted_depth(portrait), allow_pickle=False))[None]
        truth = torch.from_numpy(np.load(self.root / portrait.truth_depth, allow_pickle=False))[None]
        mask = truth > 0
        flat = flat_plane_depth(torch.zeros(1, 3, *truth.shape[-2:]))
        scores = {}
        for prefix, prediction in (("", predicted), ("flat_plane_", flat)):
            metrics = depth_metrics(prediction, truth, mask)
            scores |= {f"{prefix}{name}": float(metrics[name][0]) for name in ("abs_rel", "delta1")}
        return scores

    def joint(self, index: int, portrait: Portrait) -> None:
        self._timed(
            "joint",
            portrait,
            lambda: run_generate(
                self.pipeline, self.root / portrait.image, self.root / "joint", seed=self.seed + index, **self.options
            ),
            steps=self.steps or self.model.default_steps,
        )

    def depth_to_image(self, index: int, portrait: Portrait) -> None:
        if portrait.synthetic:
            depth, mask = portrait.truth_depth, portrait.truth_mask
        else:
            # A photo has no other view: its own predicted depth is rendered back with its looks.
            depth, mask = INPUTS_FOLDER / f"{portrait.name}_predicted_depth.npy", None
            shutil.copyfile(self._predicted_depth(portrait), self.root / depth)
        self._timed(
            "depth_to_image",
            portrait,
            lambda: run_render(
                self.pipeline,
                self.root / depth,
                self.root / portrait.image,
                self.root / "depth_to_image",
                mask=None if mask is None else self.root / mask,
                seed=self.seed + index,
                **self.options,
            ),
            steps=self.steps or self.model.default_steps,
        )

    def relight(self, index: int, portrait: Portrait, *, preset: str) -> None:
        self._timed(
            f"relight_{preset}",
            portrait,
            lambda: [
                run_relight(
                    self.pipeline,
                    self.root / portrait.target,
                    preset,
                    self.root / f"relight_{preset}",
                    depth=self._predicted_depth(portrait),
                    seed=self.seed + index,
                    **self.options,
                )
            ],
        )

    def animate(self, index: int, portrait: Portrait, *, clip_seconds: float | None) -> None:
        from rgbd_portrait.pipelines.animation_export import run_animate

        motion = self.model.motion.config
        seconds = motion.window_frames / motion.fps if clip_seconds is None else clip_seconds
        audio = INPUTS_FOLDER / f"{portrait.name}_speech.wav"
        samples = speech_clip(seconds, pitch_hz=portrait.voice_pitch_hz, seed=self.seed + index)
        soundfile.write(self.root / audio, samples, AUDIO_SAMPLE_RATE, subtype="PCM_16", format="WAV")
        self._timed(
            "animation",
            portrait,
            lambda: [
                run_animate(
                    self.pipeline,
                    self.root / portrait.image,
                    self.root / audio,
                    self.root / "animation" / portrait.name,
                    seed=self.seed + index,
                    progress=False,
                    **self.options,
                )
            ],
            steps=self.steps or self.model.default_steps,
            seconds=round(seconds, 3),
            fps=float(motion.fps),
            audio=audio.as_posix(),
        )


def _check_options(identities: int, relight_presets: Sequence[str], clip_seconds: float | None, steps: int | None):
    if identities < 0:
        raise UserInputError(f"identities: must not be negative, got {identities}")
    unknown = [preset for preset in relight_presets if preset not in LIGHT_PRESETS]
    if unknown:
        raise UserInputError(f"relight_presets: {', '.join(unknown)} not among {', '.join(LIGHT_PRESETS)}")
    if clip_seconds is not None and not clip_seconds > 0:
        raise UserInputError(f"clip_seconds: must be positive, got {clip_seconds}")
    if steps is not None and steps < 1:
        raise UserInputError(f"num_inference_steps: must be positive, got {steps}")


def run_demo(
    pipeline: PipelineSource,
    out_dir: str | os.PathLike,
    *,
    model_dir: str | os.PathLike | None = None,
    identities: int = DEFAULT_IDENTITIES,
    relight_presets: Sequence[str] = DEFAULT_RELIGHT_PRESETS,
    animation: bool = True,
    clip_seconds: float | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Run the demo into `out_dir` (see `rgbd_portrait.demo`) and return the path of its `index.html`.

    `pipeline` is a pipeline or a function that makes one, called after the options and the destination are
    checked; `model_dir` names the model on the page. `identities` synthetic test heads are shown besides the
    photos. `num_inference_steps` overrides the model's steps for every task (default: the model's own, with
    its ensemble size for image→depth). `clip_seconds` is the length of each talking clip (default: one window
    of the motion layers). The demo shows one progress bar over its steps and turns the pipeline's own off.
    """
    _check_options(identities, relight_presets, clip_seconds, num_inference_steps)
    out_dir = Path(out_dir)
    check_demo_destination(out_dir, overwrite=overwrite)
    started = time.perf_counter()
    setup_steps = ("load the model", "render the synthetic heads", "cut the photos to the model's square")
    with (
        atomic_folder(out_dir) as root,
        tqdm(total=len(setup_steps), desc="demo", unit="step", disable=not progress) as bar,
    ):
        setup: dict[str, float] = {}

        def timed_setup(name: str, work: Callable[[], Any]) -> Any:
            bar.set_postfix_str(name)
            clock = time.perf_counter()
            result = work()
            setup[name] = time.perf_counter() - clock
            bar.update()
            return result

        def load() -> RGBDPortraitPipeline:
            return pipeline if isinstance(pipeline, RGBDPortraitPipeline) else pipeline()

        loaded = timed_setup(setup_steps[0], load)
        loaded.set_progress_bar_config(disable=True)
        side = loaded.model.resolution
        render_device = "cuda" if loaded.device.type == "cuda" else "cpu"
        synthetic = timed_setup(
            setup_steps[1], lambda: render_synthetic(root, identities, side=side, device=render_device)
        )
        photos, notes = timed_setup(
            setup_steps[2],
            lambda: prepare_photos(root, side=side, fit=loaded.model.settings.fit, face_centres=loaded.face_centres),
        )
        # Photographs first: they are what users bring.
        portraits = photos + synthetic
        if not portraits:
            raise UserInputError("identities: 0 synthetic heads and no public portrait installed leave nothing to show")

        unavailable = animation_unavailable(loaded, wanted=animation)
        talking = [] if unavailable else [group[0] for group in (photos, synthetic) if group]
        tasks = _Tasks(loaded, root, seed=seed, steps=num_inference_steps, bar=bar)
        # Image→depth comes first: depth→image of a photo and every relighting read its predicted depth.
        plan = [
            (task, index, portrait)
            for task in (tasks.image_to_depth, tasks.joint, tasks.depth_to_image)
            for index, portrait in enumerate(portraits)
        ]
        plan += [
            (partial(tasks.relight, preset=preset), index, portrait)
            for preset in relight_presets
            for index, portrait in enumerate(portraits)
        ]
        plan += [(partial(tasks.animate, clip_seconds=clip_seconds), portraits.index(one), one) for one in talking]
        bar.total += len(plan)
        bar.refresh()
        for task, index, portrait in plan:
            task(index, portrait)

        record = {
            "model": describe_model(loaded.model, model_dir=model_dir),
            "machine": describe_machine(loaded.device, loaded.dtype),
            "seed": seed,
            "relight_presets": list(relight_presets),
            "portraits": [portrait.record() for portrait in portraits],
            "setup_seconds": setup,
            "tasks": [run.record() for run in tasks.runs],
            "animation": {"portraits": [portrait.name for portrait in talking], "unavailable": unavailable},
            "notes": notes,
            "total_seconds": time.perf_counter() - started,
        }
        (root / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_overview(record, root)
        (root / PAGE_FILE).write_text(render_page(record))
    return out_dir / PAGE_FILE
