"""The demo's portraits and their input files: synthetic test heads, public-domain photos, synthetic speech.

A synthetic head is shown in two views of the studio: the first is the reference of every task, the second is
the one whose depth is predicted and relit, and whose exact depth is rendered back with the first view's looks.
A photo has one view, used for everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rgbd_portrait.data.image_io import load_image, write_depth_colormap, write_depth_npy, write_rgb_png
from rgbd_portrait.data.sample_format import AUDIO_SAMPLE_RATE
from rgbd_portrait.data.synth.speech import synthesize_speech
from rgbd_portrait.data.synth.studio import (
    StudioOptions,
    assign_splits,
    identity_name,
    render_samples,
    still_view,
    studio_identity,
)
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.pipelines.inputs import FaceCentres, FitMode, LoadedImage, fit_image, plan_fit

INPUTS_FOLDER = Path("inputs")
# The studio data set of configs/default.yaml (data.synthesize): its test split is held out from the shipped
# model's training, so the demo's synthetic heads are new to that model.
STUDIO = StudioOptions(identities=160, samples_per_identity=2, relights=0, seed=0)
REFERENCE_VIEW, TARGET_VIEW = 0, 1
# The synthesiser pauses up to 0.3 s before the first syllable: a clip starts this long before that syllable,
# so that a short clip is talking rather than silence.
SPEECH_LEAD_IN_SECONDS = 0.05
SPEECH_PAUSE_SECONDS = 0.3


@dataclass
class Portrait:
    """One portrait and its input files, as paths relative to the demo folder.

    `image` is the reference of every task; `target` is the image whose depth is predicted and relit. `truth_*`
    exist for synthetic heads only: the target view's exact depth in metres, its mask, the depth colourised.
    """

    name: str
    title: str
    credit: str
    synthetic: bool
    image: Path
    target: Path
    voice_pitch_hz: float
    truth_depth: Path | None = None
    truth_mask: Path | None = None
    truth_depth_color: Path | None = None
    depth_scores: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        """The portrait as JSON values."""
        return {key: value.as_posix() if isinstance(value, Path) else value for key, value in vars(self).items()}


def studio_test_identities(count: int) -> list[int]:
    """Indices of the first `count` identities of the studio data set's test split."""
    splits = assign_splits(
        STUDIO.identities, seed=STUDIO.seed, val_fraction=STUDIO.val_fraction, test_fraction=STUDIO.test_fraction
    )
    test = [index for index, split in enumerate(splits) if split == "test"]
    if count > len(test):
        raise UserInputError(f"identities: the studio's test split has {len(test)} identities, asked for {count}")
    return test[:count]


def render_synthetic(root: Path, count: int, *, side: int, device: str = "cpu") -> list[Portrait]:
    """Render two views of each of `count` test identities at `side` pixels into `root/inputs`."""
    indices = studio_test_identities(count)
    options = replace(STUDIO, size=side)
    views = []
    for index in indices:
        identity = studio_identity(STUDIO.seed, index)
        views += [still_view(options, identity, index, view) for view in (REFERENCE_VIEW, TARGET_VIEW)]
    samples = render_samples(views, device=device)
    portraits = []
    for position, index in enumerate(indices):
        name = identity_name(index)
        reference, target = samples[2 * position], samples[2 * position + 1]
        target_name = f"{name}_view{TARGET_VIEW}"
        portrait = Portrait(
            name=name,
            title=f"Synthetic head {name}",
            credit="Rendered by the synthetic studio; a test identity, held out from the default model's training.",
            synthetic=True,
            image=INPUTS_FOLDER / f"{name}.png",
            target=INPUTS_FOLDER / f"{target_name}.png",
            voice_pitch_hz=views[2 * position].identity.voice_pitch_hz,
            truth_depth=INPUTS_FOLDER / f"{target_name}_depth.npy",
            truth_mask=INPUTS_FOLDER / f"{target_name}_mask.png",
            truth_depth_color=INPUTS_FOLDER / f"{target_name}_depth_color.png",
        )
        write_rgb_png(root / portrait.image, reference.rgb)
        write_rgb_png(root / portrait.target, target.rgb)
        write_depth_npy(root / portrait.truth_depth, target.depth)
        write_rgb_png(root / portrait.truth_mask, target.mask)
        write_depth_colormap(root / portrait.truth_depth_color, target.depth, mask=target.mask, value_range=None)
        portraits.append(portrait)
    return portraits


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut().astype(np.float32) / 255.0


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@dataclass(frozen=True)
class PublicPortrait:
    """A public-domain photograph inside an installed package; `load` raises ImportError without the package."""

    name: str
    title: str
    credit: str
    package: str
    voice_pitch_hz: float
    load: Callable[[], np.ndarray]  # (H, W, 3) float32 in [0, 1]


PUBLIC_PORTRAITS = (
    PublicPortrait(
        name="astronaut",
        title="Eileen Collins",
        credit="NASA portrait of the astronaut (public domain), read from scikit-image's sample data.",
        package="scikit-image",
        voice_pitch_hz=200.0,
        load=_astronaut,
    ),
    PublicPortrait(
        name="grace_hopper",
        title="Grace Hopper",
        credit="U.S. Navy portrait (public domain), read from matplotlib's sample data.",
        package="matplotlib",
        voice_pitch_hz=190.0,
        load=_grace_hopper,
    ),
)


def prepare_photos(
    root: Path, *, side: int, fit: FitMode, face_centres: FaceCentres | None
) -> tuple[list[Portrait], list[str]]:
    """Cut each available public portrait to a `side` square around its face, framed as `fit` (the model's),
    into `root/inputs`; returns the portraits and a note for each photo whose package is not installed."""
    portraits, notes = [], []
    for photo in PUBLIC_PORTRAITS:
        try:
            pixels = photo.load()
        except ImportError:
            notes.append(f"{photo.title} ({photo.name}) is left out: {photo.package} is not installed.")
            continue
        square_fit = plan_fit(pixels, side, mode=fit, face_centres=face_centres)
        square = fit_image(LoadedImage(source=photo.name, pixels=pixels), square_fit).permute(1, 2, 0).numpy()
        image = INPUTS_FOLDER / f"{photo.name}.png"
        write_rgb_png(root / image, square)
        portraits.append(
            Portrait(
                name=photo.name,
                title=photo.title,
                credit=photo.credit,
                synthetic=False,
                image=image,
                target=image,
                voice_pitch_hz=photo.voice_pitch_hz,
            )
        )
    return portraits, notes


def speech_clip(seconds: float, *, pitch_hz: float, seed: int) -> np.ndarray:
    """`seconds` of the studio's synthetic speech at `AUDIO_SAMPLE_RATE`, from just before the first syllable."""
    rng = np.random.default_rng(seed)
    speech = synthesize_speech(
        rng, seconds=seconds + SPEECH_PAUSE_SECONDS, pitch_hz=pitch_hz, sample_rate=AUDIO_SAMPLE_RATE
    )
    first = speech.syllables[0].start if speech.syllables else 0.0
    start = round(max(first - SPEECH_LEAD_IN_SECONDS, 0.0) * AUDIO_SAMPLE_RATE)
    return speech.audio[start : start + round(seconds * AUDIO_SAMPLE_RATE)]
