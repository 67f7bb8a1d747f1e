"""Videos → sequences: frames at 25 fps and 16 kHz mono audio, through the ffmpeg binary of imageio-ffmpeg."""

import json

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from PIL import Image

from rgbd_portrait.data.prepare import AUDIO_SAMPLE_RATE, SEQUENCE_FPS, prepare
from rgbd_portrait.data.sample_format import read_sample

pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

SECONDS = 1.2
VIDEO_FPS = 30  # not 25, so the resampling to 25 fps is exercised
VIDEO_SIDE = 160


def _write_video(path, *, with_audio: bool, tmp_path) -> None:
    """The astronaut drifting slightly, optionally with a 440 Hz tone at 44.1 kHz stereo."""
    astronaut = Image.fromarray(skimage_data.astronaut())
    frames = [
        np.asarray(astronaut.crop((20 + 2 * index, 10 + index, 420 + 2 * index, 410 + index)).resize((VIDEO_SIDE,) * 2))
        for index in range(round(SECONDS * VIDEO_FPS))
    ]
    audio_path = None
    if with_audio:
        rate = 44100
        time = np.arange(round(SECONDS * rate)) / rate
        tone = 0.3 * np.sin(2 * np.pi * 440 * time)
        audio_path = tmp_path / "tone.wav"
        soundfile.write(audio_path, np.stack([tone, tone], axis=1), rate)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (VIDEO_SIDE, VIDEO_SIDE),
        fps=VIDEO_FPS,
        audio_path=None if audio_path is None else str(audio_path),
        audio_codec="aac",
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def test_video_round_trips_into_frames_and_audio_of_the_right_length(tmp_path):
    video = tmp_path / "talk.mp4"
    _write_video(video, with_audio=True, tmp_path=tmp_path)
    summary = prepare([video], tmp_path / "out", size=64, progress=False)
    assert not summary.failures and summary.sequences_written == 1

    sequence = tmp_path / "out" / "talk"
    meta = json.loads((sequence / "meta.json").read_text())
    expected_frames = round(SECONDS * SEQUENCE_FPS)
    assert meta["fps"] == SEQUENCE_FPS and meta["frame_count"] == expected_frames
    assert meta["frames"] == list(range(expected_frames)), "the astronaut is visible in every frame"
    assert summary.samples_written == expected_frames and summary.video_frames_without_face == 0
    frame_folders = sorted((sequence / "frames").iterdir())
    assert [folder.name for folder in frame_folders] == [f"{index:06d}" for index in range(expected_frames)]

    audio, rate = soundfile.read(sequence / "audio.wav")
    assert rate == AUDIO_SAMPLE_RATE and audio.ndim == 1
    assert abs(len(audio) / rate - expected_frames / SEQUENCE_FPS) <= 1 / SEQUENCE_FPS
    assert np.abs(audio).max() > 0.2  # the tone, not silence

    last = read_sample(frame_folders[-1])
    assert last.rgb.shape == (64, 64, 3) and last.mask.any()
    assert last.meta["frame_index"] == expected_frames - 1 and last.meta["identity"] == "talk"
    assert last.meta["depth_source"] == "pseudo"


def test_video_without_audio_is_reported_and_leaves_nothing(tmp_path):
    video = tmp_path / "silent.mp4"
    _write_video(video, with_audio=False, tmp_path=tmp_path)
    (tmp_path / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3 truncated")
    summary = prepare([video, tmp_path / "clip.webm"], tmp_path / "out", size=64, progress=False)
    reasons = dict(summary.failures)
    assert reasons[str(video)] == "video has no audio track"
    assert "cannot read video" in reasons[str(tmp_path / "clip.webm")]
    assert summary.sequences_written == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["prepare_summary.json"]
