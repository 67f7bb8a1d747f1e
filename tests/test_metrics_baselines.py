import json

import numpy as np
import pytest
import torch

from rgbd_portrait.data.sample_format import PortraitSample, write_sample
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.baselines import MeanFaceTemplate, find_split, flat_plane_depth, radial_depth
from rgbd_portrait.evaluation.metrics import depth_metrics

SIZE = 8
FACE = (slice(2, 6), slice(2, 6))  # every sample's mask: the central 4 x 4 pixels


def _two_level_sample(split, near_region, near, far):
    """A face whose masked depth is `near` on `near_region` and `far` elsewhere: it normalises to 0 and 1."""
    depth = np.zeros((SIZE, SIZE), np.float32)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[FACE] = True
    depth[FACE] = far
    depth[near_region] = near
    return PortraitSample(
        rgb=np.zeros((SIZE, SIZE, 3), np.uint8), depth=depth, mask=mask, meta={"identity": split, "split": split}
    )


# Unit-range depth of the two training faces averaged: near-near 0, near-far 0.5, far-far 1; background far.
EXPECTED_TEMPLATE = np.ones((SIZE, SIZE), np.float32)
EXPECTED_TEMPLATE[2:4, 2:4] = 0.0
EXPECTED_TEMPLATE[2:4, 4:6] = 0.5
EXPECTED_TEMPLATE[4:6, 2:4] = 0.5


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "studio"
    # Left half near for one face, top half near for the other, at different distances and depth ranges.
    write_sample(root / "train" / "a", _two_level_sample("train", (slice(2, 6), slice(2, 4)), 0.5, 0.6))
    write_sample(root / "train" / "b", _two_level_sample("train", (slice(2, 4), slice(2, 6)), 2.0, 3.0))
    # Neither a test sample nor a half-written hidden folder may contribute.
    write_sample(root / "test" / "c", _two_level_sample("test", (slice(4, 6), slice(4, 6)), 1.0, 1.1))
    write_sample(root / ".d.tmp", _two_level_sample("train", (slice(4, 6), slice(4, 6)), 1.0, 1.1))
    # Nor the frames of a talking sequence: they are many near-copies of one view.
    sequence = root / "sequences" / "train" / "e_talk"
    write_sample(sequence / "frames" / "000000", _two_level_sample("train", (slice(4, 6), slice(4, 6)), 1.0, 1.1))
    (sequence / "meta.json").write_text(json.dumps({"split": "train"}))
    return root


def test_template_is_the_masked_average_of_normalised_training_depth(data_dir):
    assert [path.name for path in find_split(data_dir, split="train")] == ["a", "b"]
    template = MeanFaceTemplate.from_data(data_dir)
    np.testing.assert_allclose(template.depth.numpy(), EXPECTED_TEMPLATE, atol=1e-6)


def test_template_shows_progress_only_when_asked(data_dir, capsys):
    MeanFaceTemplate.from_data(data_dir, show_progress=False)
    assert capsys.readouterr().err == ""
    MeanFaceTemplate.from_data(data_dir)
    assert "mean-face template" in capsys.readouterr().err


def test_template_resizes_to_the_requested_size_and_to_each_image(data_dir):
    template = MeanFaceTemplate.from_data(data_dir, size=(16, 16))
    assert template.depth.shape == (16, 16)
    assert template.depth[0, 0] == 1.0 and template.depth[6, 6] < 0.1  # background far, near-near corner near
    prediction = template(torch.zeros(2, 5, 3, 8, 8))
    assert prediction.shape == (2, 5, 8, 8)
    assert prediction.min() >= 0 and prediction.max() <= 1


def test_template_is_scored_through_the_same_alignment(data_dir):
    template = MeanFaceTemplate.from_data(data_dir)
    images = torch.zeros(1, 3, SIZE, SIZE)
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    mask[0][FACE] = True
    # A face shaped exactly like the template, at another distance and depth range: aligned, no error.
    target = 1.0 + 0.3 * torch.from_numpy(EXPECTED_TEMPLATE)[None]
    template_metrics = depth_metrics(template(images), target, mask)
    assert template_metrics["abs_rel"].item() == pytest.approx(0.0, abs=1e-6)
    flat_metrics = depth_metrics(flat_plane_depth(images), target, mask)
    # The flat plane aligns to the masked mean 1.15: relative errors 0.15/1, 0, 0, 0.15/1.3 on the quarters.
    assert flat_metrics["abs_rel"].item() == pytest.approx((0.15 + 0.15 / 1.3) / 4, rel=1e-5)


def test_flat_plane_has_the_images_shape_and_device():
    depth = flat_plane_depth(torch.rand(4, 3, 6, 7))
    assert depth.shape == (4, 6, 7) and depth.unique().numel() == 1


def test_radial_depth_is_the_distance_from_the_face_centre():
    depth = radial_depth((3, 4), (1.0, 2.0))
    assert depth.shape == (3, 4) and depth[2, 1].item() == 0.0
    assert depth[0, 1].item() == pytest.approx(2.0) and depth[0, 3].item() == pytest.approx(8**0.5)


def test_save_and_load_round_trip_atomically(data_dir, tmp_path):
    template = MeanFaceTemplate.from_data(data_dir)
    path = template.save(tmp_path / "out" / "mean_face.npy")
    assert sorted(p.name for p in path.parent.iterdir()) == ["mean_face.npy"]
    torch.testing.assert_close(MeanFaceTemplate.load(path).depth, template.depth)


def test_bad_template_files_and_folders_are_user_errors(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(UserInputError, match=r"stack\.npy.*\(H, W\)"):
        MeanFaceTemplate.load(tmp_path / "stack.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match=r"objects\.npy"):
        MeanFaceTemplate.load(tmp_path / "objects.npy")
    with pytest.raises(UserInputError, match="missing.npy"):
        MeanFaceTemplate.load(tmp_path / "missing.npy")
    with pytest.raises(UserInputError, match="no sample with split 'train'"):
        MeanFaceTemplate.from_data(tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        MeanFaceTemplate.from_data(tmp_path / "nowhere")
