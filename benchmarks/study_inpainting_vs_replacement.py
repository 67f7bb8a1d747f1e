"""Channel-wise inpainting versus training-free latent replacement, for image→depth and depth→image.

    python benchmarks/study_inpainting_vs_replacement.py           # the joint model of study_joint_vs_separate.py
    python benchmarks/study_inpainting_vs_replacement.py --model src/rgbd_portrait/weights/default \
        --data datasets/default-studio --out benchmarks/results/inpainting_vs_replacement_default.md

Run from the repository root. The same model, samples and seeds, evaluated twice by
`rgbd_portrait.evaluation.runner`: with the trained channel-wise tasks (known modality in the known channels,
masks set) and with RePaint-style replacement on the joint task (known latents only replaced into the noisy
state at every step). Also times one image of each task both ways. Writes a Markdown table and a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark_support import (
    add_study_arguments,
    command_line,
    load_study_pipeline,
    machine_line,
    new_figure,
    write_figure,
    write_markdown,
)
from rgbd_portrait.evaluation.results import format_markdown_table
from rgbd_portrait.evaluation.runner import EvaluationOptions, EvaluationSet, evaluate, load_template
from rgbd_portrait.evaluation.speed import median_seconds
from rgbd_portrait.pipelines import RGBDPortraitPipeline

VARIANTS = {"channel-wise inpainting (trained)": False, "latent replacement (training-free)": True}


def seconds_per_image(pipeline: RGBDPortraitPipeline, data: str, *, training_free: bool, repeats: int) -> dict:
    """Median seconds of one image→depth and one depth→image call on the first test sample."""
    samples = EvaluationSet(data, split="test", limit=1)
    item = samples.items[0]
    reference = samples.reference_of(item)
    common = {"training_free": training_free, "center_on_face": False, "output_type": "pt"}
    depth_call = lambda: pipeline.predict_depth(item.sample.rgb, mask=item.sample.mask, **common)
    image_call = lambda: pipeline.render(
        item.sample.depth, reference=reference.sample.rgb, mask=item.sample.mask, **common
    )
    return {
        "image→depth seconds": median_seconds(depth_call, device=pipeline.device, repeats=repeats),
        "depth→image seconds": median_seconds(image_call, device=pipeline.device, repeats=repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/inpainting_vs_replacement.md")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    pipeline = load_study_pipeline(args)
    device = pipeline.device
    template = load_template(None, args.data)
    rows, results = {}, None
    for name, training_free in VARIANTS.items():
        options = EvaluationOptions(
            tasks=("image_to_depth", "depth_to_image"), limit=args.limit, training_free=training_free
        )
        results = evaluate(pipeline, args.data, options=options, template=template)
        depth = results["image_to_depth"]["rows"]["model"]
        image = results["depth_to_image"]["image"]["rows"]["model"]
        geometry = results["depth_to_image"]["geometry"]["rows"]["generated image"]
        rows[name] = {
            "image→depth AbsRel ↓": depth["abs_rel"],
            "image→depth normal mean° ↓": depth["normal_mean_deg"],
            "image→depth normal <11.25° % ↑": depth["normal_pct_11.25"],
            "depth→image PSNR dB ↑": image["psnr"],
            "depth→image SSIM ↑": image["ssim"],
            "depth→image geometry AbsRel ↓": geometry["abs_rel"],
            **seconds_per_image(pipeline, args.data, training_free=training_free, repeats=args.repeats),
        }
    settings = pipeline.model.settings
    report = "\n".join(
        [
            "# Channel-wise inpainting versus training-free replacement",
            "",
            f"Command: `{command_line(__file__, argv)}`  ",
            f"Model: `{args.model}` ({settings.resolution} px; image→depth {settings.depth_steps} steps × "
            f"{settings.ensemble_size}, depth→image {settings.default_steps} steps); data `{args.data}`, split "
            f"`test`: {results['samples']} samples of {results['identities']} identities.  ",
            f"Machine: {machine_line(device)}.",
            "",
            "Same model, samples and seeds; only how the known modality enters the loop differs. Metrics as in "
            "`rgbd-portrait eval` (docs/evaluation.md); seconds: one image, median of "
            f"{args.repeats} calls.",
            "",
            format_markdown_table(rows, row_heading="conditioning"),
            "Results of a briefly trained tiny model (see joint_vs_separate.md); re-run on the default model.",
            "",
        ]
    )
    write_markdown(args.out, report)
    plot(rows, Path(args.out).with_suffix(".png"))
    print(report)
    return 0


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    figure, axes = new_figure(3, width=4.2)
    columns = ("image→depth AbsRel ↓", "depth→image PSNR dB ↑", "depth→image geometry AbsRel ↓")
    for axis, column in zip(axes, columns):
        axis.bar(range(len(rows)), [metrics[column] for metrics in rows.values()], color=["tab:blue", "tab:orange"])
        axis.set_xticks(range(len(rows)), [name.split(" (")[0] for name in rows], fontsize=8)
        axis.set_title(column, fontsize=10)
    figure.suptitle("Channel-wise inpainting versus latent replacement")
    write_figure(path, figure)


if __name__ == "__main__":
    sys.exit(main())
