"""Talking sequences: synthetic speech, the jaw following it, and the sequence folder format."""

import numpy as np
import pytest

from rgbd_portrait.data.sample_format import (
    PortraitSample,
    find_samples,
    is_sequence,
    read_meta,
    read_sequence_audio,
    sequence_frames,
    write_sequence,
)
from rgbd_portrait.data.synth import Camera, render_dataset, sample_lighting, studio_identity, synthesize_speech
from rgbd_portrait.data.synth.talking import talking_sequence
from rgbd_portrait.errors import UserInputError

FPS = 25


def _frame_rms(audio: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
    window = sample_rate // FPS
    return np.array([np.sqrt(np.mean(audio[i * window : (i + 1) * window] ** 2)) for i in range(frames)])


def test_mouth_opening_follows_the_audio_envelope(tmp_path):
    root = tmp_path / "talk"
    render_dataset(
        root, identities=1, samples_per_identity=1, size=16, relights=0, sequences=1, sequence_seconds=3.0,
        show_progress=False,
    )  # fmt: skip
    (sequence,) = (root / "sequences" / "train").iterdir()
    frames = sequence_frames(sequence)
    assert len(frames) == 75
    jaw = np.array([read_meta(frame)["expression"]["jaw_open"] for frame in frames])
    audio, sample_rate = read_sequence_audio(sequence)
    assert sample_rate == 16000 and len(audio) == 3 * 16000
    envelope = _frame_rms(audio, sample_rate, len(frames))
    assert np.corrcoef(jaw, envelope)[0, 1] > 0.8
    assert jaw.max() > 0.4 and jaw.min() < 0.05  # speaks, and closes the mouth in pauses


def test_speech_is_voiced_syllables_with_pauses():
    track = synthesize_speech(np.random.default_rng(1), seconds=4.0, pitch_hz=120.0)
    audio = track.audio
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    loudness = _frame_rms(audio, track.sample_rate, 100)
    assert (loudness < 0.02 * loudness.max()).mean() > 0.1  # gaps between syllables and phrases
    assert 8 <= len(track.syllables) <= 20  # about 2–5 syllables a second
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    frequencies = np.fft.rfftfreq(len(audio), 1.0 / track.sample_rate)
    assert spectrum[frequencies < 4000].sum() > 0.9 * spectrum.sum()
    # Voiced: within a syllable the signal repeats at the voice's pitch period (intonation moves it ±15 %).
    syllable = track.syllables[0]
    start = int((syllable.start + 0.3 * syllable.duration) * track.sample_rate)
    chunk = audio[start : start + 800].astype(np.float64)
    lags = np.arange(int(track.sample_rate / 400), int(track.sample_rate / 60))
    correlation = [np.dot(chunk[:-lag], chunk[lag:]) for lag in lags]
    assert 102 < track.sample_rate / lags[int(np.argmax(correlation))] < 138


def test_head_moves_a_little_and_blinks():
    identity = studio_identity(0, 0)
    camera = Camera(size=16, focal_length_mm=85.0, distance=0.9)
    sequence = talking_sequence(
        np.random.default_rng(5),
        identity,
        seconds=8.0,
        camera=camera,
        lighting=sample_lighting(np.random.default_rng(0)),
    )
    yaw = np.array([view.pose.yaw for view in sequence.views])
    assert 0.2 < np.ptp(yaw) < 15.0 and np.abs(np.diff(yaw)).max() < 1.0
    blink = np.array([view.expression.blink for view in sequence.views])
    assert (blink == 1.0).sum() >= 1
    assert {view.camera for view in sequence.views} == {camera}


def _frame(index: int) -> PortraitSample:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    return PortraitSample(
        rgb=np.full((8, 8, 3), index, np.uint8),
        depth=np.where(mask, 1.0, 0.0).astype(np.float32),
        mask=mask,
        meta={"identity": "speaker", "frame_index": index},
    )


def test_sequence_format_round_trip(tmp_path):
    audio = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.5
    write_sequence(tmp_path / "seq", (_frame(i) for i in range(3)), meta={"identity": "speaker"}, audio=audio)
    assert is_sequence(tmp_path / "seq") and [path.name for path in tmp_path.iterdir()] == ["seq"]
    meta = read_meta(tmp_path / "seq")
    assert meta["frames"] == [0, 1, 2] and meta["fps"] == 25 and meta["identity"] == "speaker"
    read_back, rate = read_sequence_audio(tmp_path / "seq")
    assert rate == 16000 and np.abs(read_back - audio).max() < 1e-4
    assert [path.name for path in sequence_frames(tmp_path / "seq")] == ["000000", "000001", "000002"]
    # Frames of sequences are not stills: discovery skips them unless asked.
    assert find_samples(tmp_path) == []
    assert len(find_samples(tmp_path, include_sequences=True)) == 3


def test_failed_sequence_write_leaves_nothing(tmp_path):
    def frames():
        yield _frame(0)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_sequence(tmp_path / "seq", frames(), meta={}, audio=np.zeros(100, np.float32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserInputError, match="not a sequence"):
        sequence_frames(tmp_path)
