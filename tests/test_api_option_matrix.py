"""Every task of the Python API across its keyword options, generated from its signature, called with autograd
on, as a user's script calls it (no `torch.no_grad()` around it).

Each keyword runs alone on top of the defaults (the other value of a flag, every other value of a `Literal`,
or each sample value), and the keywords that interact run in pairs (see `option_cases`). The defaults give two
inputs of different sizes, so every case is also a batch. Every call must either return a complete output or
raise a one-line `UserInputError`; the model must never run with autograd on, and nothing returned may require
grad. A keyword added to a task is in the matrix at once: flags and `Literal`s need nothing, and any other
fails `test_every_keyword_has_sample_values` until it has sample values here.
"""

import inspect
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from option_matrix_support import (
    IMAGE_A_SIZE,
    IMAGE_B_SIZE,
    SIDE,
    depth_ramp,
    option_cases,
    write_inputs,
    write_tiny_talking_model,
)
from rgbd_portrait.data.audio import load_audio
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.relighting import DirectionalLight
from rgbd_portrait.pipelines import RGBDPortraitOutput, RGBDPortraitPipeline, RGBDRelightingOutput
from rgbd_portrait.pipelines.animate import RGBDAnimationOutput
from rgbd_portrait.pipelines.animate import animate as animate_function

TASKS = ("generate", "predict_depth", "render", "relight", "animate")
# The pipeline's `animate` takes **options and hands them to this function's keywords.
SIGNATURE_SOURCES = {"animate": animate_function}
# The argument whose count is the number of inputs (a call's results are inputs × samples).
MAIN_INPUT = {"generate": "reference", "predict_depth": "image", "render": "depth", "relight": "image"}
OUTPUT_CLASSES = {"relight": RGBDRelightingOutput, "animate": RGBDAnimationOutput}
LATENT_SIDE = SIDE // 2  # the tiny model's VAE halves the resolution
LATENT_CHANNELS = 8  # RGB and depth latents of 4 channels each


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def _grad_image(folder: Path) -> torch.Tensor:
    return torch.from_numpy(_pixels(folder / "a.png")).permute(2, 0, 1).requires_grad_()


def _two_images(folder: Path) -> list:
    return [folder / "a.png", Image.open(folder / "b.jpg")]


def _latents(count: int):
    return lambda folder: torch.randn(count, LATENT_CHANNELS, LATENT_SIDE, LATENT_SIDE, requires_grad=True)


# (label, the value made from the folder of input files); every case makes its own, so no call sees another's.
IMAGES = [
    ("a.png and PIL b.jpg", _two_images),
    ("path", lambda folder: str(folder / "a.png")),
    ("float array", lambda folder: _pixels(folder / "a.png")),
    ("greyscale uint8 array", lambda folder: np.asarray(Image.open(folder / "a.png").convert("L"))),
    ("tensor requiring grad", _grad_image),
    ("batched tensor", lambda folder: torch.rand(2, 3, *IMAGE_A_SIZE)),
]
TWO_DEPTHS = ("depth.npy and an array", lambda folder: [folder / "depth.npy", depth_ramp(*IMAGE_B_SIZE)])
TWO_MASKS = (
    "mask.png and a bool array",
    lambda folder: [folder / "mask.png", np.asarray(Image.open(folder / "mask_b.png")) > 0],
)
# By keyword, or by (task, keyword) where a task reads it differently. A required argument's first value is the
# one in the defaults.
SAMPLE_VALUES = {
    ("predict_depth", "image"): IMAGES,
    ("relight", "image"): IMAGES,
    ("generate", "reference"): [("a.png and PIL b.jpg", _two_images), ("path", lambda folder: folder / "a.png")],
    ("predict_depth", "reference"): [("one shared", lambda folder: folder / "b.jpg"), ("one per image", _two_images)],
    ("render", "reference"): [
        ("one shared", lambda folder: folder / "a.png"),
        ("one per depth map", lambda folder: [Image.open(folder / "b.jpg"), folder / "a.png"]),
    ],
    ("animate", "reference"): [
        ("path", lambda folder: folder / "a.png"),
        ("PIL", lambda folder: Image.open(folder / "b.jpg")),
        ("a.png and PIL b.jpg", _two_images),
    ],
    ("render", "depth"): [
        TWO_DEPTHS,
        ("16-bit PNG", lambda folder: folder / "depth16.png"),
        ("tensor requiring grad", lambda folder: torch.from_numpy(depth_ramp(*IMAGE_A_SIZE)).requires_grad_()),
    ],
    ("relight", "depth"): [TWO_DEPTHS],
    ("generate", "latents"): [("tensor requiring grad", _latents(2))],
    ("predict_depth", "latents"): [("tensor requiring grad", _latents(2))],
    ("render", "latents"): [("tensor requiring grad", _latents(2))],
    ("animate", "generator"): [("one", lambda folder: torch.Generator().manual_seed(1))],
    ("animate", "mouth_only"): [("True", lambda folder: True), ("False", lambda folder: False)],
    ("animate", "mouth_guidance"): [("0", lambda folder: 0.0), ("1, the model has no guide", lambda folder: 1.0)],
    ("predict_depth", "self_reference"): [("True", lambda folder: True), ("False", lambda folder: False)],
    "light": [
        ("left", lambda folder: "left"),
        ("lamp at azimuth 30, elevation 20", lambda folder: DirectionalLight.from_angles(30.0, 20.0)),
        ("9 SH coefficients", lambda folder: torch.tensor([0.8] + [0.1] * 8)),
        ("9x3 SH coefficients", lambda folder: torch.full((9, 3), 0.1)),
    ],
    "audio": [
        ("path", lambda folder: folder / "speech.wav"),
        ("AudioTrack", lambda folder: load_audio(folder / "speech.wav")),
    ],
    "mask": [TWO_MASKS],
    "known_image": [("PIL", lambda folder: Image.open(folder / "b.jpg"))],
    "known_image_mask": [("path", lambda folder: folder / "mask_b.png")],
    "known_depth": [("array", lambda folder: depth_ramp(*IMAGE_A_SIZE))],
    "known_depth_mask": [("path", lambda folder: folder / "mask.png")],
    "original_light": [("front", lambda folder: "front")],
    "generator": [("one per input", lambda folder: [torch.Generator().manual_seed(seed) for seed in (1, 2)])],
    "num_inference_steps": [("2", lambda folder: 2)],
    "num_samples": [("2", lambda folder: 2)],
    "ensemble_size": [("2", lambda folder: 2)],
    "guidance_scale": [("1.5", lambda folder: 1.5)],
    "resolution": [("32", lambda folder: 32), ("6", lambda folder: 6)],
    "ambient": [("0.3", lambda folder: 0.3)],
    "regeneration_strength": [("0.3", lambda folder: 0.3)],
    "fit": [("pad", lambda folder: "pad")],
    "fps": [("12.5", lambda folder: 12.5)],
    "seconds": [("0.1", lambda folder: 0.1)],
    "window_frames": [("3", lambda folder: 3)],
    "motion_frames": [("0", lambda folder: 0)],
    "audio_encoder": [("missing folder", lambda folder: folder / "no-such-encoder")],
}

# How each input is fitted to the model's square and mapped back: crossed in every combination.
FITTING = ("match_input_size", "fit", "center_on_face")
GIVEN_INPUTS = ("depth", "mask", "known_image", "known_image_mask", "known_depth", "known_depth_mask")
# Mapping back to the inputs' pixels meets every later step, and output types format results of unequal sizes.
PAIRED = {
    "match_input_size": ("ensemble_size", "training_free", "regenerate", "output_type", *GIVEN_INPUTS),
    "fit": GIVEN_INPUTS,
    "center_on_face": GIVEN_INPUTS,
}

Variant = tuple[str, typing.Callable[[Path], typing.Any]]


def _signature_parameters(task: str) -> list[inspect.Parameter]:
    function = SIGNATURE_SOURCES.get(task, getattr(RGBDPortraitPipeline, task))
    return list(inspect.signature(function).parameters.values())[1:]  # after the pipeline (self)


def _literal_values(task: str, name: str) -> tuple | None:
    function = SIGNATURE_SOURCES.get(task, getattr(RGBDPortraitPipeline, task))
    hint = typing.get_type_hints(function).get(name)
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def task_options(task: str) -> tuple[dict[str, Variant], dict[str, list[Variant]], list[str]]:
    """From the task's signature: the required arguments' default values, each keyword's variants, and the
    keywords with neither a flag, a `Literal` nor sample values."""
    defaults: dict[str, Variant] = {}
    variants: dict[str, list[Variant]] = {}
    missing: list[str] = []
    for parameter in _signature_parameters(task):
        name, default = parameter.name, parameter.default
        samples = SAMPLE_VALUES.get((task, name), SAMPLE_VALUES.get(name))
        literals = _literal_values(task, name)
        if isinstance(default, bool):
            variants[name] = [(str(not default), lambda folder, value=not default: value)]
        elif literals is not None:
            variants[name] = [(value, lambda folder, value=value: value) for value in literals if value != default]
        elif samples is None:
            missing.append(name)
        elif default is inspect.Parameter.empty:
            defaults[name] = samples[0]
            variants[name] = list(samples[1:])
        else:
            variants[name] = list(samples)
    return defaults, {name: values for name, values in variants.items() if values}, missing


def _cases():
    for task in TASKS:
        _, variants, _ = task_options(task)
        for case in option_cases(variants, crossed=FITTING, paired=PAIRED):
            label = " ".join(f"{name}={variant_label}" for name, (variant_label, _) in case) or "defaults"
            yield pytest.param(task, case, id=f"{task}: {label}")


def _count(value) -> int:
    if isinstance(value, list | tuple):
        return len(value)
    return value.shape[0] if isinstance(value, torch.Tensor) and value.ndim == 4 else 1


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [tensor for item in value for tensor in _tensors(item)] if isinstance(value, list | tuple) else []


def check_complete(task: str, output, arguments: dict) -> None:
    """All the fields a call of `task` with `arguments` fills, one entry per result, none requiring grad."""
    for name, value in vars(output).items():
        assert not any(tensor.requires_grad for tensor in _tensors(value)), f"{name} requires grad"
    if task == "animate":
        assert len(output.rgb) == len(output.depth) > 0
        return
    count = _count(arguments[MAIN_INPUT[task]]) * arguments.get("num_samples", 1)
    filled = ["rgb", "depth", "normals", "mask"] + (["albedo", "shading"] if task == "relight" else [])
    predicts_depth = task == "predict_depth" or (task == "relight" and "depth" not in arguments)
    ensemble = predicts_depth and arguments.get("ensemble_size", 1) > 1
    for name in filled + (["uncertainty"] if ensemble else []):
        assert len(getattr(output, name)) == count, name
    if not ensemble:
        assert output.uncertainty is None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipeline = RGBDPortraitPipeline.from_pretrained(write_tiny_talking_model(tmp_path_factory.mktemp("model") / "m"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def grad_modes(pipe):
    """Whether autograd was on at each run of a model component."""
    modes = []
    components = (pipe.model.backbone, pipe.model.reference_net, pipe.model.vae, pipe.model.context)
    handles = [part.register_forward_pre_hook(lambda *_: modes.append(torch.is_grad_enabled())) for part in components]
    yield modes
    for handle in handles:
        handle.remove()


def test_every_keyword_has_sample_values():
    for task in TASKS:
        _, _, missing = task_options(task)
        assert not missing, f"{task}: add sample values for {', '.join(missing)} to SAMPLE_VALUES"
    known = {(task, parameter.name) for task in TASKS for parameter in _signature_parameters(task)}
    names = {name for _, name in known}
    stale = [key for key in SAMPLE_VALUES if key not in (known if isinstance(key, tuple) else names)]
    assert not stale, f"SAMPLE_VALUES names unknown keywords {stale}"


@pytest.mark.filterwarnings("ignore:.*no face found:UserWarning")
@pytest.mark.parametrize(("task", "case"), list(_cases()))
def test_task_returns_complete_output_or_one_line_error_with_autograd_on(task, case, pipe, inputs, grad_modes):
    defaults, _, _ = task_options(task)
    arguments = {name: make(inputs) for name, (_, make) in defaults.items()}
    arguments |= {name: make(inputs) for name, (_, make) in case}
    assert torch.is_grad_enabled()
    try:
        output = getattr(pipe, task)(**arguments)
    except UserInputError as error:
        assert "\n" not in str(error)
        output = None
    assert not any(grad_modes), "a model component ran with autograd on"
    if output is None:
        return
    if arguments.get("return_dict") is False:
        output = OUTPUT_CLASSES.get(task, RGBDPortraitOutput)(*output)
    check_complete(task, output, arguments)
