"""Options shared by the inference commands (generate, depth, render, relight) and loading their pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.fit_modes import FIT_MODES
from rgbd_portrait.pipelines.export_names import EXPORTS, MESH_FORMATS
from rgbd_portrait.weights import default_model_dir

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DTYPE_HELP = "weights and activations; auto: bfloat16 on a CPU with native bfloat16, else float32 (default auto)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="model folder (default: the model shipped with the package)")
    group.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    group.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    group.add_argument(
        "--cpu-offload", action="store_true", help="keep the model on the CPU and move each part to the GPU as it runs"
    )
    group.add_argument("--vae-slicing", action="store_true", help="encode and decode one image at a time")
    group.add_argument("--seed", type=int, default=0, help="random seed; runs are reproducible (default 0)")
    group.add_argument("--steps", type=int, help="denoising steps (default: from the model)")
    group.add_argument("--resolution", type=int, help="square side the model works at (default: from the model)")
    group.add_argument(
        "--fit",
        choices=FIT_MODES,
        help="make inputs square: crop the largest square (centred on the face when MediaPipe is installed), pad "
        "the image, or frame the face as in the training crops (needs MediaPipe; default: from the model)",
    )
    group.add_argument("--no-face-centering", action="store_true", help="centre square crops on the image centre")


def add_output_arguments(parser: argparse.ArgumentParser, *, match_input_size: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=True, help="output folder; one sub-folder per result")
    group.add_argument(
        "--exports",
        default=",".join(EXPORTS),
        help=f"comma-separated files to write (default all): {','.join(EXPORTS)}",
    )
    group.add_argument("--mesh-format", choices=MESH_FORMATS, default="glb", help="mesh file format (default glb)")
    group.add_argument("--overwrite", action="store_true", help="replace existing result folders")
    if match_input_size:
        group.add_argument(
            "--match-input-size",
            action="store_true",
            help="map results back to each input's size (default: the model's resolution)",
        )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def export_options(args: argparse.Namespace):
    """The result files to write, from --exports, --mesh-format and --overwrite."""
    from rgbd_portrait.pipelines.export import ExportOptions

    exports = [name.strip() for name in args.exports.split(",") if name.strip()]
    return ExportOptions(exports=exports, mesh_format=args.mesh_format, overwrite=args.overwrite)


def pipeline_options(args: argparse.Namespace) -> dict:
    """Keyword arguments common to every pipeline task, from the parsed options."""
    options = {
        "num_inference_steps": args.steps,
        "resolution": args.resolution,
        "fit": args.fit,
        "center_on_face": not args.no_face_centering,
    }
    if hasattr(args, "match_input_size"):
        options["match_input_size"] = args.match_input_size
    return options


def resolve_model_dir(model: str | None) -> Path:
    if model is not None:
        return Path(model)
    default = default_model_dir()
    if not default.is_dir():
        raise UserInputError(f"no default model is installed (expected at {default}); pass --model MODEL_FOLDER")
    return default


def pipeline_loader(args: argparse.Namespace):
    """Check the model and device options now; return a function that loads the pipeline when called."""

    model_dir = resolve_model_dir(args.model)
    if not model_dir.is_dir():
        raise UserInputError(f"{model_dir}: model folder not found")
    # Imported here: parsing the command line stays free of torch.
    from rgbd_portrait.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.cpu_offload and device.type == "cpu":
        raise UserInputError("--cpu-offload: needs a GPU device (--device cuda or mps)")

    def load():
        from rgbd_portrait.pipelines import RGBDPortraitPipeline

        pipeline = RGBDPortraitPipeline.from_pretrained(model_dir, dtype=dtype)
        if args.cpu_offload:
            pipeline.enable_model_cpu_offload(device)
        else:
            pipeline.to(device)
        if args.vae_slicing:
            pipeline.enable_vae_slicing()
        pipeline.set_progress_bar_config(leave=False, disable=args.no_progress)
        return pipeline

    return load
