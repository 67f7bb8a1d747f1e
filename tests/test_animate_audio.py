"""Audio for animation: decoding through ffmpeg (any format, rate, channels), per-frame features, bad files."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

from rgbd_portrait.data.audio import (
    AudioTrack,
    LogMelFeatures,
    Wav2Vec2Features,
    audio_windows,
    load_audio,
    make_audio_features,
)
from rgbd_portrait.data.synth.speech import synthesize_speech
from rgbd_portrait.errors import UserInputError

SECONDS = 2.0


@pytest.fixture(scope="module")
def speech():
    return synthesize_speech(np.random.default_rng(3), seconds=SECONDS, pitch_hz=140.0, sample_rate=16000)


def _convert(source, destination, *options):
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(source), *options, str(destination)], check=True)
    return destination


@pytest.mark.parametrize(("suffix", "rate"), [(".wav", 44100), (".mp3", 22050), (".flac", 48000)])
def test_any_format_rate_and_channel_count_decodes_to_mono_16k(tmp_path, speech, suffix, rate):
    stereo = np.stack([speech.audio, 0.5 * speech.audio], axis=1)
    source = tmp_path / "source.wav"
    soundfile.write(source, stereo, speech.sample_rate)
    path = _convert(source, tmp_path / f"speech{suffix}", "-ar", str(rate))
    track = load_audio(path)
    assert track.sample_rate == 16000
    assert track.samples.ndim == 1
    assert abs(track.seconds - SECONDS) < 0.01
    assert track.frame_count(25) == 50
    # The decoded loudness follows the synthesised speech.
    features = LogMelFeatures().frame_features(track.samples, track.sample_rate, fps=25, frame_count=50)
    correlation = np.corrcoef(features.mean(axis=1), speech.frame_envelope(25, 50))[0, 1]
    assert correlation > 0.5


def test_max_seconds_trims_the_decoded_audio(tmp_path, speech):
    path = tmp_path / "speech.wav"
    soundfile.write(path, speech.audio, speech.sample_rate)
    assert abs(load_audio(path, max_seconds=0.5).seconds - 0.5) < 1e-3


def test_log_mel_features_are_gain_invariant_and_silence_is_zero(speech):
    features = LogMelFeatures(n_mels=16)
    loud = features.frame_features(speech.audio, 16000, fps=25, frame_count=50)
    quiet = features.frame_features(0.01 * speech.audio, 16000, fps=25, frame_count=50)
    np.testing.assert_allclose(loud, quiet, atol=1e-4)
    assert loud.shape == (50, 16) and loud.min() >= 0.0 and loud.max() <= 1.0
    assert loud.max() > 0.5
    silent = AudioTrack(np.zeros(16000, dtype=np.float32), 16000, "silence")
    assert silent.is_silent
    assert not features.frame_features(silent.samples, 16000, fps=25, frame_count=25).any()
    # Frames past the end of the audio are silence, and frames faster than the 10 ms hop still get features.
    assert not features.frame_features(speech.audio, 16000, fps=25, frame_count=60)[50:].any()
    assert features.frame_features(speech.audio, 16000, fps=250, frame_count=500).any(axis=1).mean() > 0.3


def test_audio_windows_pad_with_silence():
    features = np.arange(1, 13, dtype=np.float32).reshape(6, 2)
    windows = audio_windows(features, [0, 5], radius=2)
    assert windows.shape == (2, 5, 2)
    np.testing.assert_array_equal(windows[0, :2], 0.0)
    np.testing.assert_array_equal(windows[0, 2:], features[:3])
    np.testing.assert_array_equal(windows[1, :3], features[3:])
    np.testing.assert_array_equal(windows[1, 3:], 0.0)


def test_bad_audio_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"\x00\x01 this is not audio" * 50)
    with pytest.raises(UserInputError, match="cannot decode audio") as caught:
        load_audio(corrupt)
    assert "\n" not in str(caught.value)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(UserInputError, match="zero length"):
        load_audio(empty)
    with pytest.raises(UserInputError, match="type"):
        make_audio_features({"type": "spectrogram"})


def test_local_speech_encoder_features(tmp_path, speech):
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "encoder")
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "encoder")
    encoder = make_audio_features({"type": "wav2vec2", "dim": 16}, encoder_path=tmp_path / "encoder")
    assert isinstance(encoder, Wav2Vec2Features)
    features = encoder.frame_features(speech.audio, 16000, fps=25, frame_count=50)
    assert features.shape == (50, 16) and np.isfinite(features).all()
    with pytest.raises(UserInputError, match="gives 16-dim"):
        make_audio_features({"type": "wav2vec2", "dim": 8}, encoder_path=tmp_path / "encoder")
    with pytest.raises(UserInputError, match="local folder"):
        make_audio_features({"type": "wav2vec2", "dim": 16})
