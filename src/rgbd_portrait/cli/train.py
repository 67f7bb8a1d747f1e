"""`rgbd-portrait train CONFIG.yaml [key=value ...]`: train with Accelerate (see docs/training.md)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (codec and/or joint stage) from a YAML config",
        description=(
            "Train the stages of a YAML config (model/data/train sections). Overrides use dotted keys, e.g. "
            "train.joint.max_steps=2000 data.root=datasets/studio train.resume=latest. For several GPUs or "
            "nodes: accelerate launch [options] -m rgbd_portrait.train CONFIG.yaml [key=value ...]."
        ),
    )
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides of the config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.training import TrainingDivergedError, load_config, train

    config = load_config(args.config, args.overrides)
    try:
        final = train(config, show_progress=not args.no_progress)
    except TrainingDivergedError as error:
        print(f"rgbd-portrait train: {error}", file=sys.stderr)
        return 1
    print(f"trained model: {final}")
    return 0
