"""Speed against a peer: our image→depth versus diffusers' MarigoldDepthPipeline of the same size, joint generation
versus two passes, and reference caching versus re-running the reference net at every step.

    python benchmarks/bench_speed_vs_marigold.py                         # configs/default.yaml, random weights
    python benchmarks/bench_speed_vs_marigold.py --config configs/sd15.yaml --device cuda \
        --out benchmarks/results/speed_vs_marigold_sd15.md
    python benchmarks/bench_speed_vs_marigold.py --model src/rgbd_portrait/weights/default --steps 1 \
        --sections depth --out benchmarks/results/speed_vs_marigold_default.md     # the shipped model, depth only
    python benchmarks/bench_speed_vs_marigold.py --model src/rgbd_portrait/weights/default --sections precision \
        --out benchmarks/results/precision_default.md          # float32 against bfloat16, ours and Marigold

Run from the repository root. Speed does not depend on the weights, so by default both models have random
weights (the architecture of --config; or --model, a trained folder). Marigold's pipeline is built offline by
`rgbd_portrait.evaluation.speed.build_marigold_peer`: a UNet of our backbone's architecture with Marigold's
channels, our VAE, our scheduler (DDIM, trailing, zero terminal SNR: Marigold v1-1's), a zero empty-prompt
embedding. Same input image, device, dtype (--dtype, for both) and resolution for everything, in one run;
batch 1, median of --repeats calls after a warm-up. Writes a Markdown table and a PNG.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import torch

from benchmark_support import command_line, machine_line, new_figure, resolve_device, write_figure, write_markdown
from rgbd_portrait.evaluation.results import format_markdown_table
from rgbd_portrait.evaluation.speed import (
    MARIGOLD_DEFAULT_ENSEMBLE,
    MARIGOLD_DEFAULT_STEPS,
    build_marigold_peer,
    compare_reference_caching,
    depth_calls,
    interleaved_median_seconds,
)
from rgbd_portrait.evaluation.task_names import DEPTH_REFERENCE_WORDS
from rgbd_portrait.models import RGBDPortraitModel, read_model_section
from rgbd_portrait.pipelines import RGBDPortraitPipeline


def load_model(args: argparse.Namespace) -> RGBDPortraitModel:
    if args.model:
        return RGBDPortraitModel.from_pretrained(args.model)
    section = read_model_section(args.config)
    section.pop("stable_diffusion", None)  # the architecture only: random weights
    torch.manual_seed(0)
    return RGBDPortraitModel.from_config(section, source=args.config).eval()


def precision_section(args: argparse.Namespace, device: torch.device, image: torch.Tensor, *, repeats: int) -> list:
    """Our pipeline and its Marigold peer with the same weights in float32 and in bfloat16, all calls in turns."""
    calls = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(args).to(device, dtype)
        pipeline = RGBDPortraitPipeline(model)
        pipeline.set_progress_bar_config(disable=True)
        settings = model.settings
        ours, marigold = depth_calls(
            pipeline,
            build_marigold_peer(model),
            image,
            ours=(settings.depth_steps, settings.ensemble_size),
            marigold=(settings.depth_steps, 1),
        )
        name = str(dtype).removeprefix("torch.")
        calls[f"image→depth, ours {settings.depth_steps} × {settings.ensemble_size}", name] = ours
        calls[f"image→depth, Marigold {settings.depth_steps} × 1", name] = marigold
        calls[f"joint generation, {settings.default_steps} steps", name] = lambda pipeline=pipeline: pipeline.generate(
            image, center_on_face=False, output_type="pt", generator=torch.Generator().manual_seed(0)
        )
    seconds = interleaved_median_seconds(calls, device=device, repeats=repeats)
    rows = {}
    for (task, name), value in seconds.items():
        rows.setdefault(task, {})[f"{name} s"] = value
    for row in rows.values():
        row["float32 / bfloat16"] = row["float32 s"] / row["bfloat16 s"]
    ours_task, marigold_task = list(rows)[:2]
    return [
        "## Precision: float32 against bfloat16",
        "",
        "The same weights in both dtypes; each call timed in turns with the others. The accuracy of bfloat16 is "
        "measured separately (`rgbd-portrait eval --dtype bfloat16`, docs/inference.md).",
        "",
        format_markdown_table(rows, row_heading="call", digits=3),
        "",
        f"Ours in bfloat16 against Marigold in float32: "
        f"{rows[ours_task]['bfloat16 s'] / rows[marigold_task]['float32 s']:.3f}× its time; in the same dtype: "
        f"{rows[ours_task]['float32 s'] / rows[marigold_task]['float32 s']:.3f}× (float32), "
        f"{rows[ours_task]['bfloat16 s'] / rows[marigold_task]['bfloat16 s']:.3f}× (bfloat16).",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml", help="YAML with a model: section")
    parser.add_argument("--model", help="a trained model folder instead of random weights")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 10], help="equal-step comparisons")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="both pipelines' weights"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--sections",
        default="depth,generation,caching",
        help="comma-separated tables to measure: depth (against Marigold), generation, caching, precision "
        "(float32 against bfloat16, whatever --dtype)",
    )
    parser.add_argument("--out", default="benchmarks/results/speed_vs_marigold.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    model = load_model(args).to(device, getattr(torch, args.dtype))
    pipeline = RGBDPortraitPipeline(model)
    pipeline.set_progress_bar_config(disable=True)
    peer = build_marigold_peer(model)
    settings = model.settings
    side = settings.resolution
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))

    def time_pair(first, second) -> tuple[float, float]:
        seconds = interleaved_median_seconds({"first": first, "second": second}, device=device, repeats=args.repeats)
        return seconds["first"], seconds["second"]

    # (row, ours (steps, members), Marigold (steps, members), our self_reference: None = the model's).
    settings_compared = [
        (f"{steps} steps, 1 prediction, {DEPTH_REFERENCE_WORDS[choice]}", (steps, 1), (steps, 1), choice)
        for steps in args.steps
        for choice in (True, False)
    ]
    steps, members = settings.depth_steps, settings.ensemble_size
    default_words = DEPTH_REFERENCE_WORDS[settings.depth_self_reference]
    if members > 1:
        settings_compared += [
            (
                f"ours at its default {steps} × {members} ({default_words}), Marigold at the same steps × 1 "
                f"(its default)",
                (steps, members),
                (steps, 1),
                None,
            ),
            (f"both {steps} × {members} (ours {default_words})", (steps, members), (steps, members), None),
        ]
    settings_compared.append(
        (
            f"each one's default: ours {steps} × {members} ({default_words}), Marigold "
            f"{MARIGOLD_DEFAULT_STEPS} × {MARIGOLD_DEFAULT_ENSEMBLE}",
            (steps, members),
            (MARIGOLD_DEFAULT_STEPS, MARIGOLD_DEFAULT_ENSEMBLE),
            None,
        )
    )
    sections = {section.strip() for section in args.sections.split(",")}
    unknown = sections - {"depth", "generation", "caching", "precision"}
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    source = f"trained model `{args.model}`" if args.model else f"`{args.config}` with random weights"
    lines = [
        "# Speed: image→depth against Marigold, joint generation, reference caching",
        "",
        f"Command: `{command_line(__file__, argv)}`  ",
        f"Model: {source}, {side} px, {model.backbone.dtype}; batch 1; median of {args.repeats} calls after a "
        f"warm-up, the calls of each table timed in turns so that the machine's load affects them alike.  ",
        f"Machine: {machine_line(device)}.",
        "",
    ]

    depth_rows = {}
    if "depth" in sections:
        for name, our_setting, peer_setting, self_reference in settings_compared:
            ours_seconds, peer_seconds = time_pair(
                *depth_calls(
                    pipeline, peer, image, ours=our_setting, marigold=peer_setting, self_reference=self_reference
                )
            )
            depth_rows[name] = {
                "ours s": ours_seconds,
                "Marigold s": peer_seconds,
                "ours / Marigold": ours_seconds / peer_seconds,
            }
        lines += [
            "## Image→depth: ours versus diffusers' MarigoldDepthPipeline of the same size",
            "",
            "Same UNet architecture (ours adds the known/mask input channels and reference attention, and runs the "
            "reference net once per call when the image is its own reference), same VAE, scheduler, image and "
            "resolution. Both include VAE encoding and decoding. `S × N`: denoising steps × ensemble members "
            "(ours: the image and its mirror image).",
            "",
            format_markdown_table(depth_rows, row_heading="setting", digits=3),
        ]

    def generate():
        return pipeline.generate(
            image, center_on_face=False, output_type="pt", generator=torch.Generator().manual_seed(0)
        )

    def two_passes(depth_steps: int):
        def call():
            rgb = generate().rgb
            pipeline.predict_depth(
                rgb,
                num_inference_steps=depth_steps,
                ensemble_size=1,
                center_on_face=False,
                output_type="pt",
                generator=torch.Generator().manual_seed(0),
            )

        return call

    if "generation" in sections:
        joint_name = f"joint: RGB + depth in one pass ({settings.default_steps} steps)"
        calls = {joint_name: generate}
        for depth_steps in sorted({settings.default_steps, settings.depth_steps}):
            name = f"two passes: RGB ({settings.default_steps} steps), then image→depth ({depth_steps} steps)"
            calls[name] = two_passes(depth_steps)
        generation_seconds = interleaved_median_seconds(calls, device=device, repeats=args.repeats)
        generation_rows = {
            name: {"seconds": seconds, "× joint": seconds / generation_seconds[joint_name]}
            for name, seconds in generation_seconds.items()
        }
        lines += [
            "## Joint generation versus two passes",
            "",
            "Generation at the default guidance (2: two backbone evaluations per step); the image→depth pass "
            "without guidance.",
            "",
            format_markdown_table(generation_rows, row_heading="how", digits=3),
        ]

    if "caching" in sections:
        caching_rows = {}
        for steps in sorted({settings.depth_steps, settings.default_steps}):
            measured = compare_reference_caching(model, image, steps=steps, repeats=args.repeats)
            caching_rows[f"{steps} steps"] = {
                "cached s": measured["cached_seconds"],
                "every step s": measured["every_step_seconds"],
                "every step / cached": measured["every_step_seconds"] / measured["cached_seconds"],
                "reference-net runs": measured["reference_runs"],
                "max |difference|": measured["max_difference"],
            }
        lines += [
            "## Reference caching",
            "",
            "One image→depth denoising loop (no VAE decoding, no guidance), reference features computed once "
            "versus recomputed before every backbone call; the results are identical (last column).",
            "",
            format_markdown_table(caching_rows, row_heading="loop", digits=3),
        ]
    if "precision" in sections:
        lines += precision_section(args, device, image, repeats=args.repeats)
    report = "\n".join(lines)
    write_markdown(args.out, report)
    if depth_rows:
        plot(depth_rows, Path(args.out).with_suffix(".png"))
    print(report)
    return 0


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    figure, (axis,) = new_figure(1, width=2.0 + 1.1 * len(rows))
    names = [textwrap.fill(name.split(":")[0], 20) for name in rows]
    positions = torch.arange(len(rows), dtype=torch.float32)
    axis.bar(positions - 0.2, [row["ours s"] for row in rows.values()], width=0.4, label="ours")
    axis.bar(positions + 0.2, [row["Marigold s"] for row in rows.values()], width=0.4, label="Marigold (diffusers)")
    axis.set_xticks(positions.tolist(), names, fontsize=7)
    axis.set_ylabel("seconds per image")
    axis.legend()
    figure.suptitle("Image→depth speed, same size and device")
    write_figure(path, figure)


if __name__ == "__main__":
    sys.exit(main())
