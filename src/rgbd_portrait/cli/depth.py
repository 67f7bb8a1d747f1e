"""`rgbd-portrait depth`: image → depth for files and folders of images, in batches."""

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
        "depth",
        help="estimate depth (and normals, point cloud, mesh) from portrait images",
        description=(
            "Image→depth: each image is the known RGB and the model predicts its affine-invariant depth. "
            "Several predictions per image (--ensemble, default from the model) are aligned and combined by "
            "their median, with an uncertainty map."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--mask", help="mask of the subject (white) for a single input image")
    parser.add_argument("--reference", help="reference image of the identity (default: each image itself)")
    parser.add_argument(
        "--self-reference",
        action=argparse.BooleanOptionalAction,
        help="without --reference, read each image as its own reference through the reference net, or use "
        "none and skip that run (default: from the model)",
    )
    parser.add_argument("--ensemble", type=int, help="predictions combined per image (default: from the model)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale over the reference (default 1)")
    parser.add_argument(
        "--training-free",
        action="store_true",
        help="latent replacement on the joint task instead of the trained image→depth task",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.pipelines.files import run_depth

    written = run_depth(
        pipeline_loader(args),
        args.inputs,
        args.out,
        mask=args.mask,
        batch_size=args.batch_size,
        seed=args.seed,
        export=export_options(args),
        progress=not args.no_progress,
        reference=args.reference,
        self_reference=args.self_reference,
        ensemble_size=args.ensemble,
        guidance_scale=args.guidance,
        training_free=args.training_free,
        **pipeline_options(args),
    )
    print(f"{len(written)} results in {args.out}")
    return 0
