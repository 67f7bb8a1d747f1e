from pathlib import Path

import numpy as np
import pytest

from rgbd_portrait.evaluation.lipsync import (
    frame_loudness,
    jitter,
    lagged_correlations,
    mouth_opening,
    peak_lag,
    pearson,
    read_align,
    speech_frames,
)

GRID_ALIGN = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "grid_s1" / "align"


def test_mouth_opening_is_inner_lip_gap_over_face_height_whatever_the_scale():
    landmarks = np.zeros((478, 3))
    landmarks[10] = [50, 10, 0]  # forehead
    landmarks[152] = [50, 110, 0]  # chin
    landmarks[13] = [50, 70, 0]  # upper inner lip
    landmarks[14] = [50, 75, 0]  # lower inner lip
    assert mouth_opening(landmarks) == pytest.approx(0.05)
    assert mouth_opening(landmarks * 3) == pytest.approx(0.05)


def test_a_known_shift_is_found_to_a_fraction_of_a_frame():
    rng = np.random.default_rng(0)
    smooth = np.convolve(rng.standard_normal(300), np.hanning(9), mode="same")
    later = np.roll(smooth, 3)
    correlations = lagged_correlations(smooth, later, max_lag=6)
    assert peak_lag(correlations) == pytest.approx(3.0, abs=0.2)
    assert peak_lag(lagged_correlations(later, smooth, max_lag=6)) == pytest.approx(-3.0, abs=0.2)
    assert pearson(smooth, smooth) == pytest.approx(1.0)
    # Missing frames (no face found) are left out.
    with_gaps = smooth.copy()
    with_gaps[::7] = np.nan
    assert pearson(with_gaps, smooth) == pytest.approx(1.0)
    assert np.isnan(pearson(np.ones(10), smooth[:10]))


def test_loudness_speech_frames_and_jitter():
    rate, fps = 16000, 25
    samples = np.zeros(rate)
    samples[rate // 2 :] = 0.5  # silent for 0.5 s, then loud
    loudness = frame_loudness(samples, rate, fps=fps, frames=30)
    assert loudness[:12].max() == 0 and loudness[13:25] == pytest.approx(0.5) and loudness[25:].max() == 0
    words = [(0.0, 0.2, "sil"), (0.2, 0.4, "bin"), (0.4, 0.5, "sp"), (0.5, 0.6, "blue")]
    assert speech_frames(words, fps=fps, frames=16).tolist() == [0] * 5 + [1] * 5 + [0] * 2 + [1] * 3 + [0]
    line = np.stack([np.arange(10.0), 2 * np.arange(10.0)], axis=1)
    assert jitter(line) == pytest.approx(0.0)
    zigzag = np.array([0.0, 1.0] * 5)
    assert jitter(zigzag) == pytest.approx(2.0)


@pytest.mark.skipif(not GRID_ALIGN.is_dir(), reason="GRID word timings (../shared/data) not present")
def test_grid_word_timings_are_read_in_seconds():
    words = read_align(sorted(GRID_ALIGN.glob("*.align"))[0])
    assert words[0][2] == "sil" and words[-1][2] == "sil"
    assert 2.5 < words[-1][1] <= 3.1  # a 3-s sentence
    assert all(start <= end for start, end, _ in words)
