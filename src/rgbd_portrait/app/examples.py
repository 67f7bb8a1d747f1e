"""The app's example inputs, written into its folder at start: the public-domain portraits that ship inside
installed packages (as the demo uses them, but whole, so the app fits them itself) and a synthetic speech clip."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile

from rgbd_portrait.data.image_io import write_rgb_png
from rgbd_portrait.data.sample_format import AUDIO_SAMPLE_RATE
from rgbd_portrait.demo.portraits import PUBLIC_PORTRAITS, speech_clip

SPEECH_SECONDS = 2.0


@dataclass(frozen=True)
class AppExamples:
    portraits: list[tuple[Path, str]]  # (image file, caption) for each photo whose package is installed
    speech: Path


def write_examples(folder: Path) -> AppExamples:
    folder.mkdir(parents=True, exist_ok=True)
    portraits = []
    for photo in PUBLIC_PORTRAITS:
        try:
            pixels = photo.load()
        except ImportError:  # e.g. scikit-image (the astronaut) is not installed
            continue
        portraits.append((write_rgb_png(folder / f"{photo.name}.png", pixels), photo.title))
    speech = folder / "speech.wav"
    pitch = PUBLIC_PORTRAITS[0].voice_pitch_hz
    soundfile.write(speech, speech_clip(SPEECH_SECONDS, pitch_hz=pitch, seed=0), AUDIO_SAMPLE_RATE, subtype="PCM_16")
    return AppExamples(portraits=portraits, speech=speech)
