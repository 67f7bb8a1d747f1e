"""Training clips from talking sequences: consecutive frames only, audio per frame, references, splits."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from animate_support import PSEUDO_DEPTH_META, write_fake_sequence
from rgbd_portrait.data.audio import LogMelFeatures, audio_windows
from rgbd_portrait.data.sample_format import read_sequence_audio
from rgbd_portrait.data.sequence_dataset import TalkingClipDataset, TalkingClipMixture, find_sequences
from rgbd_portrait.errors import UserInputError

CLIP = 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    write_fake_sequence(root / "sequences" / "train" / "a_talk000", identity="a", split="train", seconds=0.4, seed=1)
    # A prepared video missing frame 5 (no face found there).
    video, pseudo = root / "videos" / "b", PSEUDO_DEPTH_META
    write_fake_sequence(video, identity="b", split="train", seconds=0.4, seed=2, missing=(5,), frame_meta=pseudo)
    write_fake_sequence(root / "sequences" / "val" / "c_talk001", identity="c", split="val", seconds=0.2, seed=3)
    return root


def test_clips_are_runs_of_consecutive_frames_with_their_audio(root):
    features = LogMelFeatures(n_mels=8)
    clips = TalkingClipDataset(root, audio_features=features, clip_frames=CLIP, audio_radius=1)
    assert len(find_sequences(root)) == 3
    # 10 frames → 7 clips; frames 0-4 and 6-9 of the video → 2 + 1 clips.
    assert len(clips) == 7 + 3
    starts = sorted(int(item["frame_index"][0]) for item in (clips[index] for index in range(7, 10)))
    assert starts == [0, 1, 6]

    item = clips[2]
    assert item["rgb"].shape == (CLIP, 3, 16, 16) and item["depth"].shape == (CLIP, 1, 16, 16)
    assert item["mask"].shape == (CLIP, 1, 16, 16) and item["audio"].shape == (CLIP, 3, 8)
    assert item["identity"] == "a"
    assert torch.equal(item["frame_index"], torch.arange(2, 2 + CLIP))
    samples, rate = read_sequence_audio(root / "sequences" / "train" / "a_talk000")
    expected = features.frame_features(samples, rate, fps=25, frame_count=10)
    np.testing.assert_allclose(item["audio"].numpy(), audio_windows(expected, range(2, 2 + CLIP), radius=1))
    # The reference is another frame of the sequence, outside the clip, fixed by (seed, epoch, index).
    frames = [clips.sequences[0].frames.get(index)["rgb"] for index in range(10)]
    matches = [index for index, frame in enumerate(frames) if torch.equal(frame, item["reference_rgb"])]
    assert matches and not 2 <= matches[0] < 2 + CLIP
    assert torch.equal(clips.get(2, epoch=3)["reference_rgb"], clips.get(2, epoch=3)["reference_rgb"])

    # Synthetic frames have exact depth, observed everywhere; the prepared video's is pseudo-depth, observed on
    # the face only.
    assert torch.equal(item["pseudo_depth"], torch.zeros(CLIP)) and (item["depth_observed"] == 1).all()
    video = clips[7]
    assert torch.equal(video["pseudo_depth"], torch.ones(CLIP)) and video["depth_observed"].shape == (CLIP, 1, 16, 16)
    observed = video["depth_observed"][0, 0]
    assert observed[7, 7] == 1 and observed[1, 1] == 0 and observed[14, 8] == 0

    batch = next(iter(DataLoader(clips, batch_size=2)))
    assert batch["rgb"].shape == (2, CLIP, 3, 16, 16) and batch["audio"].shape == (2, CLIP, 3, 8)


def test_splits_and_short_sequences(root, tmp_path):
    features = LogMelFeatures(n_mels=8)
    assert len(TalkingClipDataset(root, audio_features=features, split="val", clip_frames=CLIP)) == 2
    assert len(TalkingClipDataset(root, audio_features=features, split="val", clip_frames=6)) == 0
    assert len(TalkingClipDataset(root, audio_features=features, split=None, clip_frames=CLIP, resolution=8)) == 12
    with pytest.raises(UserInputError, match="clip_frames"):
        TalkingClipDataset(root, audio_features=features, clip_frames=0)
    with pytest.raises(UserInputError, match="not found"):
        TalkingClipDataset(tmp_path / "missing", audio_features=features)


def test_a_mixture_alternates_its_parts_and_weighs_them_by_share_not_size(root):
    features = LogMelFeatures(n_mels=8)
    synthetic = TalkingClipDataset(root / "sequences", audio_features=features, clip_frames=CLIP)
    real = TalkingClipDataset(root / "videos", audio_features=features, clip_frames=CLIP)
    assert (len(synthetic), len(real)) == (7, 3)
    mixture = TalkingClipMixture([synthetic, real], [1.0, 3.0])
    assert len(mixture) == 10
    # The first items show both parts: synthetic, real, synthetic, real, ...
    assert [mixture[index]["identity"] for index in range(4)] == ["a", "b", "a", "b"]
    assert torch.equal(mixture.get(1, epoch=2)["rgb"], real.get(0, epoch=2)["rgb"])
    assert torch.equal(mixture.get(1, epoch=2)["reference_rgb"], real.get(0, epoch=2)["reference_rgb"])
    # Drawn by sample_weights, the real clips (3 of 10) get 3/4 of the draws.
    weights = mixture.sample_weights
    is_real = torch.tensor([number == 1 for number, _ in mixture.locations])
    assert float(weights[is_real].sum() / weights.sum()) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one weight per part"):
        TalkingClipMixture([synthetic], [1.0, 2.0])
