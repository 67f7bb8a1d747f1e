import pytest
import torch
from diffusers import UNet2DConditionModel

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.backbone import expand_unet
from rgbd_portrait.models.testing import tiny_unet_config


@pytest.fixture
def unet():
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def test_expanded_rgb_output_equals_the_original_unet(unet):
    original_conv_in = unet.conv_in.weight.clone()
    backbone = expand_unet(unet).eval()
    assert (backbone.config.in_channels, backbone.config.out_channels) == (18, 8)
    sample = torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([3, 700])
    context = torch.randn(2, 3, 16)
    with torch.no_grad():
        expected = unet(sample, timesteps, encoder_hidden_states=context).sample
        inputs = torch.cat([sample, torch.zeros(2, 14, 8, 8)], dim=1)
        output = backbone(inputs, timesteps, encoder_hidden_states=context).sample
    assert (output[:, :4] - expected).abs().max() < 1e-5
    # The depth head starts as a copy of the RGB head.
    assert (output[:, 4:] - expected).abs().max() < 1e-5
    assert torch.equal(unet.conv_in.weight, original_conv_in)
    assert unet.config.in_channels == 4


def test_new_input_weights(unet):
    weight = expand_unet(unet).conv_in.weight
    assert torch.equal(weight[:, :4], unet.conv_in.weight)
    assert torch.equal(weight[:, 4:8], unet.conv_in.weight)
    assert torch.all(weight[:, 8:] == 0)


def test_expanded_unet_round_trips_through_diffusers(unet, tmp_path):
    backbone = expand_unet(unet)
    backbone.save_pretrained(tmp_path)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path)
    assert (loaded.config.in_channels, loaded.config.out_channels) == (18, 8)
    assert torch.equal(loaded.conv_in.weight, backbone.conv_in.weight)


def test_refuses_unets_that_do_not_fit(unet):
    with pytest.raises(UserInputError, match="already expanded"):
        expand_unet(expand_unet(unet))
    inpainting = UNet2DConditionModel(**tiny_unet_config() | {"in_channels": 9})
    with pytest.raises(UserInputError, match="9 in / 4 out"):
        expand_unet(inpainting)
    with_class_labels = UNet2DConditionModel(**tiny_unet_config() | {"class_embed_type": "timestep"})
    with pytest.raises(UserInputError, match="class_embed_type"):
        expand_unet(with_class_labels)
