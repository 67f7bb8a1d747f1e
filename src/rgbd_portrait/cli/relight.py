"""`rgbd-portrait relight`: relight a portrait from its depth (given or predicted) under a new light."""

from __future__ import annotations

import argparse
from pathlib import Path

from rgbd_portrait.cli.common import (
    add_model_arguments,
    add_output_arguments,
    export_options,
    pipeline_loader,
    pipeline_options,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.relighting import DEFAULT_AMBIENT, LIGHT_PRESETS, DirectionalLight
from rgbd_portrait.geometry.shading import NUM_SH_COEFFICIENTS

# A lamp given by angles is as strong as a preset's key light, so presets and angles look alike in brightness.
DEFAULT_LAMP_INTENSITY = 0.8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relight",
        help="relight a portrait under a new light",
        description=(
            "Depth (given with --depth, or predicted) → normals → shading: the original light is estimated "
            "and divided out (albedo), and the image is shaded with the new light. --light takes a preset "
            f"({', '.join(LIGHT_PRESETS)}), 'AZIMUTH,ELEVATION' in degrees (azimuth 0 = from the camera, "
            "positive = from the image's right; elevation positive = from above), or a file with 9 or 9×3 "
            "spherical-harmonic coefficients (.npy, or text with one number per line or comma-separated)."
        ),
    )
    parser.add_argument("image", metavar="IMAGE", help="portrait image")
    parser.add_argument(
        "--light",
        required=True,
        help="preset name, AZIMUTH,ELEVATION (write --light=-30,10 for a negative azimuth), or an SH coefficients file",
    )
    parser.add_argument("--depth", help="depth map of the image (same size; default: predicted by the model)")
    parser.add_argument("--mask", help="mask of the subject (white); only these pixels are relit")
    parser.add_argument(
        "--intensity", type=float, default=DEFAULT_LAMP_INTENSITY, help="lamp strength for AZIMUTH,ELEVATION"
    )
    parser.add_argument(
        "--ambient", type=float, default=DEFAULT_AMBIENT, help="uniform light added to AZIMUTH,ELEVATION"
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="refine the relit image through depth→image for a cleaner result"
    )
    parser.add_argument(
        "--regeneration-strength", type=float, help="share of the schedule re-run when regenerating (0-1)"
    )
    parser.add_argument("--ensemble", type=int, help="depth predictions combined (default: from the model)")
    add_model_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def _read_sh_coefficients(path: Path):
    import numpy as np
    import torch

    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.array([float(item) for item in path.read_text().replace(",", " ").split()])
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path}: cannot read SH coefficients ({error})") from error
    if values.size not in (NUM_SH_COEFFICIENTS, 3 * NUM_SH_COEFFICIENTS):
        raise UserInputError(f"{path}: expected 9 or 27 SH coefficients, got {values.size}")
    shape = (NUM_SH_COEFFICIENTS,) if values.size == NUM_SH_COEFFICIENTS else (NUM_SH_COEFFICIENTS, 3)
    return torch.tensor(values.reshape(shape), dtype=torch.float32)


def light_from_argument(text: str, *, intensity: float):
    """--light → what the pipeline's `relight` takes: a preset name, a lamp, or SH coefficients."""
    if text.lower() in LIGHT_PRESETS:
        return text.lower()
    parts = text.split(",")
    if len(parts) == 2:
        try:
            azimuth, elevation = (float(part) for part in parts)
        except ValueError:
            raise UserInputError(f"--light {text}: AZIMUTH,ELEVATION must be two numbers in degrees") from None
        return DirectionalLight.from_angles(azimuth, elevation, intensity=intensity)
    path = Path(text)
    if path.is_file():
        return _read_sh_coefficients(path)
    raise UserInputError(
        f"--light {text}: not a preset ({', '.join(LIGHT_PRESETS)}), AZIMUTH,ELEVATION or an SH coefficients file"
    )


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.pipelines.files import run_relight

    light = light_from_argument(args.light, intensity=args.intensity)
    options = pipeline_options(args)
    if args.regeneration_strength is not None:
        options["regeneration_strength"] = args.regeneration_strength
    folder = run_relight(
        pipeline_loader(args),
        args.image,
        light,
        args.out,
        depth=args.depth,
        mask=args.mask,
        seed=args.seed,
        export=export_options(args),
        ambient=args.ambient,
        regenerate=args.regenerate,
        ensemble_size=args.ensemble,
        **options,
    )
    print(folder)
    return 0
