"""An `AutoencoderKL` whose decoder is wider than its encoder, and a function-preserving way to get one.

A diffusion model is tied to its codec's latent space, that is to the encoder; the decoder only has to read those
latents back. A wider decoder can therefore reconstruct better without retraining anything that depends on the
latents. `WideDecoderAutoencoderKL` is diffusers' `AutoencoderKL` with one extra config entry, `decoder_width`:
every decoder block has that many times the encoder's channels (and as many times the norm groups, so each group
keeps its size). `widen_decoder` builds one from a trained VAE that encodes as the original does and decodes as
it does up to a small symmetry-breaking noise, so fine-tuning starts from the trained decoder's quality
(Net2Net's widening, Chen, Goodfellow and Shlens 2016, applied group by group):

- each decoder channel gets copies, laid out as whole new norm groups, so every group's statistics, and hence
  the normalised copies, equal the originals';
- a layer reads its copied inputs with its old weights divided among the copies, so its outputs are unchanged;
- the mid-block's single attention head grows with the channels, so the query is scaled to keep
  softmax(q·k / √d) as it was;
- the copies' incoming weights get a little noise: exact copies would receive equal gradients and never
  become different features.

Why copies rather than new random channels: with random channels starting at zero weight, every one of those
zero weights moves at the optimiser's full step from the first update, which on the default codec undid the
trained decoder (RGB L1 0.053 → 0.064 and depth L1 doubled within 250 steps at lr 2e-4).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder

from rgbd_portrait.errors import UserInputError


class WideDecoderAutoencoderKL(AutoencoderKL):
    """`AutoencoderKL` with a decoder `decoder_width` times as wide as the encoder (same latents, same API)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        decoder_width: int = 2,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if decoder_width < 1:
            raise ValueError(f"decoder_width must be at least 1, got {decoder_width}")
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=[channels * decoder_width for channels in block_out_channels],
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups * decoder_width,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )


def decoder_width(vae: AutoencoderKL) -> int:
    """How many times the encoder's channels each decoder block has."""
    return vae.config.get("decoder_width", 1)


def widen_decoder(vae: AutoencoderKL, width: int, *, noise: float = 0.01, seed: int = 0) -> WideDecoderAutoencoderKL:
    """A copy of `vae` whose decoder is `width` times as wide as its encoder and decodes as it does, but for `noise`.

    `width` must be a multiple of the VAE's present decoder width. The encoder, quant convolutions and latent
    calibration are copied as they are. `noise` is the standard deviation, relative to each weight tensor's,
    of the noise added to the copied channels' incoming weights (0 decodes exactly as before); it is drawn from
    `seed`, so every process of a distributed run widens alike.
    """
    present = decoder_width(vae)
    if width < present or width % present:
        raise UserInputError(f"decoder width {width}: not a multiple of the VAE's present decoder width {present}")
    config = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    config["decoder_width"] = width
    wide = WideDecoderAutoencoderKL.from_config(config).to(vae.device)
    narrow_state = vae.state_dict()
    wide_state = wide.state_dict()
    query_scale = (present / width) ** 0.5
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, target in wide_state.items():
            source = narrow_state[key]
            if source.shape == target.shape:
                target.copy_(source)
                continue
            copies = [new // old for new, old in zip(target.shape, source.shape)]
            widened = source.repeat(*copies)
            if source.ndim >= 2:
                widened /= copies[1]  # the copies of an input share its weight
                copied_rows = widened[source.shape[0] :]
                copied_rows += noise * source.std() * torch.randn(copied_rows.shape, generator=generator).to(source)
            if ".to_q." in key:
                widened *= query_scale
            target.copy_(widened)
    wide.load_state_dict(wide_state, strict=True)
    return wide if wide.dtype == vae.dtype else wide.to(vae.dtype)
