"""`rgbd-portrait init`: build the expanded RGB-D model from a local Stable Diffusion folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init",
        help="build the RGB-D model from a local Stable Diffusion folder",
        description=(
            "Read a diffusers-format Stable Diffusion folder (unet/, vae/, scheduler/), expand its UNet to the "
            "joint RGB-D channel layout, copy it into the reference network, and write an rgbd-portrait checkpoint. "
            "Settings (prediction type, sampler, steps, resolution, context) come from the model: section of "
            "--config, e.g. configs/sd15.yaml; the architecture and weights come from the folder."
        ),
    )
    parser.add_argument("--base", required=True, metavar="SD_FOLDER", help="local Stable Diffusion folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    parser.add_argument("--config", metavar="YAML", help="config file whose model: section gives the settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgbd_portrait.models import RGBDPortraitModel, read_model_section

    section = read_model_section(args.config) if args.config else None
    model = RGBDPortraitModel.from_stable_diffusion(
        args.base, section=section, source=args.config or "init", show_progress=not args.no_progress
    )
    directory = model.save_pretrained(args.out, overwrite=args.overwrite)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"wrote {directory}: {parameters / 1e6:.1f} M parameters, {model.latent_channels} latent channels, "
        f"{model.prediction_type} prediction, {model.resolution} px"
    )
    return 0
