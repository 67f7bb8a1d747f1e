"""`rgbd-portrait generate`: RGB portraits of a reference's identity with their depth, from one denoising loop."""

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
        "generate",
        help="generate RGB + depth portraits of a reference identity",
        description=(
            "Joint RGB-D generation: portraits with the identity of the reference image and their depth, "
            "normals, point cloud and mesh. Parts of the result can be fixed with --known-image/--known-depth."
        ),
    )
    parser.add_argument("--reference", required=True, help="image of the identity to generate")
    parser.add_argument("--samples", type=int, default=1, help="portraits to generate (default 1)")
    parser.add_argument("--guidance", type=float, help="guidance scale over the reference (default: the pipeline's)")
    parser.add_argument("--known-image", help="an image whose (masked) content the result keeps")
    parser.add_argument("--known-image-mask", help="mask of the known image's pixels to keep (white = keep)")
    parser.add_argument("--known-depth", help="a depth map (.npy, 16-bit PNG, EXR) the result follows")
    parser.add_argument("--known-depth-mask", help="mask of the known depth's valid pixels (white = valid)")
    parser.add_argument(
        "--conditioning",
        choices=("replacement", "channels"),
        default="replacement",
        help="how known parts enter: latent replacement (training-free, any region; default) or the trained "
        "channel-wise tasks (whole images)",
    )
    add_model_arguments(parser)
    add_output_arguments(parser, match_input_size=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.pipelines.files import run_generate

    options = pipeline_options(args)
    if args.guidance is not None:
        options["guidance_scale"] = args.guidance
    written = run_generate(
        pipeline_loader(args),
        args.reference,
        args.out,
        num_samples=args.samples,
        seed=args.seed,
        export=export_options(args),
        known_image=args.known_image,
        known_image_mask=args.known_image_mask,
        known_depth=args.known_depth,
        known_depth_mask=args.known_depth_mask,
        conditioning=args.conditioning,
        **options,
    )
    for folder in written:
        print(folder)
    return 0
