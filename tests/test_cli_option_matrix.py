"""Every inference command across its options, generated from its argparse parser.

Each option of a command runs alone on top of the defaults (every choice, the flag set, or each sample value),
and the options that interact run in pairs (see `option_cases`). Every run must either write its complete
result folders or stop with exit status 2 and one line of error, never a traceback. An option added to a
parser is in the matrix at once: flags and choices need nothing, and an option taking a value fails
`test_every_option_has_sample_values` until it has sample values here.
"""

import argparse
from pathlib import Path

import pytest
import torch

from option_matrix_support import option_cases, write_inputs, write_tiny_talking_model
from rgbd_portrait.cli.main import build_parser, main
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.pipelines import pipeline as pipeline_module
from rgbd_portrait.pipelines.animation_export import VIDEO_FILES
from rgbd_portrait.pipelines.export_names import EXPORTS
from rgbd_portrait.pipelines.files import collect_images, result_names
from rgbd_portrait.pipelines.inputs import FaceCentres

INFERENCE_COMMANDS = ("generate", "depth", "render", "relight", "animate")
# Given to every run by the test rather than varied: the model and the output folder.
HARNESS_OPTIONS = ("--model", "--out")
# Set in every run's defaults so that stderr holds nothing but errors; the matrix varies them by leaving them out.
QUIET_FLAGS = ("--no-progress",)
# The tiny model's default number of image→depth predictions (see `write_tiny_talking_model`).
MODEL_ENSEMBLE_SIZE = 1

# Values of the options that take one and offer no choices; "{inputs}" is the folder `write_inputs` fills.
# Positionals are named by their dest, and each value is a tuple of arguments. A required option's or a
# positional's first value is the one in the defaults; the others are varied.
SAMPLE_VALUES = {
    "inputs": [
        ("{inputs}/a.png",),
        ("{inputs}/a.png", "{inputs}/b.jpg"),
        ("{inputs}/more", "{inputs}/b.jpg"),
    ],
    "image": [("{inputs}/a.png",), ("{inputs}/b.jpg",)],
    "depth": [("{inputs}/depth.npy",), ("{inputs}/depth16.png",)],
    "--reference": ["{inputs}/a.png", "{inputs}/b.jpg"],
    "--audio": ["{inputs}/speech.wav"],
    "--light": ["left", "30,20", "-30,10", "{inputs}/light9.txt", "{inputs}/light27.npy"],
    "--depth": ["{inputs}/depth.npy"],
    "--mask": ["{inputs}/mask.png"],
    "--known-image": ["{inputs}/b.jpg"],
    "--known-image-mask": ["{inputs}/mask_b.png"],
    "--known-depth": ["{inputs}/depth.npy"],
    "--known-depth-mask": ["{inputs}/mask.png"],
    "--exports": ["rgb", "depth_npy,uncertainty,albedo,shading,mesh"],
    "--seed": ["7"],
    "--steps": ["2"],
    "--resolution": ["32", "6"],
    "--samples": ["2"],
    "--ensemble": ["2"],
    "--batch-size": ["1"],
    "--guidance": ["1.5"],
    "--intensity": ["0.5"],
    "--ambient": ["0.3"],
    "--regeneration-strength": ["0.3"],
    "--fps": ["12.5"],
    "--seconds": ["0.1"],
    "--window": ["3"],
    "--motion-frames": ["0"],
    "--mouth-guidance": ["0", "1"],
    "--audio-encoder": ["{inputs}/no-such-encoder"],
}

# How each input is fitted to the model's square and mapped back: crossed in every combination.
FITTING = ("--match-input-size", "--fit", "--no-face-centering")
# Inputs fitted like the image, and so each paired with --fit and --no-face-centering.
GIVEN_INPUTS = (
    "inputs",
    "--depth",
    "--mask",
    "--known-image",
    "--known-image-mask",
    "--known-depth",
    "--known-depth-mask",
)
# Mapping back to the input's pixels meets every later step, so --match-input-size is paired with each.
PAIRED = {
    "--match-input-size": (
        "--ensemble",
        "--training-free",
        "--regenerate",
        "--dtype",
        "--exports",
        "--mesh-format",
        *GIVEN_INPUTS,
    ),
    "--fit": GIVEN_INPUTS,
    "--no-face-centering": GIVEN_INPUTS,
}
# Options that change a loaded model (its device, offload hooks, VAE slicing): runs with them load their own.
MODEL_STATE_OPTIONS = ("--device", "--cpu-offload", "--vae-slicing")

EXPORT_FILES = {
    "rgb": "rgb.png",
    "depth_npy": "depth.npy",
    "depth_png": "depth.png",
    "depth_color": "depth_color.png",
    "normals": "normals.png",
    "uncertainty": "uncertainty.npy",
    "albedo": "albedo.png",
    "shading": "shading.png",
    "point_cloud": "point_cloud.ply",
    "mesh": "mesh.{mesh_format}",
    "preview": "preview.png",
}
ANIMATION_FILES = {*VIDEO_FILES, "depth.npy", "reference.png", "result.json"}


def _command_parser(command: str) -> argparse.ArgumentParser:
    (subparsers,) = (action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[command]


def _varied_actions(command: str) -> list[argparse.Action]:
    return [
        action
        for action in _command_parser(command)._actions
        if not isinstance(action, argparse._HelpAction) and not set(action.option_strings) & set(HARNESS_OPTIONS)
    ]


def _name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _arguments(action: argparse.Action, value) -> tuple[str, ...]:
    if not action.option_strings:
        return value
    # "--light=-30,10": the '=' form keeps values that start with '-' from reading as options.
    return (f"{_name(action)}={value}",)


def _label(arguments: tuple[str, ...]) -> str:
    return " ".join(arguments).replace("{inputs}/", "") or "off"


Variant = tuple[str, tuple[str, ...]]  # (label, command-line arguments)


def command_options(command: str) -> tuple[dict[str, tuple[str, ...]], dict[str, list[Variant]], list[str]]:
    """From the command's parser: the default arguments, each option's variants, and the options that take a
    value but have neither choices nor sample values."""
    defaults: dict[str, tuple[str, ...]] = {}
    variants: dict[str, list[Variant]] = {}
    missing: list[str] = []
    for action in _varied_actions(command):
        name = _name(action)
        if isinstance(action, argparse.BooleanOptionalAction):  # --flag and --no-flag, each against the default
            variants[name] = [(option, (option,)) for option in action.option_strings]
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # a flag
            if name in QUIET_FLAGS:
                defaults[name] = (name,)
                variants[name] = [(f"without {name}", ())]
            else:
                variants[name] = [(name, (name,))]
        elif action.choices:
            choices = [choice for choice in action.choices if choice != action.default]
            variants[name] = [(f"{name}={choice}", (f"{name}={choice}",)) for choice in choices]
        elif name in SAMPLE_VALUES:
            arguments = [_arguments(action, value) for value in SAMPLE_VALUES[name]]
            if action.required:
                defaults[name], arguments = arguments[0], arguments[1:]
            variants[name] = [(_label(item), item) for item in arguments]
        else:
            missing.append(name)
    return defaults, {name: values for name, values in variants.items() if values}, missing


def _cases():
    for command in INFERENCE_COMMANDS:
        _, variants, _ = command_options(command)
        for case in option_cases(variants, crossed=FITTING, paired=PAIRED):
            label = " ".join(variant_label for _, (variant_label, _) in case) or "defaults"
            yield pytest.param(command, case, id=f"{command}: {label}")


def _argv(command: str, case, *, inputs: Path, model: Path, out: Path) -> list[str]:
    defaults, _, _ = command_options(command)
    arguments = defaults | {name: variant_arguments for name, (_, variant_arguments) in case}
    positionals = [item for name, items in arguments.items() if not name.startswith("-") for item in items]
    options = [item for name, items in arguments.items() if name.startswith("-") for item in items]
    argv = [command, *positionals, *options, "--model", str(model), "--out", str(out)]
    return [item.replace("{inputs}", str(inputs)) for item in argv]


def expected_results(command: str, args: argparse.Namespace, out: Path) -> dict[Path, set[str]]:
    """Each result folder a successful run writes, with the files in it (the table in docs/inference.md)."""
    if command == "animate":
        return {out: ANIMATION_FILES | ({"point_clouds"} if args.point_clouds else set())}
    exports = {name.strip() for name in args.exports.split(",") if name.strip()}
    predicts_depth = command == "depth" or (command == "relight" and args.depth is None)
    if not (predicts_depth and (args.ensemble or MODEL_ENSEMBLE_SIZE) > 1):
        exports.discard("uncertainty")
    if command != "relight":
        exports -= {"albedo", "shading"}
    files = {"result.json"} | {EXPORT_FILES[name].format(mesh_format=args.mesh_format) for name in exports}
    names = {
        "generate": lambda: [f"{Path(args.reference).stem}_{index}" for index in range(args.samples)],
        "depth": lambda: result_names(collect_images(args.inputs)),
        "render": lambda: [f"{Path(args.depth).stem}_{index}" for index in range(args.samples)],
        "relight": lambda: [Path(args.image).stem],
    }[command]()
    return {out / name: files for name in names}


def _entries(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    return write_tiny_talking_model(folder / "model"), write_inputs(folder / "inputs")


@pytest.fixture(scope="module", autouse=True)
def one_face_detector():
    """Every run's pipeline shares one face detector: starting MediaPipe costs more than a whole tiny run."""
    shared = FaceCentres()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline_module, "FaceCentres", lambda: shared)
        yield


class LoadedModels:
    """`RGBDPortraitModel.from_pretrained` with each (folder, device, dtype) loaded once: loading costs twice a
    whole tiny run, and runs that leave the model as loaded can share it."""

    def __init__(self):
        self._load = RGBDPortraitModel.from_pretrained
        self._models = {}

    def __call__(self, directory, *, device=None, dtype=torch.float32) -> RGBDPortraitModel:
        key = (str(directory), device, dtype)
        if key not in self._models:
            self._models[key] = self._load(directory, device=device, dtype=dtype)
        return self._models[key]


@pytest.fixture(scope="module")
def loaded_models():
    return LoadedModels()


def test_every_option_has_sample_values():
    for command in INFERENCE_COMMANDS:
        _, _, missing = command_options(command)
        assert not missing, f"{command}: add sample values for {', '.join(missing)} to SAMPLE_VALUES"
    known = {_name(action) for command in INFERENCE_COMMANDS for action in _varied_actions(command)}
    assert set(SAMPLE_VALUES) <= known, f"SAMPLE_VALUES names unknown options {set(SAMPLE_VALUES) - known}"
    assert set(EXPORT_FILES) == set(EXPORTS)


@pytest.mark.filterwarnings("ignore:.*no face found:UserWarning")
@pytest.mark.parametrize(("command", "case"), list(_cases()))
def test_command_writes_complete_results_or_one_line_error(
    command, case, files, loaded_models, tmp_path, capsys, monkeypatch
):
    model, inputs = files
    out = tmp_path / "out"
    argv = _argv(command, case, inputs=inputs, model=model, out=out)
    if not {name for name, _ in case} & set(MODEL_STATE_OPTIONS):
        monkeypatch.setattr(RGBDPortraitModel, "from_pretrained", loaded_models)
    status = main(argv)
    error = capsys.readouterr().err
    # Results are written under hidden temporary names beside their destination, in out/ (or beside it).
    leftovers = [name for folder in (tmp_path, out) if folder.is_dir() for name in _entries(folder) if name[0] == "."]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    if status == 0:
        expected = expected_results(command, build_parser().parse_args(argv), out)
        if command != "animate":
            assert _entries(out) == {folder.name for folder in expected}
        for folder, names in expected.items():
            assert _entries(folder) == names, folder.name
    else:
        assert status == 2
        lines = error.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"rgbd-portrait {command}: error: "), error
        assert not out.exists() or all((folder / "result.json").is_file() for folder in out.iterdir())
