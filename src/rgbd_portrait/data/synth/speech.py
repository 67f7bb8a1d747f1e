"""Speech-like audio, synthesised offline: voiced syllables whose loudness drives the talking head's jaw.

Each syllable is a harmonic source (a glottal-like 1/k spectrum at a gently moving pitch) shaped by the
formants of a vowel (Gaussian resonances applied to each harmonic's amplitude), under a syllabic loudness
envelope; a faint noise burst before the vowel stands in for the consonant. Syllables come in phrases
separated by pauses. `SpeechTrack.frame_envelope` is the loudness per video frame that opens the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (F1, F2, F3) in Hz of five vowels, and how wide each opens the mouth relative to the loudest.
VOWELS = {
    "a": ((730.0, 1090.0, 2440.0), 1.0),
    "e": ((530.0, 1840.0, 2480.0), 0.8),
    "i": ((300.0, 2290.0, 3010.0), 0.6),
    "o": ((570.0, 840.0, 2410.0), 0.85),
    "u": ((320.0, 870.0, 2240.0), 0.65),
}
FORMANT_BANDWIDTHS = (90.0, 120.0, 170.0)
FORMANT_GAINS = (1.0, 0.55, 0.3)
HIGHEST_HARMONIC_HZ = 5000.0
CONSONANT_SECONDS = 0.035
PEAK_LEVEL = 0.8


@dataclass(frozen=True)
class Syllable:
    start: float  # seconds
    duration: float
    vowel: str
    loudness: float  # peak amplitude of the envelope in (0, 1]


@dataclass
class SpeechTrack:
    audio: np.ndarray  # (N,) float32 in [-1, 1]
    sample_rate: int
    syllables: list[Syllable]
    envelope: np.ndarray  # (N,) the syllabic loudness envelope that shaped the voice, in [0, 1]

    def frame_envelope(self, fps: float, frames: int) -> np.ndarray:
        """Mean loudness envelope over each video frame's time window (frames,)."""
        edges = np.round(np.arange(frames + 1) * self.sample_rate / fps).astype(int)
        edges = np.clip(edges, 0, len(self.envelope))
        sums = np.concatenate([[0.0], np.cumsum(self.envelope, dtype=np.float64)])
        counts = np.maximum(edges[1:] - edges[:-1], 1)
        return ((sums[edges[1:]] - sums[edges[:-1]]) / counts).astype(np.float32)


def plan_syllables(rng: np.random.Generator, seconds: float) -> list[Syllable]:
    """Phrases of 3–7 syllables (0.12–0.28 s each), with short gaps inside and pauses between phrases."""
    syllables: list[Syllable] = []
    time = float(rng.uniform(0.1, 0.3))
    while True:
        for _ in range(int(rng.integers(3, 8))):
            duration = float(rng.uniform(0.12, 0.28))
            if time + duration > seconds - 0.05:
                return syllables
            vowel = str(rng.choice(list(VOWELS)))
            syllables.append(Syllable(time, duration, vowel, float(rng.uniform(0.55, 1.0))))
            time += duration + float(rng.uniform(0.02, 0.08))
        time += float(rng.uniform(0.25, 0.6))


def synthesize_speech(
    rng: np.random.Generator, *, seconds: float, pitch_hz: float, sample_rate: int = 16000
) -> SpeechTrack:
    """`seconds` of speech-like audio at a voice pitch around `pitch_hz`."""
    count = int(round(seconds * sample_rate))
    time = np.arange(count) / sample_rate
    syllables = plan_syllables(rng, seconds)

    envelope = np.zeros(count)
    formants = np.zeros((count, 3))
    noise_envelope = np.zeros(count)
    for syllable in syllables:
        first, last = (
            int(syllable.start * sample_rate),
            min(int((syllable.start + syllable.duration) * sample_rate), count),
        )
        phase = np.clip((time[first:last] - syllable.start) / syllable.duration, 0.0, 1.0)
        # Fast rise, slower fall: the shape of a spoken syllable's loudness.
        envelope[first:last] = syllable.loudness * np.clip(np.sin(np.pi * phase**0.8), 0.0, 1.0) ** 1.5
        formants[first:last] = VOWELS[syllable.vowel][0]
        burst = max(first - int(CONSONANT_SECONDS * sample_rate), 0)
        noise_envelope[burst:first] = 0.06 * syllable.loudness * np.hanning(first - burst)

    # Pitch: the speaker's voice with a slow intonation wave and a declination over the clip.
    wave = 1.0 + 0.07 * np.sin(2 * np.pi * rng.uniform(0.4, 0.9) * time + rng.uniform(0, 2 * np.pi))
    pitch = pitch_hz * wave * (1.0 - 0.08 * time / max(seconds, 1e-6))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = np.zeros(count)
    for harmonic in range(1, int(HIGHEST_HARMONIC_HZ / pitch.min()) + 1):
        frequency = harmonic * pitch
        gain = sum(
            weight * np.exp(-0.5 * ((frequency - formants[:, index]) / FORMANT_BANDWIDTHS[index]) ** 2)
            for index, weight in enumerate(FORMANT_GAINS)
        )
        audible = frequency < min(HIGHEST_HARMONIC_HZ, 0.45 * sample_rate)
        voice += audible * (0.05 + gain) / harmonic * np.sin(harmonic * phase)
    # Vowels differ in how much energy their formants pass; level each syllable so that its loudness is
    # the envelope's alone.
    for syllable in syllables:
        first, last = (
            int(syllable.start * sample_rate),
            min(int((syllable.start + syllable.duration) * sample_rate), count),
        )
        voice[first:last] /= max(np.sqrt(np.mean(voice[first:last] ** 2)), 1e-9)
    noise = rng.standard_normal(count)
    noise = np.diff(noise, prepend=0.0)  # a crude high-pass: consonant noise is hissy
    audio = envelope * voice + noise_envelope * noise
    audio *= PEAK_LEVEL / max(np.abs(audio).max(), 1e-9)
    return SpeechTrack(audio.astype(np.float32), sample_rate, syllables, envelope.astype(np.float32))
