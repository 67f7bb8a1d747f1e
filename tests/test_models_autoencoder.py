"""A wider decoder on the same latents: widening computes what the narrow VAE computed, and checkpoints keep it."""

import pytest
import torch
from diffusers import AutoencoderKL

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.autoencoder import WideDecoderAutoencoderKL, decoder_width, widen_decoder
from rgbd_portrait.models.testing import tiny_model_section, tiny_vae_config


def _trained_looking_vae():
    """A tiny VAE with non-trivial norms and biases everywhere, so that a widening mistake shows."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config(), shift_factor=0.1, scaling_factor=0.7).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return vae


def test_widening_keeps_encoding_and_decoding():
    vae = _trained_looking_vae()
    wide = widen_decoder(vae, 2, noise=0.0)
    assert isinstance(wide, WideDecoderAutoencoderKL) and decoder_width(wide) == 2
    assert wide.decoder.conv_in.out_channels == 2 * vae.decoder.conv_in.out_channels
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        torch.testing.assert_close(wide.encode(images).latent_dist.mode(), latents)
        torch.testing.assert_close(wide.decode(latents).sample, vae.decode(latents).sample, atol=1e-5, rtol=1e-4)
        # Widening again multiplies the present width, still computing the same function.
        wider = widen_decoder(wide, 4, noise=0.0)
        torch.testing.assert_close(wider.decode(latents).sample, vae.decode(latents).sample, atol=1e-5, rtol=1e-4)
    assert (wide.config.shift_factor, wide.config.scaling_factor) == (0.1, 0.7)


def test_the_noise_breaks_the_copies_symmetry_and_barely_moves_the_output():
    vae = _trained_looking_vae()
    wide = widen_decoder(vae, 2)
    # The noise is drawn from a seed: widening is reproducible.
    again = widen_decoder(vae, 2)
    assert all(torch.equal(a, b) for a, b in zip(wide.state_dict().values(), again.state_dict().values()))
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        before = vae.decode(latents).sample
        change = (wide.decode(latents).sample - before).abs().mean()
    assert 0 < change < 0.05 * before.abs().mean()
    wide.decode(latents).sample.square().mean().backward()
    # A copy learns something else than its original: their gradients differ.
    gradient = wide.decoder.conv_out.weight.grad
    half = gradient.shape[1] // 2
    assert not torch.allclose(gradient[:, :half], gradient[:, half:])


def test_only_multiples_of_the_present_width():
    wide = widen_decoder(_trained_looking_vae(), 2)
    with pytest.raises(UserInputError, match="not a multiple of the VAE's present decoder width 2"):
        widen_decoder(wide, 3)


def test_a_wide_decoder_checkpoint_round_trips(tmp_path):
    section = tiny_model_section()
    section["vae"] = section["vae"] | {"decoder_width": 2}
    model = RGBDPortraitModel.from_config(section)
    assert isinstance(model.vae, WideDecoderAutoencoderKL)
    model.save_pretrained(tmp_path / "model")
    loaded = RGBDPortraitModel.from_pretrained(tmp_path / "model")
    assert isinstance(loaded.vae, WideDecoderAutoencoderKL) and decoder_width(loaded.vae) == 2
    for key, tensor in model.vae.state_dict().items():
        assert torch.equal(tensor, loaded.vae.state_dict()[key]), key
