"""`evaluate`: every task's metrics on a data split with ground truth, as JSON-ready results and a Markdown report.

Samples come from a data folder (sample folders or shards) and a split, taken identity by identity in turn so
that `limit` still covers many identities. Each sample's *reference* is another sample of the same identity (the
next one in key order; the sample itself when its identity has no other). Inputs are the data set's square,
face-centred images, given to the pipeline as they are (`center_on_face=False`); results are compared at the
data's size (`match_input_size=True`), on the sample's mask. What each section compares:

image_to_depth
    The model's depth of each image against the exact depth, after a least-squares scale and shift on the mask
    (`evaluation.metrics`): AbsRel, RMSE, δ; and the angular error of normals from the aligned depth (with the
    sample's intrinsics) against `normal.png` (or normals of the exact depth). Baselines through the same code:
    the mean-face template of the training split, and a flat plane.
depth_to_image
    The image rendered from each sample's depth with its reference's identity. The right ground truth is the
    test view under the *reference's* light (the model sees the light only through the reference): synthetic
    samples are rendered again that way (`synthetic_truth`); other samples fall back to their own image, whose
    light differs. PSNR/SSIM/MAE on the mask, against the baseline of returning the reference image unchanged.
    Geometry consistency: image→depth of the generated image against the input depth, next to the same
    estimator on the ground-truth image (what a perfect render would score) and the mean-face template.
    Detail: `metrics.fine_detail` of the generated and the ground-truth images, both at the model's resolution.
joint
    `joint_samples` generations per reference (one seed each). RGB-D consistency: image→depth of the generated
    RGB against the generated depth, both read as depth under `unproject_relative_depth`'s assumptions, on the
    generated subject (depth nearer than `FOREGROUND_DEPTH`). Diversity: mean pairwise difference between the
    seeds of one reference. Identity: each generated depth and image is scored (aligned AbsRel, colour MAE, on
    the candidate's mask) against every other render of the split; the best score per identity ranks the
    identities, and top-1 is the share of generations whose own identity ranks first (chance: 1 / identities).
    The reference sample itself is left out, so copying it does not count. Detail: `metrics.fine_detail` of
    the generated images, of the reference photos and of those photos through the codec (what the decoder
    alone keeps), all at the model's resolution: how far from a photograph's sharpness the generations are.
relighting
    Each sample relit, from its predicted depth, to each light of its exact relit renders (`relit_K.png`, light
    from meta.json), against those renders: with the original light estimated (what a user gets) and known;
    from the exact depth with the light known (the pipeline's relative-depth normals); and from the exact
    normals with the light known (the shading model's own limit: no shadows or occlusion). Baseline: the
    unrelit input.
speed
    Median seconds per image of each task at the model's default settings, batch 1, after a warm-up.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import platform
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rgbd_portrait.data.dataset import discover_samples
from rgbd_portrait.data.sample_format import PortraitSample, read_sample
from rgbd_portrait.data.shards import ShardedSample
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.baselines import MeanFaceTemplate, flat_plane_depth
from rgbd_portrait.evaluation.metrics import (
    align_scale_shift,
    depth_metrics,
    fine_detail,
    image_metrics,
    mean_absolute_error,
    normal_metrics,
    ssim,
)
from rgbd_portrait.evaluation.results import METRIC_LABELS, MetricAccumulator, format_markdown_table, write_json
from rgbd_portrait.evaluation.speed import median_seconds
from rgbd_portrait.evaluation.synthetic_truth import is_synthetic, relighting_light, render_under_lights
from rgbd_portrait.evaluation.task_names import DEPTH_REFERENCE_WORDS, TASK_TITLES, TASKS
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.geometry.camera import DEFAULT_FIELD_OF_VIEW_DEGREES, CameraIntrinsics, unproject_relative_depth
from rgbd_portrait.geometry.normals import normals_from_depth
from rgbd_portrait.geometry.relighting import relight

# The model puts the background at the far end (1) of its [0, 1] depth; nearer pixels are the subject.
FOREGROUND_DEPTH = 0.95
# Headings of the metrics this module adds to `results.METRIC_LABELS`.
EXTRA_LABELS = {
    "samples": "samples",
    "pairwise_rgb_mae": "RGB MAE between seeds ↑",
    "pairwise_rgb_ssim": "RGB SSIM between seeds ↓",
    "pairwise_depth_mae": "depth MAE between seeds ↑",
    "own_identity_abs_rel": "AbsRel to own identity ↓",
    "other_identity_abs_rel": "AbsRel to nearest other identity",
    "own_identity_colour_mae": "colour MAE to own identity ↓",
    "other_identity_colour_mae": "colour MAE to nearest other identity",
    "identity_top1_depth_pct": "top-1 identity by depth % ↑",
    "identity_top1_colour_pct": "top-1 identity by colour % ↑",
    "chance_pct": "chance %",
    "seconds_per_image": "seconds / image ↓",
    "steps": "steps",
    "ensemble": "ensemble",
    "fine_detail": "fine detail (log10 power, 2–5 px / 12–50 px periods)",
}


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and how. `None` settings use the model's defaults.

    `steps` applies to depth→image and joint generation, `depth_steps`, `ensemble_size` and `self_reference` to
    image→depth (also inside relighting and geometry checks); `training_free` runs image→depth and depth→image by latent
    replacement on the joint task instead of the trained channel-wise tasks.
    """

    split: str = "test"
    limit: int | None = None
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    batch_size: int = 4
    steps: int | None = None
    depth_steps: int | None = None
    ensemble_size: int | None = None
    self_reference: bool | None = None
    training_free: bool = False
    joint_samples: int = 2
    speed_repeats: int = 3

    def check(self) -> None:
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise UserInputError(f"tasks: {', '.join(unknown) or 'none given'}; choose from {', '.join(TASKS)}")
        for name in ("batch_size", "joint_samples", "speed_repeats"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise UserInputError(f"limit: must be at least 1, got {self.limit}")


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → float (3, H, W) in [0, 1] (a copy: decoded images may be read-only)."""
    return torch.tensor(image).permute(2, 0, 1).float() / 255.0


@dataclass
class _Item:
    key: str
    identity: str
    sample: PortraitSample

    @property
    def rgb(self) -> torch.Tensor:
        """(3, H, W) float in [0, 1]."""
        return _image_tensor(self.sample.rgb)

    @property
    def depth(self) -> torch.Tensor:
        return torch.tensor(self.sample.depth)

    @property
    def mask(self) -> torch.Tensor:
        return torch.tensor(self.sample.mask)

    def intrinsics(self) -> CameraIntrinsics:
        """The sample's camera, or a centred one with the default field of view when meta.json has none."""
        matrix = self.sample.meta.get("intrinsics")
        if matrix is not None:
            return CameraIntrinsics.from_matrix(matrix)
        height, width = self.sample.depth.shape
        return CameraIntrinsics.from_field_of_view(height, width, DEFAULT_FIELD_OF_VIEW_DEGREES)


class EvaluationSet:
    """The samples of one split: `items` to evaluate (identities in turn, at most `limit`), all samples of the
    split as identity candidates, and a reference per item."""

    def __init__(
        self, data_dir: str | os.PathLike, *, split: str, limit: int | None = None, show_progress: bool = True
    ):
        entries = [entry for entry in discover_samples(data_dir) if entry.split == split]
        if not entries:
            raise UserInputError(f"{data_dir}: no sample with split '{split}' in its meta.json")
        self.split = split
        reading = tqdm(entries, desc=f"reading {split} split", unit="sample", disable=not show_progress)
        self.all = [self._read(entry) for entry in reading]
        by_identity: dict[str, list[_Item]] = {}
        # People in an order fixed by their names alone, so that a limit picks the same people whatever the
        # folder layout, spread over every source rather than the first folder's first names.
        for item in sorted(self.all, key=lambda item: (_identity_rank(item.identity), item.key)):
            by_identity.setdefault(item.identity, []).append(item)
        self.by_identity = by_identity
        # Identities in turn: the first sample of each, then the second of each, and so on.
        interleaved = [
            item for group in itertools.zip_longest(*by_identity.values()) for item in group if item is not None
        ]
        self.items = interleaved[:limit] if limit is not None else interleaved

    @staticmethod
    def _read(entry) -> _Item:
        source = entry.source
        sample = source.read(extras=True) if isinstance(source, ShardedSample) else read_sample(source)
        return _Item(key=entry.key, identity=entry.identity, sample=sample)

    def reference_of(self, item: _Item) -> _Item:
        """The next sample of the same identity (in key order, wrapping), or the item itself if it is alone."""
        group = self.by_identity[item.identity]
        return group[(group.index(item) + 1) % len(group)]


def _identity_rank(identity: str) -> bytes:
    return hashlib.blake2b(identity.encode(), digest_size=8, person=b"eval-order").digest()


def in_batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of `items` of `size` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sample_generator(seed: int, key: str) -> torch.Generator:
    """A generator per sample, so that results do not depend on batching."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def predict_unit_depth(
    pipeline,
    images: Sequence[torch.Tensor | np.ndarray],
    keys: Sequence[str],
    *,
    options: EvaluationOptions,
    masks: Sequence[torch.Tensor] | None = None,
    center_on_face: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image→depth by `pipeline` with the evaluation's settings, at the images' size (all one size).

    Returns depth (B, H, W) in [0, 1] and where it describes the subject (B, H, W): inside `masks` when given
    and inside the square the pipeline fitted to each image. Each image has its own generator (`keys`).
    """
    output = pipeline.predict_depth(
        list(images),
        mask=None if masks is None else [mask.numpy() for mask in masks],
        num_inference_steps=options.depth_steps,
        ensemble_size=options.ensemble_size,
        self_reference=options.self_reference,
        training_free=options.training_free,
        center_on_face=center_on_face,
        match_input_size=True,
        generator=[sample_generator(options.seed, key) for key in keys],
        output_type="pt",
    )
    return torch.stack([depth[0] for depth in output.depth]), torch.stack([mask[0] for mask in output.mask])


def _labelled(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {METRIC_LABELS.get(key, EXTRA_LABELS.get(key, key)): value for key, value in metrics.items()}
        for name, metrics in rows.items()
    }


def mean_rows(accumulators: Mapping[str, MetricAccumulator]) -> dict[str, dict[str, float]]:
    """Each non-empty accumulator's means, after its number of samples (`samples`)."""
    rows = {}
    for name, accumulator in accumulators.items():
        counts = accumulator.counts()
        if counts:
            rows[name] = {"samples": max(counts.values()), **accumulator.means()}
    return rows


def score_depth(
    prediction: torch.Tensor,
    truth: torch.Tensor,
    mask: torch.Tensor,
    *,
    intrinsics: Sequence[CameraIntrinsics],
    truth_normals: torch.Tensor | None = None,
    nonnegative_scale: bool = False,
) -> dict[str, torch.Tensor]:
    """Depth and normal metrics per image of an affine-invariant `prediction` (B, H, W) against metric `truth`.

    The prediction is aligned to the truth by least squares on `mask` (B, H, W) (the scale kept >= 0 with
    `nonnegative_scale`); normals of the aligned depth (through each image's `intrinsics`) are compared with
    `truth_normals` (B, 3, H, W), by default the normals of the truth, where both are defined.
    """
    alignment = align_scale_shift(prediction, truth, mask, nonnegative_scale=nonnegative_scale)
    metrics = depth_metrics(alignment.aligned, truth, mask, align=False)
    aligned = alignment.aligned.float()
    predicted_normals = torch.stack(
        [normals_from_depth(depth, camera, mask=valid) for depth, camera, valid in zip(aligned, intrinsics, mask)]
    )
    if truth_normals is None:
        truth_normals = torch.stack(
            [normals_from_depth(depth, camera, mask=valid) for depth, camera, valid in zip(truth, intrinsics, mask)]
        )
    defined = mask & (predicted_normals.norm(dim=1) > 0.5) & (truth_normals.norm(dim=1) > 0.5)
    # A mask too thin for normals anywhere (a few pixels) still gets a score rather than an error.
    defined = torch.where(defined.flatten(1).any(dim=1)[:, None, None], defined, mask)
    return metrics | normal_metrics(predicted_normals, truth_normals, defined)


def _as_relative_metric(unit_depth: torch.Tensor) -> tuple[torch.Tensor, CameraIntrinsics]:
    """Affine-invariant depth (B, H, W) read as z-depth under `unproject_relative_depth`'s assumptions, with the
    camera those assumptions imply."""
    height, width = unit_depth.shape[-2:]
    depth = -unproject_relative_depth(unit_depth)[:, 2]
    return depth, CameraIntrinsics.from_field_of_view(height, width, DEFAULT_FIELD_OF_VIEW_DEGREES)


class _Evaluation:
    """One evaluation run: the pipeline, the samples and the options, with the per-task sections."""

    def __init__(
        self,
        pipeline,
        samples: EvaluationSet,
        options: EvaluationOptions,
        *,
        template: MeanFaceTemplate | None,
        geometry_estimator,
        show_progress: bool,
    ):
        self.pipeline = pipeline
        self.geometry_estimator = geometry_estimator or pipeline
        self.samples = samples
        self.options = options
        self.template = template
        self.show_progress = show_progress
        self.notes: list[str] = []
        self._predicted_depth: dict[str, torch.Tensor] = {}

    def _bar(self, total: int, description: str) -> tqdm:
        return tqdm(total=total, desc=description, unit="sample", disable=not self.show_progress)

    def predict_depth(
        self, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], keys: Sequence[str], *, pipeline=None
    ) -> torch.Tensor:
        """Image→depth by `pipeline` (default: the evaluated one) at the images' size: (B, H, W) in [0, 1]."""
        depth, _ = predict_unit_depth(pipeline or self.pipeline, images, keys, options=self.options, masks=masks)
        return depth

    def item_depth(self, items: Sequence[_Item]) -> torch.Tensor:
        """The predicted depth of dataset items, computed once per item."""
        missing = [item for item in items if item.key not in self._predicted_depth]
        if missing:
            predicted = self.predict_depth(
                [item.rgb for item in missing], [item.mask for item in missing], [item.key for item in missing]
            )
            self._predicted_depth |= {item.key: depth for item, depth in zip(missing, predicted)}
        return torch.stack([self._predicted_depth[item.key] for item in items])

    def at_model_size(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) resampled to the model's square resolution (antialiased), where detail is
        compared: the model's own outputs are made at that size."""
        side = self.pipeline.model.resolution
        if images.shape[-2:] == (side, side):
            return images
        return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def through_codec(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] encoded (posterior mode) and decoded by the model's codec."""
        codec = self.pipeline.model.codec
        encoded = codec.encode_rgb((images * 2 - 1).to(self.pipeline.device, self.pipeline.dtype))
        return ((codec.decode_rgb(encoded).float().cpu() + 1) / 2).clamp(0, 1)

    def _template_rows(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The baselines' depth for images (B, 3, H, W), by name."""
        rows = {}
        if self.template is not None:
            rows["mean-face template"] = self.template(images)
        rows["flat plane"] = flat_plane_depth(images)
        return rows

    # -- sections -------------------------------------------------------------------------------------------
    def image_to_depth(self) -> dict[str, Any]:
        rows = {name: MetricAccumulator() for name in ("model", "mean-face template", "flat plane")}
        items = self.samples.items
        with self._bar(len(items), "image→depth") as bar:
            for batch in in_batches(items, self.options.batch_size):
                images = torch.stack([item.rgb for item in batch])
                truth = torch.stack([item.depth for item in batch])
                mask = torch.stack([item.mask for item in batch])
                normals = None
                if all(item.sample.normal is not None for item in batch):
                    normals = torch.stack([torch.tensor(item.sample.normal).permute(2, 0, 1) for item in batch])
                cameras = [item.intrinsics() for item in batch]
                predictions = {"model": self.item_depth(batch), **self._template_rows(images)}
                for name, prediction in predictions.items():
                    rows[name].update(score_depth(prediction, truth, mask, intrinsics=cameras, truth_normals=normals))
                bar.update(len(batch))
        return {"rows": mean_rows(rows)}

    def depth_to_image(self) -> dict[str, Any]:
        image_rows = {name: MetricAccumulator() for name in ("model", "reference image, unchanged")}
        detail_rows = {name: MetricAccumulator() for name in ("ground-truth image", "generated image")}
        geometry_rows = {
            name: MetricAccumulator() for name in ("generated image", "ground-truth image", "mean-face template")
        }
        rerender_psnr: list[float] = []
        truth_kinds = {"re-rendered under the reference's light": 0, "the sample's own image (other light)": 0}
        items = self.samples.items
        with self._bar(len(items), "depth→image") as bar:
            for batch in in_batches(items, self.options.batch_size):
                references = [self.samples.reference_of(item) for item in batch]
                output = self.pipeline.render(
                    [item.sample.depth for item in batch],
                    reference=[reference.sample.rgb for reference in references],
                    mask=[item.sample.mask for item in batch],
                    num_inference_steps=self.options.steps,
                    training_free=self.options.training_free,
                    center_on_face=False,
                    match_input_size=True,
                    generator=[sample_generator(self.options.seed, item.key) for item in batch],
                    output_type="pt",
                )
                generated = torch.stack(output.rgb)
                truth, mask = self._render_truth(batch, references, rerender_psnr, truth_kinds)
                image_rows["model"].update(image_metrics(generated, truth, mask))
                reference_images = torch.stack([reference.rgb for reference in references])
                image_rows["reference image, unchanged"].update(image_metrics(reference_images, truth, mask))
                detail_rows["ground-truth image"].update({"fine_detail": fine_detail(self.at_model_size(truth))})
                detail_rows["generated image"].update({"fine_detail": fine_detail(self.at_model_size(generated))})

                keys = [f"{item.key}#generated" for item in batch] + [f"{item.key}#truth" for item in batch]
                depths = self.predict_depth(
                    [*generated, *truth], [*mask, *mask], keys, pipeline=self.geometry_estimator
                )
                input_depth = torch.stack([item.depth for item in batch])
                cameras = [item.intrinsics() for item in batch]
                candidates = {"generated image": depths[: len(batch)], "ground-truth image": depths[len(batch) :]}
                if self.template is not None:
                    candidates["mean-face template"] = self.template(truth)
                for name, prediction in candidates.items():
                    geometry_rows[name].update(score_depth(prediction, input_depth, mask, intrinsics=cameras))
                bar.update(len(batch))
        section = {
            "ground_truth": {kind: count for kind, count in truth_kinds.items() if count},
            "image": {"rows": mean_rows(image_rows)},
            "geometry": {"rows": mean_rows(geometry_rows)},
            "detail": {"rows": mean_rows(detail_rows)},
        }
        if rerender_psnr:
            section["rerender_check_psnr"] = min(rerender_psnr)
        return section

    def _render_truth(self, batch, references, rerender_psnr: list[float], truth_kinds: dict[str, int]):
        """Ground-truth images (B, 3, H, W) and masks (B, H, W) for depth→image (see the module docstring)."""
        pairs = [
            (item, reference)
            for item, reference in zip(batch, references)
            if is_synthetic(item.sample.meta) and is_synthetic(reference.sample.meta)
        ]
        rendered = render_under_lights(
            [item.sample.meta for item, _ in pairs], [reference.sample.meta["light"] for _, reference in pairs]
        )
        by_key = {item.key: view for (item, _), view in zip(pairs, rendered)}
        truths, masks = [], []
        for item in batch:
            view = by_key.get(item.key)
            if view is None:
                truths.append(item.rgb)
                masks.append(item.mask)
                truth_kinds["the sample's own image (other light)"] += 1
                continue
            truth_kinds["re-rendered under the reference's light"] += 1
            # The stored image under its own light, rendered again: any difference means the renderer changed
            # since the data set was written, and the re-rendered ground truth is off by about as much.
            rerender_psnr.append(image_metrics(_image_tensor(view.own_light), item.rgb, item.mask)["psnr"].item())
            truths.append(_image_tensor(view.other_light))
            masks.append(item.mask & torch.tensor(view.mask))
        return torch.stack(truths), torch.stack(masks)

    def joint(self) -> dict[str, Any]:
        consistency = MetricAccumulator()
        diversity = MetricAccumulator()
        identity = MetricAccumulator()
        detail = {
            name: MetricAccumulator()
            for name in ("reference photo", "reference photo through the codec", "generated image")
        }
        samples_per_reference = self.options.joint_samples
        candidates = _IdentityCandidates(self.samples)
        if not candidates.usable:
            self.notes.append(f"joint: identity consistency skipped ({candidates.reason})")
        references = self.samples.items
        with self._bar(len(references), "joint generation") as bar:
            for batch in in_batches(references, max(1, self.options.batch_size // samples_per_reference)):
                keys = [f"{item.key}#seed{seed}" for item in batch for seed in range(samples_per_reference)]
                output = self.pipeline.generate(
                    [item.sample.rgb for item in batch],
                    num_samples=samples_per_reference,
                    num_inference_steps=self.options.steps,
                    center_on_face=False,
                    generator=[sample_generator(self.options.seed, key) for key in keys],
                    output_type="pt",
                )
                rgb, depth = output.rgb, output.depth[:, 0]
                foreground = depth < FOREGROUND_DEPTH
                foreground = torch.where(foreground.flatten(1).any(dim=1)[:, None, None], foreground, True)
                estimated = self.predict_depth(list(rgb), list(foreground), [f"{key}#depth" for key in keys])
                metric_depth, camera = _as_relative_metric(depth)
                consistency.update(score_depth(estimated, metric_depth, foreground, intrinsics=[camera] * len(keys)))
                photos = self.at_model_size(torch.stack([item.rgb for item in batch]))
                detail["reference photo"].update({"fine_detail": fine_detail(photos)})
                detail["reference photo through the codec"].update(
                    {"fine_detail": fine_detail(self.through_codec(photos))}
                )
                detail["generated image"].update({"fine_detail": fine_detail(self.at_model_size(rgb))})
                for index, reference in enumerate(batch):
                    members = slice(index * samples_per_reference, (index + 1) * samples_per_reference)
                    if samples_per_reference > 1:
                        diversity.update(_pairwise_differences(rgb[members], depth[members]))
                    if candidates.usable:
                        identity.update(candidates.score(reference, rgb[members], depth[members]))
                bar.update(len(batch))
        section: dict[str, Any] = {"samples_per_reference": samples_per_reference}
        section["consistency"] = {"rows": mean_rows({"generated RGB vs generated depth": consistency})}
        section["detail"] = {"rows": mean_rows(detail)}
        if samples_per_reference > 1:
            section["diversity"] = {"rows": mean_rows({"between seeds": diversity})}
        rows = mean_rows({"generated": identity})
        if rows:
            rows["generated"]["chance_pct"] = 100.0 / candidates.identity_count
            section["identity"] = {"rows": rows}
        elif candidates.usable:
            self.notes.append("joint: identity consistency skipped (no reference has another sample of its person)")
        return section

    def relighting(self) -> dict[str, Any]:
        baseline, estimated, known, exact_depth, exact_normals = names = (
            "input unchanged (baseline)",
            "predicted depth, light estimated",
            "predicted depth, light known",
            "exact depth, light known",
            "exact normals, light known",
        )
        rows = {name: MetricAccumulator() for name in names}
        items = [
            item
            for item in self.samples.items
            if item.sample.relit and len(item.sample.meta.get("relit", ())) >= len(item.sample.relit)
        ]
        if not items:
            self.notes.append("relighting: no evaluated sample has relit_K.png with its light in meta.json")
            return {}
        with self._bar(len(items), "relighting") as bar:
            for batch in in_batches(items, self.options.batch_size):
                for item, predicted in zip(batch, self.item_depth(batch)):
                    mask = item.mask
                    # Depth maps for the pipeline: NaN marks the background as invalid.
                    depths = {
                        estimated: torch.where(mask, predicted, torch.nan),
                        known: torch.where(mask, predicted, torch.nan),
                        exact_depth: torch.where(mask, item.depth, torch.nan),
                    }
                    original = relighting_light(item.sample.meta["light"])
                    for image, light in zip(item.sample.relit, item.sample.meta["relit"]):
                        truth = _image_tensor(image)
                        target = relighting_light(light)
                        rows[baseline].update(image_metrics(item.rgb, truth, mask))
                        for name, depth in depths.items():
                            relit = self.pipeline.relight(
                                item.rgb,
                                target,
                                depth=depth,
                                mask=mask.numpy(),
                                original_light=None if name == estimated else original,
                                center_on_face=False,
                                match_input_size=True,
                                output_type="pt",
                            )
                            rows[name].update(image_metrics(relit.rgb[0], truth, mask))
                        if item.sample.normal is not None:
                            normals = torch.tensor(item.sample.normal).permute(2, 0, 1)
                            relit = relight(item.rgb, normals, target, mask=mask, original_light=original).image
                            rows[exact_normals].update(image_metrics(relit, truth, mask))
                    bar.update()
        return {"rows": mean_rows(rows)}

    def speed(self) -> dict[str, Any]:
        pipeline, item = self.pipeline, self.samples.items[0]
        reference = self.samples.reference_of(item)
        settings = pipeline.model.settings
        seed = self.options.seed
        calls = {
            "image→depth": (
                lambda: pipeline.predict_depth(
                    item.sample.rgb,
                    mask=item.sample.mask,
                    center_on_face=False,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pt",
                ),
                settings.depth_steps,
                settings.ensemble_size,
            ),
            "depth→image": (
                lambda: pipeline.render(
                    item.sample.depth,
                    reference=reference.sample.rgb,
                    mask=item.sample.mask,
                    center_on_face=False,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pt",
                ),
                settings.default_steps,
                1,
            ),
            "joint generation": (
                lambda: pipeline.generate(
                    reference.sample.rgb,
                    center_on_face=False,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pt",
                ),
                settings.default_steps,
                1,
            ),
            "relighting (depth predicted)": (
                lambda: pipeline.relight(
                    item.sample.rgb,
                    "studio",
                    mask=item.sample.mask,
                    center_on_face=False,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pt",
                ),
                settings.depth_steps,
                settings.ensemble_size,
            ),
        }
        rows = {}
        with self._bar(len(calls), "speed") as bar:
            for name, (call, steps, ensemble) in calls.items():
                seconds = median_seconds(call, device=pipeline.device, repeats=self.options.speed_repeats)
                rows[name] = {"seconds_per_image": seconds, "steps": steps, "ensemble": ensemble}
                bar.update()
        return {"device": describe_device(pipeline.device), "resolution": settings.resolution, "rows": rows}


def _pairwise_differences(rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean differences over the pairs of samples (N, 3, H, W) and depths (N, H, W) of one reference."""
    pairs = list(itertools.combinations(range(rgb.shape[0]), 2))
    first, second = (torch.tensor(side) for side in zip(*pairs))
    everywhere = torch.ones(len(pairs), *depth.shape[-2:], dtype=torch.bool)
    return {
        "pairwise_rgb_mae": mean_absolute_error(rgb[first], rgb[second], everywhere).mean()[None],
        "pairwise_rgb_ssim": ssim(rgb[first], rgb[second], everywhere).mean()[None],
        "pairwise_depth_mae": (depth[first] - depth[second]).abs().flatten(1).mean(dim=1).mean()[None],
    }


class _IdentityCandidates:
    """Every render of the split, to find which identity a generated image and depth are closest to."""

    def __init__(self, samples: EvaluationSet):
        self.items = samples.all
        self.identity_count = len(samples.by_identity)
        sizes = {item.sample.depth.shape for item in self.items}
        self.reason = ""
        if self.identity_count < 2:
            self.reason = "the split has a single identity"
        elif len(sizes) > 1:
            self.reason = "the split's images differ in size"
        self.usable = not self.reason
        if self.usable:
            self.rgb = torch.stack([item.rgb for item in self.items])
            self.depth = torch.stack([item.depth for item in self.items])
            self.mask = torch.stack([item.mask for item in self.items])
            self.identities = [item.identity for item in self.items]

    def score(self, reference: _Item, rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
        """Identity metrics of the generations (N, 3, h, w), depth (N, h, w) from `reference`."""
        keep = [index for index, item in enumerate(self.items) if item.key != reference.key]
        size = tuple(self.depth.shape[-2:])
        rgb = F.interpolate(rgb, size=size, mode="bilinear", antialias=True, align_corners=False)
        depth = F.interpolate(depth[:, None], size=size, mode="bilinear", antialias=True, align_corners=False)[:, 0]
        count = len(keep)
        results: dict[str, list[float]] = {}
        for generated_rgb, generated_depth in zip(rgb, depth):
            scores = {
                "abs_rel": depth_metrics(generated_depth.expand(count, *size), self.depth[keep], self.mask[keep])[
                    "abs_rel"
                ],
                "colour_mae": mean_absolute_error(
                    generated_rgb.expand(count, 3, *size), self.rgb[keep], self.mask[keep]
                ),
            }
            for measure, values in scores.items():
                best: dict[str, float] = {}
                for index, value in zip(keep, values.tolist()):
                    identity = self.identities[index]
                    best[identity] = min(best.get(identity, float("inf")), value)
                own = best.pop(reference.identity, None)
                if own is None or not best:
                    continue
                nearest_other = min(best.values())
                label = "depth" if measure == "abs_rel" else "colour"
                results.setdefault(f"own_identity_{measure}", []).append(own)
                results.setdefault(f"other_identity_{measure}", []).append(nearest_other)
                results.setdefault(f"identity_top1_{label}_pct", []).append(100.0 * (own < nearest_other))
        return {name: torch.tensor(values, dtype=torch.float64) for name, values in results.items()}


def describe_device(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def evaluate(
    pipeline,
    data_dir: str | os.PathLike,
    *,
    options: EvaluationOptions | None = None,
    template: MeanFaceTemplate | None = None,
    geometry_estimator=None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `pipeline` (an `RGBDPortraitPipeline`) on a split of `data_dir`; see the module docstring.

    `template` is the mean-face baseline (e.g. `MeanFaceTemplate.from_data(data_dir, split="train")`); without
    it the template rows are left out. `geometry_estimator` is the pipeline whose image→depth measures the
    geometry consistency of depth→image (default: `pipeline`); give one fixed estimator to compare several
    models by the same ruler. Returns JSON-ready results (`format_report` makes them Markdown).
    """
    options = options or EvaluationOptions()
    options.check()
    samples = EvaluationSet(data_dir, split=options.split, limit=options.limit, show_progress=show_progress)
    run = _Evaluation(
        pipeline,
        samples,
        options,
        template=template,
        geometry_estimator=geometry_estimator,
        show_progress=show_progress,
    )
    if template is None:
        run.notes.append("no mean-face template: its baseline rows are left out")
    settings = pipeline.model.settings
    results: dict[str, Any] = {
        "data": str(data_dir),
        "split": options.split,
        "samples": len(samples.items),
        "identities": len({item.identity for item in samples.items}),
        "device": describe_device(pipeline.device),
        "options": asdict(options) | {"tasks": list(options.tasks)},
        "model_settings": {
            "resolution": settings.resolution,
            "default_steps": settings.default_steps,
            "depth_steps": settings.depth_steps,
            "ensemble_size": settings.ensemble_size,
            "depth_self_reference": settings.depth_self_reference,
        },
    }
    for task in options.tasks:
        section = getattr(run, task)()
        if section:
            results[task] = section
    results["notes"] = run.notes
    return results


DETAIL_CAPTION = (
    "Fine detail at the model's resolution: log10 of the brightness's spectral power at 2–5 px periods over "
    "12–50 px; the same for a photograph and its generated counterpart means as sharp, each 1 lower means ten "
    "times less fine detail."
)


def _table(section: Mapping[str, Any]) -> str:
    return format_markdown_table(_labelled(section["rows"]))


def format_report(results: Mapping[str, Any], *, title: str = "Evaluation") -> str:
    """The results of `evaluate` as a Markdown report: what was compared, then one table per measure; then the
    real-data sections of `evaluation.real_data`, when `results` has them (as `real_data`)."""
    lines = [f"# {title}", ""]
    if "command" in results:
        lines += [f"Command: `{results['command']}`", ""]
    if "options" in results:
        lines.append(_format_synthetic(results))
    if "real_data" in results:
        # Imported here: the real-data evaluation builds on this module.
        from rgbd_portrait.evaluation.real_data import format_real_report

        lines.append(format_real_report(results["real_data"]))
    return "\n".join(lines)


def _format_synthetic(results: Mapping[str, Any]) -> str:
    options = results["options"]
    settings = results["model_settings"]
    steps = options["steps"] or settings["default_steps"]
    depth_steps = options["depth_steps"] or settings["depth_steps"]
    ensemble = options["ensemble_size"] or settings["ensemble_size"]
    self_reference = options.get("self_reference")
    if self_reference is None:
        self_reference = settings.get("depth_self_reference", True)
    depth_reference = DEPTH_REFERENCE_WORDS[self_reference]
    variant = "latent replacement (training-free)" if options["training_free"] else "channel-wise inpainting"
    lines = [
        f"Data: `{results['data']}`, split `{results['split']}`: {results['samples']} samples of "
        f"{results['identities']} identities. Device: {results['device']}. Model resolution "
        f"{settings['resolution']} px; image→depth {depth_steps} steps × {ensemble} ensemble with {depth_reference}, "
        f"depth→image and "
        f"joint generation {steps} steps; conditioning: {variant}; seed {options['seed']}.",
        "",
    ]
    if "image_to_depth" in results:
        lines += [
            f"## {TASK_TITLES['image_to_depth']}",
            "",
            "Depth after least-squares scale/shift alignment on the mask; normals from the aligned depth.",
            "",
            _table(results["image_to_depth"]),
        ]
    if "depth_to_image" in results:
        section = results["depth_to_image"]
        truth = "; ".join(f"{kind}: {count}" for kind, count in section["ground_truth"].items())
        lines += [
            f"## {TASK_TITLES['depth_to_image']}",
            "",
            f"Image from each sample's depth with another sample of the same identity as reference, against the "
            f"sample's view under the reference's light ({truth}), on the mask.",
        ]
        if "rerender_check_psnr" in section:
            # JSON holds an infinite PSNR (an exact match) as null.
            worst = section["rerender_check_psnr"]
            worst = "inf" if worst is None or math.isinf(worst) else f"{worst:.1f}"
            lines.append(
                f"Re-render check: the stored images rendered again match them at {worst} dB PSNR or more "
                f"(inf = exactly; lower means the renderer changed since the data was written)."
            )
        lines += [
            "",
            _table(section["image"]),
            "Geometry consistency: image→depth of the image against the input depth.",
            "",
            _table(section["geometry"]),
            DETAIL_CAPTION,
            "",
            _table(section["detail"]),
        ]
    if "joint" in results:
        section = results["joint"]
        lines += [
            f"## {TASK_TITLES['joint']}",
            "",
            f"{section['samples_per_reference']} seeds per reference. RGB-D consistency: image→depth of the "
            f"generated RGB against the generated depth, on the generated subject.",
            "",
            _table(section["consistency"]),
            DETAIL_CAPTION,
            "",
            _table(section["detail"]),
        ]
        if "diversity" in section:
            lines += ["Diversity between the seeds of one reference (whole image).", "", _table(section["diversity"])]
        if "identity" in section:
            lines += [
                "Identity: the generated depth and colours against every other render of the split (own identity "
                "without the reference sample); top-1 = the own identity scores best.",
                "",
                _table(section["identity"]),
            ]
    if "relighting" in results:
        lines += [
            f"## {TASK_TITLES['relighting']}",
            "",
            "Against the exact relit renders (relit_K.png, light from meta.json), on the mask.",
            "",
            _table(results["relighting"]),
        ]
    if "speed" in results:
        section = results["speed"]
        lines += [
            f"## {TASK_TITLES['speed']}",
            "",
            f"Median seconds per image at the model's defaults, batch 1, {section['resolution']} px, on "
            f"{section['device']}.",
            "",
            _table(section),
        ]
    if results.get("notes"):
        lines += ["Notes:", "", *(f"- {note}" for note in results["notes"]), ""]
    return "\n".join(lines)


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike, *, title: str = "Evaluation"):
    """Write `results.json` and `results.md` to `out_dir` (each atomically); returns both paths."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "results.json", results)
    markdown_path = write_bytes_atomically(out_dir / "results.md", format_report(results, title=title).encode())
    return json_path, markdown_path


def load_template(
    path: str | os.PathLike | None, data_dir: str | os.PathLike, *, show_progress: bool = True
) -> MeanFaceTemplate | None:
    """The template saved at `path`, or else the one of the data folder's training split (None if it has none)."""
    if path is not None:
        return MeanFaceTemplate.load(path)
    try:
        return MeanFaceTemplate.from_data(data_dir, split="train", show_progress=show_progress)
    except UserInputError:
        return None


__all__ = [
    "TASKS",
    "EvaluationOptions",
    "EvaluationSet",
    "describe_device",
    "evaluate",
    "format_report",
    "in_batches",
    "load_template",
    "mean_rows",
    "predict_unit_depth",
    "sample_generator",
    "score_depth",
    "write_report",
]
