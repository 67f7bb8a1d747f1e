"""Evaluation on real photographs, reported beside the synthetic studio's: `evaluate_real_data`.

Three data sets, each optional, each with its baselines (the protocols are in docs/evaluation.md):

real faces (`evaluation.real_faces`)
    The test split of portraits prepared by `rgbd-portrait prepare` (e.g. LFW, UTKFace): image→depth against
    the face-mesh pseudo-depth, the codec's reconstruction, and depth→image and joint generation from real
    references (consistency, and a contact sheet to judge by eye).
rap3df (`evaluation.kinect_depth`)
    Image→depth against real Kinect v2 depth, on the people a model was not trained on (`rap3df_trained`: the
    captures prepared for training, whose train and val people are left out).
Extended Yale B (`evaluation.real_relighting`)
    Relighting from one known point light to another, against the photograph under that light.

Every section can add a *baseline model* (e.g. the previous default model), run with the same settings and
seeds as the evaluated one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgbd_portrait.data.dataset import discover_samples
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.kinect_depth import evaluate_kinect_depth, format_kinect_depth
from rgbd_portrait.evaluation.real_faces import evaluate_real_faces, format_real_faces
from rgbd_portrait.evaluation.real_relighting import evaluate_real_relighting, format_real_relighting
from rgbd_portrait.evaluation.real_support import FaceMeshLandmarks, LandmarkFinder
from rgbd_portrait.evaluation.runner import EvaluationOptions


@dataclass(frozen=True)
class RealDataFolders:
    """Where each real data set is; None leaves its sections out."""

    real_faces: Path | None = None
    rap3df: Path | None = None
    yaleb: Path | None = None
    rap3df_trained: Path | None = None  # samples `rgbd-portrait prepare` made of rap3df captures for training

    def given(self) -> bool:
        return any(folder is not None for folder in (self.real_faces, self.rap3df, self.yaleb))

    def check(self) -> None:
        """One-line errors for folders that do not exist, before any model is loaded."""
        flags = (
            ("--real-faces", self.real_faces),
            ("--rap3df", self.rap3df),
            ("--yaleb", self.yaleb),
            ("--rap3df-trained", self.rap3df_trained),
        )
        for flag, folder in flags:
            if folder is not None and not Path(folder).is_dir():
                raise UserInputError(f"{flag} {folder}: folder not found")
        if self.rap3df_trained is not None and self.rap3df is None:
            raise UserInputError("--rap3df-trained needs --rap3df")


def trained_people(prepared: str | os.PathLike) -> set[str]:
    """The identities in the train and val splits of a prepared data set: the people a model trained on it saw."""
    return {entry.identity for entry in discover_samples(prepared) if entry.split != "test"}


def evaluate_real_data(
    pipeline,
    folders: RealDataFolders,
    *,
    options: EvaluationOptions,
    out_dir: str | os.PathLike,
    baseline_pipeline=None,
    generation_limit: int | None = None,
    find_landmarks: LandmarkFinder | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Every real-data section whose folder is given and whose task is in `options.tasks`; see the docstring.

    `options.limit` caps the samples of each data set (real test samples, rap3df captures, Yale B light
    pairs), people taken in turn; `generation_limit` caps depth→image and joint generation further (default:
    `options.limit`). Contact sheets are written to `out_dir`. `find_landmarks` replaces MediaPipe's face
    mesh on rap3df captures. Returns JSON-ready results (`format_real_report` makes them Markdown).
    """
    options.check()
    folders.check()
    out_dir = Path(out_dir)
    common = {"options": options, "baseline_pipeline": baseline_pipeline, "show_progress": show_progress}
    results: dict[str, Any] = {}
    if folders.real_faces is not None:
        results["real_faces"] = evaluate_real_faces(
            pipeline, folders.real_faces, out_dir=out_dir, generation_limit=generation_limit, **common
        )
    if folders.rap3df is not None and "image_to_depth" in options.tasks:
        results["rap3df"] = evaluate_kinect_depth(
            pipeline,
            folders.rap3df,
            out_dir=out_dir,
            find_landmarks=find_landmarks or FaceMeshLandmarks(),
            exclude_people=trained_people(folders.rap3df_trained) if folders.rap3df_trained is not None else (),
            **common,
        )
    if folders.yaleb is not None and "relighting" in options.tasks:
        results["yaleb"] = evaluate_real_relighting(pipeline, folders.yaleb, out_dir=out_dir, **common)
    return results


def format_real_report(real: Mapping[str, Any]) -> str:
    """The results of `evaluate_real_data` as Markdown: one part per data set, each saying what it compared."""
    parts = []
    if real.get("baseline_model"):
        parts.append(f"Real data; the baseline model is `{real['baseline_model']}`, run with the same settings.\n")
    if "real_faces" in real:
        parts.append(format_real_faces(real["real_faces"]))
    if "rap3df" in real:
        parts.append(format_kinect_depth(real["rap3df"]))
    if "yaleb" in real:
        parts.append(format_real_relighting(real["yaleb"]))
    return "\n".join(parts)
