"""`rgbd-portrait eval`: per-task metrics of a model on a data split with ground truth and on real data sets, as
JSON, Markdown and contact sheets."""

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
            "renders) and speed. With real data sets: image→depth against face-mesh pseudo-depth (--real-faces) "
            "and real Kinect depth (--rap3df), the codec and generation from real references (--real-faces), and "
            "relighting between known lights (--yaleb), each beside its baselines and an optional --baseline-model. "
            "Writes results.json, results.md and contact sheets to --out and prints the tables."
        ),
    )
    parser.add_argument("--data", help="data folder with sample folders or shards (and meta splits), e.g. the studio's")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument(
        "--limit", type=int, help="evaluate at most this many samples of each data set (identities taken in turn)"
    )
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
    real = parser.add_argument_group("real data (docs/evaluation.md says where to get each set)")
    real.add_argument("--real-faces", help="folder prepared by `rgbd-portrait prepare` (e.g. LFW, UTKFace) with splits")
    real.add_argument(
        "--rap3df", help="rap3df Kinect captures: <person>/<pose>_<k>/ with rgb.png, depth_raw.png, mask.png"
    )
    real.add_argument(
        "--rap3df-trained",
        metavar="PREPARED",
        help="rap3df captures prepared for training (`rgbd-portrait prepare`): leave out its train and val people",
    )
    real.add_argument("--yaleb", help="Extended Yale B, cropped: <person>/<person>_P00A+000E+00.png, …")
    real.add_argument("--baseline-model", help="a second model folder (e.g. the previous default) measured beside it")
    real.add_argument(
        "--generation-limit", type=int, help="real faces: depth→image and joint generation on at most this many samples"
    )
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="model folder (default: the model shipped with the package)")
    group.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    group.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="weights and activations (default float32, so that results compare across machines; auto as in the "
        "inference commands)",
    )
    group.add_argument("--seed", type=int, default=0, help="random seed; runs are reproducible (default 0)")
    group.add_argument("--steps", type=int, help="depth→image and generation steps (default: from the model)")
    group.add_argument("--depth-steps", type=int, help="image→depth steps (default: from the model)")
    group.add_argument("--ensemble", type=int, help="image→depth predictions per image (default: from the model)")
    group.add_argument(
        "--self-reference",
        action=argparse.BooleanOptionalAction,
        help="image→depth reads each image as its own reference, or none (default: from the model)",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, cpu_offload=False, vae_slicing=False)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.evaluation.real_data import RealDataFolders, evaluate_real_data
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
        self_reference=args.self_reference,
        training_free=args.training_free,
        joint_samples=args.seeds,
        speed_repeats=args.speed_repeats,
    )
    options.check()
    folders = RealDataFolders(
        **{
            name: Path(value)
            for name in ("real_faces", "rap3df", "yaleb", "rap3df_trained")
            if (value := getattr(args, name))
        }
    )
    if args.data is None and not folders.given():
        raise UserInputError("nothing to evaluate: give --data and/or --real-faces, --rap3df, --yaleb")
    if args.data is not None and not Path(args.data).is_dir():
        raise UserInputError(f"--data {args.data}: data folder not found")
    folders.check()
    if args.generation_limit is not None and args.generation_limit < 1:
        raise UserInputError(f"--generation-limit: must be at least 1, got {args.generation_limit}")
    model_name = str(resolve_model_dir(args.model))
    load_pipeline = pipeline_loader(args)
    # The baseline model is checked now, with the evaluated one, and loaded when the real data needs it.
    load_baseline = None
    if args.baseline_model is not None:
        load_baseline = pipeline_loader(argparse.Namespace(**vars(args) | {"model": args.baseline_model}))
    needs_template = {"image_to_depth", "depth_to_image"} & set(options.tasks)
    template = None
    if needs_template and args.data:
        template = load_template(args.template, args.data, show_progress=not args.no_progress)
    pipeline = load_pipeline()
    # The evaluation shows its own progress; one denoising bar per call would bury it.
    pipeline.set_progress_bar_config(disable=True)
    results = {"model": model_name, "command": _command(args, options)}
    if args.data is not None:
        results |= evaluate(pipeline, args.data, options=options, template=template, show_progress=not args.no_progress)
    if folders.given():
        baseline = None
        if load_baseline is not None:
            baseline = load_baseline()
            baseline.set_progress_bar_config(disable=True)
        results["real_data"] = {"baseline_model": args.baseline_model} | evaluate_real_data(
            pipeline,
            folders,
            options=options,
            out_dir=args.out,
            baseline_pipeline=baseline,
            generation_limit=args.generation_limit,
            show_progress=not args.no_progress,
        )
    title = f"Evaluation of `{model_name}`"
    json_path, markdown_path = write_report(results, args.out, title=title)
    print(format_report(results, title=title))
    print(f"results: {json_path} and {markdown_path}")
    return 0


def _command(args: argparse.Namespace, options) -> str:
    """The command that reproduces this evaluation, every setting spelled out."""
    words = ["rgbd-portrait", "eval", "--model", str(resolve_model_dir(args.model))]
    words += ["--data", args.data] if args.data is not None else []
    words += ["--split", options.split, "--out", args.out, "--tasks", ",".join(options.tasks)]
    words += ["--seeds", str(options.joint_samples), "--seed", str(options.seed), "--device", args.device]
    words += ["--dtype", args.dtype, "--batch-size", str(options.batch_size)]
    words += ["--speed-repeats", str(options.speed_repeats)]
    for flag, value in (
        ("--real-faces", args.real_faces),
        ("--rap3df", args.rap3df),
        ("--rap3df-trained", args.rap3df_trained),
        ("--yaleb", args.yaleb),
        ("--baseline-model", args.baseline_model),
        ("--generation-limit", args.generation_limit),
        ("--limit", options.limit),
        ("--template", args.template),
        ("--steps", options.steps),
        ("--depth-steps", options.depth_steps),
        ("--ensemble", options.ensemble_size),
    ):
        if value is not None:
            words += [flag, str(value)]
    if options.self_reference is not None:
        words.append("--self-reference" if options.self_reference else "--no-self-reference")
    if options.training_free:
        words.append("--training-free")
    return shlex.join(words)
