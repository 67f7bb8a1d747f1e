"""Temporal layers: attention over the frame axis, so that the frames of a clip are denoised together.

A temporal layer is diffusers' AnimateDiff motion module, `AnimateDiffTransformer3D`: a group norm over the
clip, a projection, transformer blocks whose self-attention runs along the F frames of each spatial position
(with sinusoidal frame positions), a projection back, and a residual connection. Its output projection starts
at zero, so a freshly inserted layer returns its input exactly and the image model is unchanged until training
moves it.

Input and output: hidden states (B·F, C, H, W) of B clips of F consecutive frames, the frames of a clip
contiguous. The layers are inserted into the backbone by `rgbd_portrait.models.motion`.
"""

from __future__ import annotations

from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from rgbd_portrait.errors import UserInputError


def temporal_layer(
    channels: int, *, num_attention_heads: int, norm_num_groups: int, max_frames: int
) -> AnimateDiffTransformer3D:
    """A zero-initialised temporal layer for `channels`-wide features and clips of at most `max_frames`."""
    if channels % num_attention_heads:
        raise UserInputError(f"temporal layers: {num_attention_heads} heads do not divide {channels} channels")
    if channels % norm_num_groups:
        raise UserInputError(f"temporal layers: {norm_num_groups} norm groups do not divide {channels} channels")
    layer = AnimateDiffTransformer3D(
        num_attention_heads=num_attention_heads,
        attention_head_dim=channels // num_attention_heads,
        in_channels=channels,
        norm_num_groups=norm_num_groups,
        activation_fn="geglu",
        double_self_attention=True,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=max_frames,
    )
    nn.init.zeros_(layer.proj_out.weight)
    nn.init.zeros_(layer.proj_out.bias)
    return layer
