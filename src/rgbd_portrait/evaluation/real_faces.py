"""Real portraits prepared by `rgbd-portrait prepare` (e.g. LFW, UTKFace), one split (default test).

image→depth
    Each crop (square and face-centred by `prepare`; given to the pipeline as it is, with its person mask, as the
    synthetic evaluation does) against its pseudo-depth (`depth.npy`: the face mesh on the face, a smooth fill
    over the rest of the person). AbsRel and δ<1.25 after a least-squares scale and shift on the person mask,
    the scale kept >= 0 so that a depth with near and far swapped is not flipped into a good one; the angle
    between normals of the aligned depth and of the pseudo-depth (sample intrinsics); and Spearman's rank
    correlation at the face-mesh landmarks stored in meta.json (`face_landmarks`: x, y in crop pixels, z-depth
    in metres): the depth read at each landmark's nearest pixel against the landmark's own depth, over the
    landmarks on the person mask. Baselines through the same code: the radial map (distance from the
    landmarks' centre), the mean-face template of the folder's train split, and a baseline model.
codec
    Each image and its pseudo-depth (normalised as the model sees it) encoded and decoded by the model's VAE at
    the model's resolution (resized as training does): PSNR and SSIM of the RGB over the whole image, PSNR of
    the depth in [0, 1] on the person.
depth→image and joint generation
    The synthetic evaluation's consistency measures (`evaluation.runner`) on the same split: geometry
    consistency of depth→image (image→depth of the image rendered from the pseudo-depth, against it) and the
    RGB-D consistency, diversity and identity of joint generation. A real photo has no ground truth under its
    reference's light, so depth→image is not scored against an image; whether the generated images look like
    photographs is judged by eye on a contact sheet (`real_faces_sheet.png`), and their sharpness is measured
    against the photos' (the runner's fine detail).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rgbd_portrait.data.dataset import resize_sample_tensors
from rgbd_portrait.data.depth_normalization import normalize_depth, to_unit_range
from rgbd_portrait.data.image_io import colorize_depth
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.baselines import MeanFaceTemplate, radial_depth
from rgbd_portrait.evaluation.metrics import psnr, rank_correlation, ssim
from rgbd_portrait.evaluation.real_support import (
    BASELINE_MODEL,
    MIN_LANDMARKS,
    RADIAL,
    SHEET_PEOPLE,
    format_table,
    landmark_centre,
    landmarks_on,
    values_at_landmarks,
    write_sheet,
)
from rgbd_portrait.evaluation.results import MetricAccumulator
from rgbd_portrait.evaluation.runner import (
    DETAIL_CAPTION,
    FOREGROUND_DEPTH,
    EvaluationOptions,
    EvaluationSet,
    evaluate,
    in_batches,
    load_template,
    mean_rows,
    predict_unit_depth,
    sample_generator,
    score_depth,
)

SHEET_NAME = "real_faces_sheet.png"
# The dense measures reported (score_depth gives more; these are the ones the issue and the docs compare).
DEPTH_KEYS = ("abs_rel", "delta1", "normal_mean_deg", "normal_median_deg")
TEMPLATE = "mean-face template"


def stored_landmarks(item) -> np.ndarray | None:
    """The sample's `face_landmarks` from meta.json as (N, 3) x, y, z, or None when it has none."""
    table = item.sample.meta.get("face_landmarks")
    if not table:
        return None
    landmarks = np.asarray(table, dtype=np.float64)
    if landmarks.ndim != 2 or landmarks.shape[1] != 3:
        raise UserInputError(f"{item.key}: meta.json face_landmarks must be rows of x, y, z-depth")
    return landmarks


def _bar(total: int, description: str, show_progress: bool) -> tqdm:
    return tqdm(total=total, desc=description, unit="sample", disable=not show_progress)


def real_face_depth(
    pipeline,
    items: Sequence,
    *,
    options: EvaluationOptions,
    template: MeanFaceTemplate | None,
    baseline_pipeline=None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Image→depth of `items` (with their landmarks) by the model and the baselines; see the module docstring."""
    names = ["model", *([BASELINE_MODEL] if baseline_pipeline is not None else []), RADIAL]
    names += [TEMPLATE] if template is not None else []
    rows = {name: MetricAccumulator() for name in names}
    landmark_counts = []
    with _bar(len(items), "real faces: image→depth", show_progress) as bar:
        for batch in in_batches(items, options.batch_size):
            images = torch.stack([item.rgb for item in batch])
            truth = torch.stack([item.depth for item in batch])
            mask = torch.stack([item.mask for item in batch])
            cameras = [item.intrinsics() for item in batch]
            keys = [item.key for item in batch]
            landmarks = [stored_landmarks(item) for item in batch]
            truth_values = torch.stack([torch.as_tensor(points[:, 2]) for points in landmarks])
            on_person = torch.stack([landmarks_on(valid, points) for valid, points in zip(mask, landmarks)])
            landmark_counts += on_person.sum(dim=1).tolist()
            predictions = {
                "model": predict_unit_depth(pipeline, list(images), keys, options=options, masks=list(mask))[0]
            }
            if baseline_pipeline is not None:
                predictions[BASELINE_MODEL] = predict_unit_depth(
                    baseline_pipeline, list(images), keys, options=options, masks=list(mask)
                )[0]
            predictions[RADIAL] = torch.stack(
                [radial_depth(tuple(truth.shape[-2:]), landmark_centre(points)) for points in landmarks]
            )
            if template is not None:
                predictions[TEMPLATE] = template(images)
            for name, prediction in predictions.items():
                dense = score_depth(prediction, truth, mask, intrinsics=cameras, nonnegative_scale=True)
                predicted_values = torch.stack(
                    [values_at_landmarks(depth, points)[0] for depth, points in zip(prediction, landmarks)]
                )
                rows[name].update(
                    {key: dense[key] for key in DEPTH_KEYS}
                    | {"landmark_spearman": rank_correlation(predicted_values, truth_values, on_person)}
                )
            bar.update(len(batch))
    return {"rows": mean_rows(rows), "landmarks_per_image": float(np.mean(landmark_counts))}


@torch.no_grad()
def codec_reconstruction(
    pipelines: Mapping[str, Any], items: Sequence, *, batch_size: int, show_progress: bool = True
) -> dict[str, Any]:
    """Reconstruction of real images and their pseudo-depth by each pipeline's codec; see the module docstring."""
    rows = {name: MetricAccumulator() for name in pipelines}
    with _bar(len(items) * len(pipelines), "real faces: codec", show_progress) as bar:
        for name, pipeline in pipelines.items():
            codec, side = pipeline.model.codec, pipeline.model.resolution
            device, dtype = pipeline.device, pipeline.dtype
            for batch in in_batches(items, batch_size):
                resized = [
                    resize_sample_tensors(item.rgb * 2 - 1, item.depth[None], item.mask[None].float(), side)
                    for item in batch
                ]
                rgb, depth, mask = (torch.stack(parts) for parts in zip(*resized))
                person = mask > 0.5
                normalized, _, _ = normalize_depth(depth, person)
                rgb_out = codec.decode_rgb(codec.encode_rgb(rgb.to(device, dtype))).float().cpu()
                depth_out = codec.decode_depth(codec.encode_depth(normalized.to(device, dtype))).float().cpu()
                everywhere = torch.ones_like(person[:, 0])
                truth_rgb, decoded_rgb = (rgb + 1) / 2, (rgb_out + 1) / 2
                rows[name].update(
                    {
                        "rgb_psnr": psnr(decoded_rgb, truth_rgb, everywhere),
                        "rgb_ssim": ssim(decoded_rgb, truth_rgb, everywhere),
                        "depth_psnr": psnr(to_unit_range(depth_out), to_unit_range(normalized), person[:, 0]),
                    }
                )
                bar.update(len(batch))
    return {"rows": mean_rows(rows)}


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def write_generation_sheet(
    pipeline, samples: EvaluationSet, path: str | os.PathLike, *, options: EvaluationOptions, people: int
) -> Path:
    """One row per person (the first `people` evaluated samples, identities in turn): the photo, a joint
    generation with it as reference (image and depth), its pseudo-depth and the image rendered from that depth
    with the evaluation's reference (another photo of the person when there is one)."""
    rows = []
    for item in samples.items[:people]:
        reference = samples.reference_of(item)
        joint = pipeline.generate(
            item.sample.rgb,
            num_inference_steps=options.steps,
            center_on_face=False,
            generator=sample_generator(options.seed, f"{item.key}#sheet-joint"),
            output_type="pt",
        )
        rendered = pipeline.render(
            item.sample.depth,
            reference=reference.sample.rgb,
            mask=item.sample.mask,
            num_inference_steps=options.steps,
            training_free=options.training_free,
            center_on_face=False,
            match_input_size=True,
            generator=sample_generator(options.seed, f"{item.key}#sheet-render"),
            output_type="pt",
        )
        joint_depth = joint.depth[0, 0].numpy()
        rows.append(
            [
                ("photo", item.sample.rgb),
                ("joint image", _hwc(joint.rgb[0])),
                ("joint depth", colorize_depth(joint_depth, mask=joint_depth < FOREGROUND_DEPTH, value_range=None)),
                ("pseudo-depth", colorize_depth(item.sample.depth, mask=item.sample.mask, value_range=None)),
                ("depth->image", _hwc(rendered.rgb[0])),
            ]
        )
    return write_sheet(path, rows)


def evaluate_real_faces(
    pipeline,
    data_dir: str | os.PathLike,
    *,
    options: EvaluationOptions,
    out_dir: str | os.PathLike,
    baseline_pipeline=None,
    generation_limit: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Every real-faces section in `options.tasks`, and the codec; see the module docstring."""
    samples = EvaluationSet(data_dir, split=options.split, limit=options.limit, show_progress=show_progress)
    results: dict[str, Any] = {
        "data": str(data_dir),
        "split": options.split,
        "samples": len(samples.items),
        "identities": len({item.identity for item in samples.items}),
        "notes": [],
    }
    generation_tasks = tuple(task for task in ("depth_to_image", "joint") if task in options.tasks)
    template = None
    if "image_to_depth" in options.tasks or "depth_to_image" in generation_tasks:
        template = load_template(None, data_dir, show_progress=show_progress)
        if template is None:
            results["notes"].append("no 'train' split in the folder: the mean-face template is left out")
    if "image_to_depth" in options.tasks:
        with_landmarks = [item for item in samples.items if _enough_landmarks(item)]
        if len(with_landmarks) < len(samples.items):
            results["notes"].append(
                f"image→depth: {len(samples.items) - len(with_landmarks)} samples without {MIN_LANDMARKS} face "
                "landmarks on the person in meta.json left out (prepared before landmarks were stored?)"
            )
        if with_landmarks:
            results["image_to_depth"] = real_face_depth(
                pipeline,
                with_landmarks,
                options=options,
                template=template,
                baseline_pipeline=baseline_pipeline,
                show_progress=show_progress,
            ) | {"samples": len(with_landmarks)}
    pipelines = {"model": pipeline} | ({BASELINE_MODEL: baseline_pipeline} if baseline_pipeline is not None else {})
    results["codec"] = codec_reconstruction(
        pipelines, samples.items, batch_size=options.batch_size, show_progress=show_progress
    )
    if generation_tasks:
        limit = generation_limit or options.limit
        generated = evaluate(
            pipeline,
            data_dir,
            options=replace(options, tasks=generation_tasks, limit=limit),
            template=template,
            show_progress=show_progress,
        )
        results["generation_samples"] = generated["samples"]
        if "depth_to_image" in generated:
            results["depth_to_image"] = {part: generated["depth_to_image"][part] for part in ("geometry", "detail")}
        if "joint" in generated:
            results["joint"] = generated["joint"]
        results["notes"] += [note for note in generated["notes"] if "template" not in note]
        sheet = write_generation_sheet(
            pipeline, samples, Path(out_dir) / SHEET_NAME, options=options, people=SHEET_PEOPLE
        )
        results["sheet"] = sheet.name
    return results


def _enough_landmarks(item) -> bool:
    landmarks = stored_landmarks(item)
    if landmarks is None:
        return False
    return int(landmarks_on(item.mask, landmarks).sum()) >= MIN_LANDMARKS


def format_real_faces(section: Mapping[str, Any]) -> str:
    """The real-faces results as Markdown."""
    lines = [
        f"## Real faces: `{section['data']}`",
        "",
        f"Split `{section['split']}`: {section['samples']} samples of {section['identities']} identities, prepared "
        "crops given as they are (no face centring), with their person masks.",
        "",
    ]
    if "image_to_depth" in section:
        depth = section["image_to_depth"]
        lines += [
            "### Image → depth against face-mesh pseudo-depth",
            "",
            f"{depth['samples']} samples. AbsRel, δ and normals after a least-squares scale (kept >= 0) and shift "
            f"on the person; Spearman between the depth at the {depth['landmarks_per_image']:.0f} face-mesh "
            "landmarks on the person (nearest pixel) and their own depth.",
            "",
            format_table(depth),
        ]
    lines += [
        "### Codec reconstruction",
        "",
        "Posterior mode encoded and decoded at the model's resolution: RGB over the whole image, depth (normalised "
        "as the model sees it, in [0, 1]) on the person.",
        "",
        format_table(section["codec"]),
    ]
    if "depth_to_image" in section or "joint" in section:
        lines += [
            f"### Generation from real references ({section['generation_samples']} samples)",
            "",
        ]
    if "depth_to_image" in section:
        lines += [
            "Depth→image geometry consistency: image→depth of the image rendered from the pseudo-depth (reference: "
            "another photo of the person, or the photo itself when there is none) against that depth.",
            "",
            format_table(section["depth_to_image"]["geometry"], columns=DEPTH_KEYS),
            DETAIL_CAPTION,
            "",
            format_table(section["depth_to_image"]["detail"]),
        ]
    if "joint" in section:
        joint = section["joint"]
        lines += [
            f"Joint generation, {joint['samples_per_reference']} seeds per reference photo: RGB-D consistency "
            "(image→depth of the generated image against the generated depth, on the generated subject).",
            "",
            format_table(joint["consistency"], columns=DEPTH_KEYS),
            DETAIL_CAPTION,
            "",
            format_table(joint["detail"]),
        ]
        if "diversity" in joint:
            lines += ["Diversity between seeds (whole image).", "", format_table(joint["diversity"])]
        if "identity" in joint:
            lines += [
                "Identity: generated depth and colours against every other photo of the split; top-1 = the "
                "reference's own identity scores best (pseudo-depth and photos' colours, so a weak ruler).",
                "",
                format_table(joint["identity"]),
            ]
    if "sheet" in section:
        lines += [f"Contact sheet of real test people: `{section['sheet']}`.", ""]
    if section["notes"]:
        lines += ["Notes:", "", *(f"- {note}" for note in section["notes"]), ""]
    return "\n".join(lines)
