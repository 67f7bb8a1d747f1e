"""The joint RGB-D backbone: any Stable-Diffusion-style `UNet2DConditionModel`, with expanded channels.

`expand_unet` turns a UNet with `C` input and `C` output channels into one with the layout of
`rgbd_portrait.models.layout` (`4C + 2` in, `2C` out). The new weights are chosen so that a pretrained prior
carries over and the expanded model is *exactly* the original on RGB alone:

* `conv_in`: the `noisy_rgb` block keeps the original kernel; the `noisy_depth` block gets a copy of it (depth
  latents live in the same VAE space, so the RGB filters are a meaningful start); the `known_*` and `mask_*`
  blocks are zero, so the conditioning enters gradually during fine-tuning. With depth, known latents and
  masks all zero, the first activations are those of the original UNet.
* `conv_out`: the `rgb` half is the original kernel and bias, the `depth` half a copy of them.

Everything else is the original UNet's weights; the config is updated (`in_channels`, `out_channels`) so the
result saves and loads like any diffusers UNet.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import input_channel_count, output_channel_count
from rgbd_portrait.models.weights import assign_weights, cloned_state_dict, empty_weights

# Config entries that need inputs the backbone does not provide (SDXL's added time ids, class labels, ...).
_UNSUPPORTED_OPTIONS = ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")


def public_config(unet: UNet2DConditionModel) -> dict:
    """The UNet's constructor arguments (its config without diffusers' private `_` entries)."""
    return {key: value for key, value in unet.config.items() if not key.startswith("_")}


def check_supported_unet(unet: UNet2DConditionModel, *, source: str = "unet") -> None:
    """Refuse UNet variants whose extra inputs the RGB-D model has no source for."""
    if not isinstance(unet, UNet2DConditionModel):
        raise UserInputError(f"{source}: expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    for option in _UNSUPPORTED_OPTIONS:
        if unet.config.get(option) is not None:
            raise UserInputError(f"{source}: UNets with {option}={unet.config[option]!r} are not supported")
    if not isinstance(unet.config.cross_attention_dim, int):
        raise UserInputError(
            f"{source}: per-block cross_attention_dim {unet.config.cross_attention_dim} is not supported"
        )


def backbone_latent_channels(backbone: UNet2DConditionModel, *, source: str = "backbone") -> int:
    """Latent channels per modality of an expanded backbone; errors if its channels do not fit the layout."""
    in_channels, out_channels = backbone.config.in_channels, backbone.config.out_channels
    latent_channels = out_channels // 2
    if out_channels % 2 or in_channels != input_channel_count(latent_channels):
        raise UserInputError(
            f"{source}: {in_channels} input / {out_channels} output channels do not fit the RGB-D layout "
            f"(expected 4C+2 / 2C, e.g. 18 / 8); build the backbone with expand_unet"
        )
    return latent_channels


def expand_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A new, expanded copy of `unet` (which is left unchanged); see the module docstring for the weights."""
    check_supported_unet(unet)
    latent_channels = unet.config.in_channels
    if unet.config.out_channels != latent_channels:
        if unet.config.in_channels == input_channel_count(unet.config.out_channels // 2):
            raise UserInputError("unet: already expanded (its channels fit the RGB-D layout)")
        raise UserInputError(
            f"unet: expected equal input and output channels (a text-to-image UNet), got "
            f"{unet.config.in_channels} in / {unet.config.out_channels} out"
        )
    config = public_config(unet) | {
        "in_channels": input_channel_count(latent_channels),
        "out_channels": output_channel_count(latent_channels),
    }
    with empty_weights():
        expanded = UNet2DConditionModel.from_config(config)

    weights = cloned_state_dict(unet)
    rgb_kernel = weights["conv_in.weight"]
    conv_in = rgb_kernel.new_zeros((rgb_kernel.shape[0], config["in_channels"], *rgb_kernel.shape[2:]))
    conv_in[:, :latent_channels] = rgb_kernel  # noisy_rgb
    conv_in[:, latent_channels : 2 * latent_channels] = rgb_kernel  # noisy_depth
    weights["conv_in.weight"] = conv_in
    weights["conv_out.weight"] = torch.cat([weights["conv_out.weight"]] * 2, dim=0)
    weights["conv_out.bias"] = torch.cat([weights["conv_out.bias"]] * 2, dim=0)
    assign_weights(expanded, weights, source="expand_unet")
    expanded.train(unet.training)
    return expanded
