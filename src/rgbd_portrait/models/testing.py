"""Tiny random architectures for fast CPU tests (as diffusers' own tests do), shared by every test suite.

`RGBDPortraitModel.from_config(tiny_model_section())` builds a complete model of about 1 M parameters in well
under a second; its VAE halves the resolution once, so 16×16 images give 8×8 latents.
"""

from __future__ import annotations

from typing import Any


def tiny_unet_config(*, last_up_block_has_attention: bool = True) -> dict[str, Any]:
    """UNet2DConditionModel arguments: two levels, one cross-attention level, 16-wide context."""
    down = ["CrossAttnDownBlock2D", "DownBlock2D"]
    up = ["UpBlock2D", "CrossAttnUpBlock2D"]
    if not last_up_block_has_attention:
        down, up = down[::-1], up[::-1]
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "attention_head_dim": 8,
        "cross_attention_dim": 16,
        "down_block_types": down,
        "up_block_types": up,
    }


def tiny_vae_config() -> dict[str, Any]:
    """AutoencoderKL arguments: 4 latent channels, downscale factor 2."""
    return {
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "sample_size": 16,
    }


def tiny_model_section(**overrides: Any) -> dict[str, Any]:
    """A `model:` config section for a tiny random model; `overrides` replace top-level entries."""
    section = {
        "backbone": tiny_unet_config(),
        "vae": tiny_vae_config(),
        "context": {"type": "learned", "num_tokens": 2},
        "default_steps": 4,
    }
    return section | overrides


def add_tiny_motion_layers(model, *, window_frames: int = 4, motion_frames: int = 1) -> None:
    """Give a tiny model small random talking-head layers (log-mel audio), for tests of animation."""
    from rgbd_portrait.data.audio import LogMelFeatures
    from rgbd_portrait.models.motion import MotionLayers

    motion = MotionLayers.for_backbone(
        model.backbone,
        audio_features=LogMelFeatures(n_mels=8),
        num_attention_heads=4,
        audio_token_dim=16,
        max_frames=8,
        window_frames=window_frames,
        motion_frames=motion_frames,
    )
    model.add_motion_layers(motion)
