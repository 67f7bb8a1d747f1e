"""`rgbd-portrait render`: depth → image, a portrait following a depth map with a reference's identity."""

from __future__ import annotations

import argparse

from rgbd_portrait.cli.common import (
    add_model_arguments,
    add_output_arguments,
    export_options,
    pipeline_loader,
    pipeline_options,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render a portrait that follows a depth map, with a reference's identity",
        description=(
            "Depth→image: the depth map (.npy, 16-bit PNG, EXR; any unit, larger = farther) is the known "
            "channel; the result follows its geometry with the identity of the reference image."
        ),
    )
    parser.add_argument("depth", metavar="DEPTH", help="depth map file")
    parser.add_argument("--reference", required=True, help="image of the identity to render")
    parser.add_argument("--mask", help="mask of the valid depth pixels (white = valid)")
    parser.add_argument("--samples", type=int, default=1, help="images to render (default 1)")
    parser.add_argument("--guidance", type=float, help="guidance scale over the reference (default: the pipeline's)")
    parser.add_argument(
        "--training-free",
        action="store_true",
        help="latent replacement on the joint task instead of the trained depth→image task",
    )
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.pipelines.files import run_render

    options = pipeline_options(args)
    if args.guidance is not None:
        options["guidance_scale"] = args.guidance
    written = run_render(
        pipeline_loader(args),
        args.depth,
        args.reference,
        args.out,
        mask=args.mask,
        num_samples=args.samples,
        seed=args.seed,
        export=export_options(args),
        training_free=args.training_free,
        **options,
    )
    for folder in written:
        print(folder)
    return 0
