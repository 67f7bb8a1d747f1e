"""`rgbd-portrait eval`: per-task metrics of a model on a data split with ground truth, as JSON and Markdown."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rgbd_portrait.cli.common import DEVICES, DTYPES, pipeline_loader, resolve_model_dir
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.task_names import TASKS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure a model on a data split with ground truth (metrics as JSON and a Markdown table)",
        description=(
            "Evaluate every task on a split of a data folder (e.g. the synthetic studio's test identities): "
            "image→depth (AbsRel, RMSE, δ, normal error; mean-face template and flat-plane baselines), "
            "depth→image (PSNR/SSIM against the view under the reference's light; geometry consistency), joint "
            "generation (RGB-D consistency, diversity across seeds, identity), relighting (against exact relit "
            "renders) and speed. Writes results.json and results.md to --out and prints the tables."
        ),
    )
    parser.add_argument("--data", required=True, help="data folder with sample folders or shards (and meta splits)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--limit", type=int, help="evaluate at most this many samples (identities taken in turn)")
    parser.add_argument("--out", default="eval-results", help="folder for results.json and results.md")
    parser.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help=f"comma-separated tasks (default all): {','.join(TASKS)}",
    )
    parser.add_argument(
        "--template", help="mean-face template .npy (default: built from the data folder's train split)"
    )
    parser.add_argument("--seeds", type=int, default=2, help="joint generations per reference (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed calls per task (default 3)")
    parser.add_argument(
        "--training-free",
        action="store_true",
        help="image→depth and depth→image by latent replacement instead of the trained tasks",
    )
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="model folder (default: the model shipped with the package)")
    group.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    group.add_argument("--dtype", choices=DTYPES, default="float32", help="weights and activations (default float32)")
    group.add_argument("--seed", type=int, default=0, help="random seed; runs are reproducible (default 0)")
    group.add_argument("--steps", type=int, help="depth→image and generation steps (default: from the model)")
    group.add_argument("--depth-steps", type=int, help="image→depth steps (default: from the model)")
    group.add_argument("--ensemble", type=int, help="image→depth predictions per image (default: from the model)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, cpu_offload=False, vae_slicing=False)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.evaluation.runner import EvaluationOptions, evaluate, format_report, load_template, write_report

    options = EvaluationOptions(
        split=args.split,
        limit=args.limit,
        tasks=tuple(name.strip() for name in args.tasks.split(",") if name.strip()),
        seed=args.seed,
        batch_size=args.batch_size,
        steps=args.steps,
        depth_steps=args.depth_steps,
        ensemble_size=args.ensemble,
        training_free=args.training_free,
        joint_samples=args.seeds,
        speed_repeats=args.speed_repeats,
    )
    options.check()
    if not Path(args.data).is_dir():
        raise UserInputError(f"--data {args.data}: data folder not found")
    model_name = str(resolve_model_dir(args.model))
    load_pipeline = pipeline_loader(args)
    needs_template = {"image_to_depth", "depth_to_image"} & set(options.tasks)
    template = load_template(args.template, args.data) if needs_template else None
    pipeline = load_pipeline()
    # The evaluation shows its own progress; one denoising bar per call would bury it.
    pipeline.set_progress_bar_config(disable=True)
    results = {"model": model_name, "command": _command(args, options)} | evaluate(
        pipeline, args.data, options=options, template=template, show_progress=not args.no_progress
    )
    title = f"Evaluation of `{model_name}`"
    json_path, markdown_path = write_report(results, args.out, title=title)
    print(format_report(results, title=title))
    print(f"results: {json_path} and {markdown_path}")
    return 0


def _command(args: argparse.Namespace, options) -> str:
    """The command that reproduces this evaluation, every setting spelled out."""
    words = ["rgbd-portrait", "eval", "--model", str(resolve_model_dir(args.model)), "--data", args.data]
    words += ["--split", options.split, "--out", args.out, "--tasks", ",".join(options.tasks)]
    words += ["--seeds", str(options.joint_samples), "--seed", str(options.seed), "--device", args.device]
    words += ["--dtype", args.dtype, "--batch-size", str(options.batch_size)]
    words += ["--speed-repeats", str(options.speed_repeats)]
    for flag, value in (
        ("--limit", options.limit),
        ("--template", args.template),
        ("--steps", options.steps),
        ("--depth-steps", options.depth_steps),
        ("--ensemble", options.ensemble_size),
    ):
        if value is not None:
            words += [flag, str(value)]
    if options.training_free:
        words.append("--training-free")
    return shlex.join(words)
