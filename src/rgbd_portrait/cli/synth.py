"""`rgbd-portrait synth`: render a synthetic studio data set (portraits with exact depth, relit pairs)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render synthetic portraits with exact depth, normals, albedo, relit pairs and talking sequences",
        description=(
            "Render procedural human heads (identities x samples, each with its own expression, pose, camera "
            "and light, plus the same view under other lights) into a new data folder, split by identity into "
            "train/val/test. The same options and seed give byte-identical files."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
    parser.add_argument("--identities", type=int, default=8, help="number of people (default 8)")
    parser.add_argument(
        "--samples-per-identity", type=int, default=4, help="images per person, other pose/expression/light (default 4)"
    )
    parser.add_argument("--size", type=int, default=128, help="image side in pixels, a multiple of 8 (default 128)")
    parser.add_argument("--relights", type=int, default=2, help="extra images of each view under other lights")
    parser.add_argument("--sequences", type=int, default=0, help="talking sequences with audio (default 0)")
    parser.add_argument(
        "--sequence-seconds", type=float, default=2.0, help="length of each talking sequence (default 2 s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of identities for validation")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="fraction of identities for testing")
    parser.add_argument("--shards", action="store_true", help="write tar shards instead of one folder per sample")
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--preview", action="store_true", help="also write preview.png, a contact sheet")
    parser.add_argument("--device", default="cpu", help="torch device to render on: cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="images rendered together (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes, e.g. one per CPU core (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.data.synth import render_dataset

    summary = render_dataset(
        args.out,
        identities=args.identities,
        samples_per_identity=args.samples_per_identity,
        size=args.size,
        relights=args.relights,
        sequences=args.sequences,
        sequence_seconds=args.sequence_seconds,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        shards=args.shards,
        samples_per_shard=args.samples_per_shard,
        preview=args.preview,
        show_progress=not args.no_progress,
    )
    print(summary.describe())
    return 0
