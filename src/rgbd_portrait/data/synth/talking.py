"""Talking-head sequences: one identity speaking synthetic audio, with its jaw following the loudness.

Per frame (at `SEQUENCE_FPS`): the jaw opens with the mean syllabic loudness of the frame's audio window
scaled by how open the syllable's vowel is; the head drifts by a few degrees (a sum of slow sinusoids) and
nods slightly on loud syllables; the eyes blink now and then. Camera and light stay fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from rgbd_portrait.data.sample_format import AUDIO_SAMPLE_RATE, SEQUENCE_FPS
from rgbd_portrait.data.synth.parameters import Camera, Expression, Identity, Lighting, Pose, View, sample_pose
from rgbd_portrait.data.synth.speech import VOWELS, SpeechTrack, synthesize_speech

# Blink profile over consecutive frames (a blink lasts about 150–200 ms).
BLINK_PROFILE = (0.5, 1.0, 0.8, 0.35)
BLINKS_PER_SECOND = 0.35
# The jaw never opens fully in speech.
MAX_SPEECH_JAW_OPEN = 0.85


@dataclass
class TalkingSequence:
    views: list[View]
    speech: SpeechTrack
    jaw_open: np.ndarray  # (frames,) the mouth opening of each frame
    loudness: np.ndarray  # (frames,) the frame's mean loudness envelope that drove it

    def meta(self) -> dict:
        return {
            "syllables": [
                {"start_s": round(s.start, 4), "duration_s": round(s.duration, 4), "vowel": s.vowel}
                for s in self.speech.syllables
            ],
            "jaw_open": [round(float(value), 5) for value in self.jaw_open],
        }


def _vowel_openness(speech: SpeechTrack, frames: int) -> np.ndarray:
    """Per frame, the openness of the vowel sounding at the frame's centre (1 between syllables)."""
    openness = np.ones(frames)
    centres = (np.arange(frames) + 0.5) / SEQUENCE_FPS
    for syllable in speech.syllables:
        inside = (centres >= syllable.start) & (centres < syllable.start + syllable.duration)
        openness[inside] = VOWELS[syllable.vowel][1]
    return openness


def _blinks(rng: np.random.Generator, frames: int) -> np.ndarray:
    blink = np.zeros(frames)
    frame = int(rng.integers(0, max(frames // 2, 1)))
    while frame < frames:
        for offset, value in enumerate(BLINK_PROFILE):
            if frame + offset < frames:
                blink[frame + offset] = value
        frame += max(len(BLINK_PROFILE) + 2, int(rng.exponential(SEQUENCE_FPS / BLINKS_PER_SECOND)))
    return blink


def _drift(rng: np.random.Generator, time: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random motion: three slow sinusoids (0.1–0.6 Hz) of random phase."""
    motion = np.zeros_like(time)
    for _ in range(3):
        motion += np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * time + rng.uniform(0, 2 * np.pi))
    return amplitude * motion / 3.0


def talking_sequence(
    rng: np.random.Generator,
    identity: Identity,
    *,
    seconds: float,
    camera: Camera,
    lighting: Lighting,
) -> TalkingSequence:
    speech = synthesize_speech(rng, seconds=seconds, pitch_hz=identity.voice_pitch_hz, sample_rate=AUDIO_SAMPLE_RATE)
    frames = max(1, math.floor(seconds * SEQUENCE_FPS))
    loudness = speech.frame_envelope(SEQUENCE_FPS, frames)
    jaw_open = MAX_SPEECH_JAW_OPEN * np.clip(loudness, 0.0, 1.0) * _vowel_openness(speech, frames)
    blink = _blinks(rng, frames)
    time = np.arange(frames) / SEQUENCE_FPS
    base = sample_pose(rng)
    base = replace(base, yaw=0.5 * base.yaw, pitch=0.5 * base.pitch, roll=0.5 * base.roll)
    yaw = base.yaw + _drift(rng, time, 4.0)
    pitch = base.pitch + _drift(rng, time, 2.5) - 2.0 * loudness
    roll = base.roll + _drift(rng, time, 1.5)
    smile = float(rng.uniform(0.0, 0.4))
    gaze_yaw, gaze_pitch = _drift(rng, time, 5.0), _drift(rng, time, 3.0)
    views = [
        View(
            identity=identity,
            expression=Expression(
                jaw_open=float(jaw_open[index]),
                smile=smile,
                blink=float(blink[index]),
                brow_raise=float(0.3 * loudness[index]),
                gaze_yaw=float(gaze_yaw[index]),
                gaze_pitch=float(gaze_pitch[index]),
            ),
            pose=Pose(
                yaw=float(yaw[index]), pitch=float(pitch[index]), roll=float(roll[index]), body_yaw=base.body_yaw
            ),
            camera=camera,
            lighting=lighting,
        )
        for index in range(frames)
    ]
    return TalkingSequence(views=views, speech=speech, jaw_open=jaw_open.astype(np.float32), loudness=loudness)
