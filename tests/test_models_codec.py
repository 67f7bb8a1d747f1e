import pytest
import torch
from diffusers import AutoencoderKL

from rgbd_portrait.data.depth_normalization import normalize_depth
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.codec import LatentCodec
from rgbd_portrait.models.testing import tiny_vae_config


def _codec(**config):
    return LatentCodec(AutoencoderKL(**tiny_vae_config() | config).eval())


def _rgb(batch_size=2):
    return torch.rand(batch_size, 3, 16, 16) * 2 - 1


def test_rgb_round_trip_matches_the_vae_with_its_own_scaling():
    codec = _codec(scaling_factor=0.5, shift_factor=0.25)
    rgb = _rgb()
    with torch.no_grad():
        latents = codec.encode_rgb(rgb)
        mode = codec.vae.encode(rgb).latent_dist.mode()
        assert latents.shape == (2, 4, 8, 8)
        torch.testing.assert_close(latents, (mode - 0.25) * 0.5)
        decoded = codec.decode_rgb(latents)
        torch.testing.assert_close(decoded, codec.vae.decode(mode).sample.clamp(-1, 1))
    assert decoded.shape == rgb.shape


def test_scaling_factor_is_read_from_the_config():
    small, large = _codec(scaling_factor=0.1), _codec(scaling_factor=0.2)
    large.load_state_dict(small.state_dict())
    rgb = _rgb(1)
    with torch.no_grad():
        torch.testing.assert_close(large.encode_rgb(rgb), 2 * small.encode_rgb(rgb))


def test_depth_is_replicated_to_three_channels_and_decoded_as_their_mean():
    codec = _codec()
    depth = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = codec.encode_depth(depth)
        torch.testing.assert_close(latents, codec.encode_rgb(depth.repeat(1, 3, 1, 1)))
        decoded = codec.decode_depth(latents)
        torch.testing.assert_close(decoded, codec.decode_rgb(latents).mean(dim=1, keepdim=True))
    assert decoded.shape == depth.shape
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_joint_encoding_and_decoding_match_the_single_modalities():
    codec = _codec()
    rgb, depth = _rgb(), torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        joint = codec.encode_rgbd(rgb, depth)
        torch.testing.assert_close(joint, torch.cat([codec.encode_rgb(rgb), codec.encode_depth(depth)], dim=1))
        decoded_rgb, decoded_depth = codec.decode_rgbd(joint)
        torch.testing.assert_close(decoded_rgb, codec.decode_rgb(joint[:, :4]))
        torch.testing.assert_close(decoded_depth, codec.decode_depth(joint[:, 4:]))


def test_metric_depth_uses_the_marigold_normalisation():
    codec = _codec()
    depth = torch.rand(1, 1, 16, 16) * 3 + 1
    mask = torch.zeros_like(depth, dtype=torch.bool)
    mask[..., 4:12, 4:12] = True
    with torch.no_grad():
        latents, near, far = codec.encode_metric_depth(depth, mask)
        normalized, expected_near, expected_far = normalize_depth(depth, mask)
        torch.testing.assert_close(latents, codec.encode_depth(normalized))
    assert torch.equal(near, expected_near) and torch.equal(far, expected_far)


def test_bad_shapes_are_one_line_errors():
    codec = _codec()
    with pytest.raises(UserInputError, match=r"rgb: expected \(B, 3, H, W\)"):
        codec.encode_rgb(torch.zeros(1, 4, 16, 16))
    with pytest.raises(UserInputError, match="multiples of 2, got 15×16"):
        codec.encode_depth(torch.zeros(1, 1, 15, 16))
    with pytest.raises(UserInputError, match="depth latents"):
        codec.decode_depth(torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserInputError, match="differ in batch or size"):
        codec.encode_rgbd(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 8, 8))
