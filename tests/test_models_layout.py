import pytest
import torch

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import (
    Task,
    build_backbone_input,
    expand_masks,
    input_channel_count,
    input_layout,
    join_modalities,
    output_channel_count,
    split_modalities,
    task_masks,
)


def test_channel_counts_for_a_stable_diffusion_vae():
    assert input_channel_count(4) == 18
    assert output_channel_count(4) == 8
    assert list(input_layout(4)) == ["noisy_rgb", "noisy_depth", "known_rgb", "known_depth", "mask_rgb", "mask_depth"]


@pytest.mark.parametrize(
    ("task", "expected"),
    [(Task.JOINT, (0, 0)), (Task.IMAGE_TO_DEPTH, (1, 0)), ("depth_to_image", (0, 1))],
)
def test_task_masks_mark_known_modalities(task, expected):
    masks = task_masks(task, batch_size=2, height=3, width=5)
    assert masks.shape == (2, 2, 3, 5)
    assert masks[:, 0].unique().tolist() == [expected[0]]
    assert masks[:, 1].unique().tolist() == [expected[1]]


def test_task_masks_per_sample_and_bad_names():
    masks = task_masks(["joint", Task.DEPTH_TO_IMAGE], batch_size=2, height=1, width=1)
    assert masks.flatten().tolist() == [0, 0, 0, 1]
    with pytest.raises(UserInputError, match="image_to_depth"):
        task_masks("depth", batch_size=1, height=1, width=1)
    with pytest.raises(UserInputError, match="2 tasks for a batch of 3"):
        task_masks(["joint", "joint"], batch_size=3, height=1, width=1)


def test_backbone_input_zeroes_unknown_modalities():
    noisy = torch.randn(2, 8, 4, 4)
    known = torch.randn(2, 8, 4, 4)
    masks = task_masks(["image_to_depth", "depth_to_image"], batch_size=2, height=4, width=4)
    inputs = build_backbone_input(noisy, known, masks)
    assert inputs.shape == (2, 18, 4, 4)
    assert torch.equal(inputs[:, :8], noisy)
    assert torch.equal(inputs[0, 8:12], known[0, :4])  # rgb known for image→depth
    assert torch.all(inputs[0, 12:16] == 0)
    assert torch.all(inputs[1, 8:12] == 0)
    assert torch.equal(inputs[1, 12:16], known[1, 4:])  # depth known for depth→image
    assert torch.equal(inputs[:, 16:], masks)


def test_backbone_input_rejects_mismatched_shapes():
    noisy = torch.randn(1, 8, 4, 4)
    masks = torch.zeros(1, 2, 4, 4)
    with pytest.raises(UserInputError, match="known latents"):
        build_backbone_input(noisy, torch.randn(1, 8, 2, 2), masks)
    with pytest.raises(UserInputError, match="masks"):
        build_backbone_input(noisy, noisy, torch.zeros(1, 1, 4, 4))
    with pytest.raises(UserInputError, match="noisy latents"):
        build_backbone_input(torch.randn(1, 7, 4, 4), torch.randn(1, 7, 4, 4), masks)


def test_split_join_and_expand_masks():
    rgb, depth = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    joined = join_modalities(rgb, depth)
    assert all(torch.equal(a, b) for a, b in zip(split_modalities(joined), (rgb, depth)))
    masks = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert expand_masks(masks, 4).flatten().tolist() == [1.0] * 4 + [0.0] * 4
