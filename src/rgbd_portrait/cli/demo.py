"""`rgbd-portrait demo`: every task of the model on a few portraits, as one HTML page."""

from __future__ import annotations

import argparse

from rgbd_portrait.cli.common import DEVICES, DTYPE_HELP, DTYPES, pipeline_loader, resolve_model_dir

DEFAULT_OUT = "rgbd-portrait-demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run every task on a few portraits and write an HTML page of the results",
        description=(
            "Image→depth, joint generation, depth→image, relighting and (with a talking-head model) a short "
            "talking clip, on synthetic test heads with their exact depth and on the public-domain portraits "
            "that ship with scikit-image and matplotlib. Writes every result file and one index.html that shows "
            "inputs and outputs side by side with the timings; prints the page's path."
        ),
    )
    parser.add_argument("--model", help="model folder (default: the model shipped with the package)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder, new or empty (default ./{DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace the folder of an earlier demo")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--seed", type=int, default=0, help="random seed; runs are reproducible (default 0)")
    parser.add_argument("--steps", type=int, help="denoising steps of every task (default: the model's)")
    parser.add_argument("--identities", type=int, help="synthetic test heads to show (default 2)")
    parser.add_argument("--no-animation", action="store_true", help="leave out the talking clips")
    parser.add_argument(
        "--clip-seconds", type=float, help="length of the talking clips (default: one window of the motion layers)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # What `pipeline_loader` reads besides the options above: the demo runs the model as it is stored.
    parser.set_defaults(func=run, cpu_offload=False, vae_slicing=False)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.demo import run_demo

    load = pipeline_loader(args)
    options = {} if args.identities is None else {"identities": args.identities}
    page = run_demo(
        load,
        args.out,
        model_dir=resolve_model_dir(args.model),
        animation=not args.no_animation,
        clip_seconds=args.clip_seconds,
        num_inference_steps=args.steps,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **options,
    )
    print(page)
    return 0
