"""Steps versus quality for image→depth: denoising steps × ensemble size, with the time each costs.

    python benchmarks/study_steps.py                      # the joint model of study_joint_vs_separate.py
    python benchmarks/study_steps.py --model src/rgbd_portrait/weights/default --data datasets/default-studio \
        --out benchmarks/results/steps_default.md

Run from the repository root. Image→depth on the test split by `rgbd_portrait.evaluation.runner` at every
combination of --steps and --ensembles (same samples and seeds; the model's sampler: DDIM with trailing
timesteps on a zero-terminal-SNR schedule), and the median seconds of one image at each. Writes a Markdown
table and a PNG (AbsRel and seconds against steps, one line per ensemble size).
"""

from __future__ import annotations

import argparse
import functools
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
from rgbd_portrait.evaluation.runner import EvaluationOptions, EvaluationSet, evaluate
from rgbd_portrait.evaluation.speed import median_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10, 50])
    parser.add_argument("--ensembles", type=int, nargs="+", default=[1, 5], help="predictions combined per image")
    parser.add_argument("--out", default="benchmarks/results/steps.md")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    pipeline = load_study_pipeline(args)
    device = pipeline.device
    item = EvaluationSet(args.data, split="test", limit=1).items[0]
    rows, curves, results = {}, {}, None
    for ensemble in args.ensembles:
        for steps in args.steps:
            options = EvaluationOptions(
                tasks=("image_to_depth",), limit=args.limit, depth_steps=steps, ensemble_size=ensemble
            )
            results = evaluate(pipeline, args.data, options=options, template=None, show_progress=False)
            depth = results["image_to_depth"]["rows"]["model"]
            call = functools.partial(
                pipeline.predict_depth,
                item.sample.rgb,
                mask=item.sample.mask,
                num_inference_steps=steps,
                ensemble_size=ensemble,
                center_on_face=False,
                output_type="pt",
            )
            seconds = median_seconds(call, device=device, repeats=args.repeats)
            rows[f"{steps} steps × {ensemble}"] = {
                "steps": steps,
                "ensemble": ensemble,
                "AbsRel ↓": depth["abs_rel"],
                "δ<1.25 ↑": depth["delta1"],
                "normal mean° ↓": depth["normal_mean_deg"],
                "normal <11.25° % ↑": depth["normal_pct_11.25"],
                "seconds / image ↓": seconds,
            }
            curves.setdefault(ensemble, []).append((steps, depth["abs_rel"], seconds))
            print(f"{steps} steps × {ensemble}: AbsRel {depth['abs_rel']:.4f}, {seconds:.3f} s", flush=True)
    settings = pipeline.model.settings
    report = "\n".join(
        [
            "# Steps versus quality: image→depth",
            "",
            f"Command: `{command_line(__file__, argv)}`  ",
            f"Model: `{args.model}` ({settings.resolution} px, default {settings.depth_steps} steps × "
            f"{settings.ensemble_size}); data `{args.data}`, split `test`: {results['samples']} samples of "
            f"{results['identities']} identities.  ",
            f"Machine: {machine_line(device)}.",
            "",
            "Depth after least-squares scale/shift alignment on the mask (as `rgbd-portrait eval`); an ensemble "
            f"aligns its members to their median and takes the median. Seconds: one image, median of {args.repeats}.",
            "",
            format_markdown_table(rows, row_heading="setting"),
            "Results of a briefly trained tiny model (see joint_vs_separate.md); re-run on the default model.",
            "",
        ]
    )
    write_markdown(args.out, report)
    plot(curves, Path(args.out).with_suffix(".png"))
    print(report)
    return 0


def plot(curves: dict[int, list[tuple[int, float, float]]], path: Path) -> None:
    figure, (quality, time_axis) = new_figure(2)
    for ensemble, points in curves.items():
        steps, abs_rel, seconds = zip(*points)
        quality.plot(steps, abs_rel, marker="o", label=f"ensemble {ensemble}")
        time_axis.plot(steps, seconds, marker="o", label=f"ensemble {ensemble}")
    for axis, label in ((quality, "AbsRel ↓"), (time_axis, "seconds / image")):
        axis.set_xscale("log")
        axis.set_xlabel("denoising steps")
        axis.set_ylabel(label)
        axis.legend()
    time_axis.set_yscale("log")
    figure.suptitle("Image→depth: steps versus quality")
    write_figure(path, figure)


if __name__ == "__main__":
    sys.exit(main())
