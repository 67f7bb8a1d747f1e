"""`rgbd-portrait` entry point: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys

from rgbd_portrait import __version__
from rgbd_portrait.errors import UserInputError

# Each module defines `register(subparsers)`, which adds its parser and sets `func` to a callable taking
# the parsed arguments. Modules are imported only when listed here, so adding a command is one line.
COMMAND_MODULES = (
    "rgbd_portrait.cli.synth",
    "rgbd_portrait.cli.prepare",
    "rgbd_portrait.cli.init",
    "rgbd_portrait.cli.train",
    "rgbd_portrait.cli.generate",
    "rgbd_portrait.cli.depth",
    "rgbd_portrait.cli.render",
    "rgbd_portrait.cli.relight",
    "rgbd_portrait.cli.animate",
    "rgbd_portrait.cli.eval",
    "rgbd_portrait.cli.demo",
    "rgbd_portrait.cli.app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgbd-portrait",
        description="Joint RGB-D portrait diffusion: generation, image→depth, depth→image, relighting.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserInputError as error:
        print(f"rgbd-portrait {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rgbd-portrait {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
