"""`rgbd-portrait prepare`: photos and videos → aligned samples with pseudo-depth (and audio for videos)."""

from __future__ import annotations

import argparse

from rgbd_portrait.data.prepare.backends import DEPTH_BACKENDS, MODEL_OUTPUT_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="turn real photos and videos into training samples with pseudo-depth",
        description=(
            "Find faces in photos and videos (files or folders), crop and align them, segment the person "
            "and estimate pseudo-depth. Videos become sequences of frames at 25 fps plus 16 kHz mono audio. "
            "Inputs already prepared with the same options are skipped."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="PHOTO_OR_VIDEO", help="image or video files, or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=512, help="side of the square crops in pixels (default 512)")
    parser.add_argument("--all-faces", action="store_true", help="a sample per face in photos, not only the largest")
    parser.add_argument(
        "--depth-backend", choices=tuple(DEPTH_BACKENDS), default="face-mesh", help="pseudo-depth source"
    )
    parser.add_argument("--depth-model", help="local transformers depth-estimation model folder (transformers backend)")
    parser.add_argument(
        "--depth-model-output",
        choices=MODEL_OUTPUT_KINDS,
        default="auto",
        help="whether the depth model predicts disparity or metric depth (default: from its config)",
    )
    parser.add_argument("--device", help="device for the depth model (default: cuda when available, else cpu)")
    parser.add_argument(
        "--identity-from",
        choices=("file", "folder"),
        default="file",
        help="identity of a sample: its input file, or the folder it is in (one folder per person)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.0, help="fraction of identities put in the validation split"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="fraction of identities put in the test split (never trained on)",
    )
    parser.add_argument("--min-face-confidence", type=float, default=0.5, help="face detector threshold")
    parser.add_argument(
        "--crop-smoothing", type=float, default=0.1, metavar="SECONDS", help="time σ for smoothing video crops"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.data.prepare import prepare

    summary = prepare(
        args.inputs,
        args.out,
        size=args.size,
        all_faces=args.all_faces,
        depth_backend=args.depth_backend,
        depth_model=args.depth_model,
        depth_model_output=args.depth_model_output,
        device=args.device,
        identity_from=args.identity_from,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        min_face_confidence=args.min_face_confidence,
        crop_smoothing_s=args.crop_smoothing,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(summary.format())
    return 1 if summary.failures else 0
