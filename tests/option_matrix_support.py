"""Shared by the option-matrix tests (CLI and Python API): a tiny talking-head model folder, small input files,
and the rule that turns each option's sample values into the cases to run."""

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image

from rgbd_portrait.data.synth.speech import synthesize_speech
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.testing import add_tiny_motion_layers, tiny_model_section

SIDE = 16  # the tiny model's resolution
# Input sizes differ from each other and, but for c.png (exactly the model's square), are neither square nor
# the model's, so every fit and every mapping back to the input's pixels does real work.
IMAGE_A_SIZE = (20, 30)  # (height, width) of a.png, depth.npy, depth16.png and mask.png
IMAGE_B_SIZE = (24, 18)  # of b.jpg and mask_b.png
FOLDER_IMAGE_SIZES = {"c.png": (16, 16), "d.png": (30, 22)}  # the images of the folder more/
SPEECH_SECONDS = 0.24  # 6 frames at 25 fps: two windows of the tiny model's motion layers


def write_tiny_talking_model(folder: Path) -> Path:
    """A random model with motion layers, one denoising step and one depth prediction by default, so every
    command, animate included, runs on it in a fraction of a second."""
    torch.manual_seed(0)
    model = RGBDPortraitModel.from_config(
        tiny_model_section(resolution=SIDE, default_steps=1, depth_steps=1, ensemble_size=1)
    )
    add_tiny_motion_layers(model)
    return model.save_pretrained(folder)


def _ellipse_mask(height: int, width: int) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    return ((rows - height / 2) / (0.4 * height)) ** 2 + ((columns - width / 2) / (0.4 * width)) ** 2 < 1.0


def depth_ramp(height: int, width: int) -> np.ndarray:
    """Metric-like depth, larger = farther, nearer at the top left."""
    rows, columns = np.mgrid[0:height, 0:width]
    return (1.0 + 0.02 * rows + 0.01 * columns).astype(np.float32)


def write_inputs(folder: Path) -> Path:
    """Every file the sample values name (see the matrix tests): images, depth maps, masks, lights, audio."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "more").mkdir()
    images = {"a.png": IMAGE_A_SIZE, "b.jpg": IMAGE_B_SIZE} | {f"more/{n}": s for n, s in FOLDER_IMAGE_SIZES.items()}
    for name, (height, width) in images.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    depth = depth_ramp(*IMAGE_A_SIZE)
    np.save(folder / "depth.npy", depth)
    Image.fromarray(np.round(depth / depth.max() * 65535).astype(np.uint16)).save(folder / "depth16.png")
    for name, size in (("mask.png", IMAGE_A_SIZE), ("mask_b.png", IMAGE_B_SIZE)):
        Image.fromarray(_ellipse_mask(*size).astype(np.uint8) * 255).save(folder / name)
    (folder / "light9.txt").write_text(", ".join(["0.8"] + ["0.1"] * 8))
    np.save(folder / "light27.npy", np.full((9, 3), 0.1, dtype=np.float32))
    # A short synthetic utterance starts and ends in silence: keep the voiced middle, so the mouth has sound to follow.
    speech = synthesize_speech(np.random.default_rng(0), seconds=0.56, pitch_hz=130.0)
    start = round(0.2 * speech.sample_rate)
    voiced = speech.audio[start : start + round(SPEECH_SECONDS * speech.sample_rate)]
    soundfile.write(folder / "speech.wav", voiced, speech.sample_rate)
    return folder


Override = tuple[str, Any]  # (option, one of its sample values)


def option_cases(
    values: dict[str, Sequence[Any]], *, crossed: Sequence[str], paired: dict[str, Sequence[str]]
) -> list[tuple[Override, ...]]:
    """The cases to run, each a tuple of overrides of the defaults.

    `values` maps every option to its sample values. The cases are: the defaults; each option at each of its
    values alone; every combination of the `crossed` options; and each option of `paired` with each option it
    names (the options it interacts with). Options missing from `values` are left out.
    """

    def combined(options: Sequence[str]) -> list[tuple[Override, ...]]:
        return list(itertools.product(*[[(option, value) for value in values[option]] for option in options]))

    cases: list[tuple[Override, ...]] = [()]
    cases += [((option, value),) for option, option_values in values.items() for value in option_values]
    present = [option for option in crossed if option in values]
    done = set()
    for size in range(2, len(present) + 1):
        for options in itertools.combinations(present, size):
            cases += combined(options)
            done.add(frozenset(options))
    for option, partners in paired.items():
        for partner in partners:
            pair = frozenset((option, partner))
            if option in values and partner in values and len(pair) == 2 and pair not in done:
                cases += combined((option, partner))
                done.add(pair)
    return cases
