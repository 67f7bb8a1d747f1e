"""Speech audio for animation: decoding any file through ffmpeg, and features per video frame.

    track = load_audio("speech.mp3", max_seconds=10)          # mono float32 at 16 kHz, any input format
    features = LogMelFeatures(n_mels=40).frame_features(track.samples, track.sample_rate, fps=25, frame_count=250)
    windows = audio_windows(features, range(250), radius=2)     # (250, 5, 40): each frame with ± 2 neighbours

Decoding runs the ffmpeg binary shipped by imageio-ffmpeg (WAV, MP3, FLAC, the audio of a video, any sample
rate or channel count); the samples are down-mixed to mono and resampled by ffmpeg.

Features describe frame `i` by the audio it is shown over, `[i / fps, (i + 1) / fps)`:

* `LogMelFeatures` (default, no weights): the waveform is peak-normalised (so the input's gain does not matter),
  its mel power spectrum (10 ms hop) is averaged over each frame's span and mapped to [0, 1] as decibels in
  [-80, 0] relative to a full-scale sine. Silence is 0.
* `Wav2Vec2Features`: the hidden states of a transformers wav2vec2-like speech encoder read from a LOCAL folder,
  averaged over each frame's span.

Silence is zero for every feature type (log-mel: -80 dB and below; encoders: by convention), and so are frames
beyond the ends of the audio (`audio_windows`).
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import torch

from rgbd_portrait.data.sample_format import AUDIO_SAMPLE_RATE
from rgbd_portrait.errors import UserInputError

# A track whose peak stays below this (-80 dBFS) carries no speech: its features are silence.
SILENCE_PEAK = 1e-4
FEATURE_TYPES = ("log_mel", "wav2vec2")
# Seconds of audio a speech encoder reads at once, so memory does not grow with the track's length.
ENCODER_CHUNK_SECONDS = 20.0


@dataclass
class AudioTrack:
    """Mono audio: `samples` (N,) float32 in [-1, 1] at `sample_rate`; `source` names it in messages."""

    samples: np.ndarray
    sample_rate: int
    source: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def is_silent(self) -> bool:
        return not len(self.samples) or float(np.abs(self.samples).max()) < SILENCE_PEAK

    def frame_count(self, fps: float) -> int:
        """Video frames that fit in the track at `fps` (a frame needs its whole time span)."""
        return math.floor(self.seconds * fps + 1e-9)


def _ffmpeg_message(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown ffmpeg error"


def load_audio(
    path: str | os.PathLike, *, sample_rate: int = AUDIO_SAMPLE_RATE, max_seconds: float | None = None
) -> AudioTrack:
    """Decode the first audio stream of `path` to mono float32 at `sample_rate` (at most `max_seconds`)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: audio file not found")
    if max_seconds is not None and not max_seconds > 0:
        raise UserInputError(f"max_seconds: must be positive, got {max_seconds}")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:a:0"]
    if max_seconds is not None:
        command += ["-t", f"{max_seconds:.6f}"]
    command += ["-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-c:a", "pcm_f32le", "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        message = _ffmpeg_message(result.stderr.decode(errors="replace"))
        raise UserInputError(f"{path}: cannot decode audio ({message})")
    samples = np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)
    if not len(samples):
        raise UserInputError(f"{path}: the audio stream has no samples (zero length)")
    return AudioTrack(np.clip(samples, -1.0, 1.0), sample_rate, str(path))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of mono audio (for sequence audio stored at another rate)."""
    if from_rate == to_rate:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    divisor = math.gcd(from_rate, to_rate)
    return resample_poly(samples, to_rate // divisor, from_rate // divisor).astype(np.float32)


def _frame_means(values: np.ndarray, column_rate: float, fps: float, frame_count: int) -> np.ndarray:
    """Mean of the columns (T, D) sampled at `column_rate` Hz over each frame's span; the nearest column when a
    span holds none (fps above the column rate); silence (zeros) past the end."""
    sums = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0, dtype=np.float64)])
    edges = np.ceil(np.arange(frame_count + 1) * column_rate / fps - 1e-9).astype(np.int64)
    edges = np.clip(edges, 0, len(values))
    starts, ends = edges[:-1], edges[1:]
    counts = ends - starts
    means = (sums[ends] - sums[starts]) / np.maximum(counts, 1)[:, None]
    empty = counts == 0
    if empty.any():
        nearest = np.round((np.arange(frame_count)[empty] + 0.5) * column_rate / fps).astype(np.int64)
        inside = nearest < len(values)
        filled = np.zeros((int(empty.sum()), values.shape[1]))
        filled[inside] = values[nearest[inside]]
        means[empty] = filled
    return means.astype(np.float32)


def _check_frames(sample_rate: int, fps: float, frame_count: int) -> None:
    if not fps > 0:
        raise UserInputError(f"fps: must be positive, got {fps}")
    if frame_count < 0:
        raise ValueError(f"frame_count must not be negative, got {frame_count}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")


def mel_filterbank(*, n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular filters (n_mels, n_fft // 2 + 1) equally spaced on the HTK mel scale, peaks of 1."""
    to_mel = lambda hertz: 2595.0 * np.log10(1.0 + hertz / 700.0)
    to_hertz = lambda mel: 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    corners = to_hertz(np.linspace(0.0, to_mel(sample_rate / 2.0), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    lower, centre, upper = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


class LogMelFeatures:
    """Log-mel energy per video frame, in [0, 1] (see the module docstring). Needs no weights."""

    kind = "log_mel"
    hop_seconds = 0.010
    window_seconds = 0.025
    n_fft = 512
    dynamic_range_db = 80.0

    def __init__(self, *, n_mels: int = 40):
        if n_mels <= 0:
            raise UserInputError(f"n_mels: must be positive, got {n_mels}")
        self.n_mels = n_mels

    @property
    def dim(self) -> int:
        return self.n_mels

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "n_mels": self.n_mels}

    def frame_features(self, samples: np.ndarray, sample_rate: int, *, fps: float, frame_count: int) -> np.ndarray:
        """(frame_count, n_mels) float32 features of mono `samples`."""
        _check_frames(sample_rate, fps, frame_count)
        samples = np.asarray(samples, dtype=np.float32)
        peak = float(np.abs(samples).max()) if len(samples) else 0.0
        if peak < SILENCE_PEAK:
            return np.zeros((frame_count, self.n_mels), dtype=np.float32)
        hop = max(1, round(self.hop_seconds * sample_rate))
        window_length = min(self.n_fft, round(self.window_seconds * sample_rate))
        window = torch.hann_window(window_length, dtype=torch.float64)
        spectrum = torch.stft(
            torch.from_numpy(samples / peak).double(),
            n_fft=self.n_fft,
            hop_length=hop,
            win_length=window_length,
            window=window,
            center=True,
            return_complex=True,
        )
        power = spectrum.abs().square().numpy()  # (n_fft // 2 + 1, columns); column c is centred at c·hop
        mel_power = mel_filterbank(n_mels=self.n_mels, n_fft=self.n_fft, sample_rate=sample_rate) @ power
        per_frame = _frame_means(mel_power.T, sample_rate / hop, fps, frame_count)
        # A full-scale sine on a bin centre has power (Σ window / 2)²: that is 0 dB.
        full_scale = (float(window.sum()) / 2.0) ** 2
        decibels = 10.0 * np.log10(np.maximum(per_frame, 1e-12) / full_scale)
        return np.clip(1.0 + decibels / self.dynamic_range_db, 0.0, 1.0).astype(np.float32)


class Wav2Vec2Features:
    """Hidden states of a local transformers speech encoder (wav2vec2, HuBERT, WavLM, ...) per video frame."""

    kind = "wav2vec2"

    def __init__(self, path: str | os.PathLike, *, device: torch.device | str = "cpu"):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserInputError(f"{path}: not a transformers speech-encoder folder (no config.json)")
        try:
            from transformers import AutoFeatureExtractor, AutoModel
        except ImportError as error:
            raise UserInputError(
                "the wav2vec2 audio features need transformers: pip install 'rgbd-portrait[transformers]'"
            ) from error
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
            self.encoder = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserInputError(f"{path}: cannot load the speech encoder ({first_line})") from error
        self.encoder.requires_grad_(False)
        self.path = path
        self.device = torch.device(device)
        self.sample_rate = int(self.extractor.sampling_rate)
        # Input samples per output state: the product of the convolutional feature encoder's strides.
        self.stride = int(np.prod(self.encoder.config.conv_stride))

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "dim": self.dim}

    @torch.no_grad()
    def frame_features(self, samples: np.ndarray, sample_rate: int, *, fps: float, frame_count: int) -> np.ndarray:
        _check_frames(sample_rate, fps, frame_count)
        samples = resample(np.asarray(samples, dtype=np.float32), sample_rate, self.sample_rate)
        chunk = int(ENCODER_CHUNK_SECONDS * self.sample_rate) // self.stride * self.stride
        states = []
        for start in range(0, len(samples), chunk):
            piece = samples[start : start + chunk]
            if len(piece) < self.stride:
                break
            inputs = self.extractor(piece, sampling_rate=self.sample_rate, return_tensors="pt")
            values = inputs["input_values"].to(self.device, self.encoder.dtype)
            states.append(self.encoder(values).last_hidden_state[0].float().cpu().numpy())
        hidden = np.concatenate(states) if states else np.zeros((0, self.dim), dtype=np.float32)
        return _frame_means(hidden, self.sample_rate / self.stride, fps, frame_count)


AudioFeatures = LogMelFeatures | Wav2Vec2Features


def make_audio_features(
    spec: dict[str, Any], *, encoder_path: str | os.PathLike | None = None, device: torch.device | str = "cpu"
) -> AudioFeatures:
    """The feature extractor a model's `audio_features` spec describes; a speech encoder needs its local folder."""
    kind = spec.get("type")
    if kind == LogMelFeatures.kind:
        return LogMelFeatures(n_mels=int(spec["n_mels"]))
    if kind == Wav2Vec2Features.kind:
        if encoder_path is None:
            raise UserInputError("the model reads speech-encoder features; give the encoder's local folder")
        features = Wav2Vec2Features(encoder_path, device=device)
        if features.dim != spec.get("dim"):
            raise UserInputError(
                f"{encoder_path}: the encoder gives {features.dim}-dim features, the model reads {spec.get('dim')}"
            )
        return features
    raise UserInputError(f"audio features type {kind!r}: expected one of {', '.join(FEATURE_TYPES)}")


def audio_windows(frame_features: np.ndarray, frames: Sequence[int], *, radius: int) -> np.ndarray:
    """(len(frames), 2·radius + 1, D): the features of each listed frame and its ± `radius` neighbours, in time
    order; neighbours outside [0, T) are silence (zeros)."""
    count, dim = frame_features.shape
    frames = np.asarray(list(frames), dtype=np.int64)
    neighbours = frames[:, None] + np.arange(-radius, radius + 1)[None]
    padded = np.concatenate([frame_features, np.zeros((1, dim), dtype=np.float32)])
    outside = (neighbours < 0) | (neighbours >= count)
    return padded[np.where(outside, count, neighbours)].astype(np.float32)
