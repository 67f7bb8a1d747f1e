"""RGB and depth ↔ latents through one diffusers `AutoencoderKL` (Marigold's convention for depth).

RGB in [-1, 1] is encoded as usual. Depth, affinely normalised to [-1, 1] (`normalize_depth`: quantiles on the
mask, background far), is replicated to three channels and encoded by the same VAE; decoding averages the three
output channels. Encoding takes the posterior mode (deterministic), and latents are scaled as diffusers does:
`(z - shift_factor) * scaling_factor`, both read from the VAE's config. The methods do not switch off autograd;
wrap calls in `torch.no_grad()` where the VAE is frozen.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from rgbd_portrait.data.depth_normalization import normalize_depth
from rgbd_portrait.devices import placement
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import join_modalities, split_modalities


class LatentCodec(nn.Module):
    """Encoder/decoder of both modalities. Images are (B, 3, H, W), depth (B, 1, H, W), latents (B, C, h, w)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        if not isinstance(vae, AutoencoderKL):
            raise UserInputError(f"vae: expected a diffusers AutoencoderKL, got {type(vae).__name__}")
        if vae.config.in_channels != 3 or vae.config.out_channels != 3:
            raise UserInputError(
                f"vae: expected 3 image channels, got {vae.config.in_channels} in / {vae.config.out_channels} out"
            )
        self.vae = vae

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def downscale_factor(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    @property
    def shift_factor(self) -> float:
        return self.vae.config.shift_factor or 0.0

    def _check_pixels(self, pixels: torch.Tensor, channels: int, name: str) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != channels:
            raise UserInputError(f"{name}: expected (B, {channels}, H, W), got {tuple(pixels.shape)}")
        factor = self.downscale_factor
        if pixels.shape[2] % factor or pixels.shape[3] % factor:
            raise UserInputError(
                f"{name}: height and width must be multiples of {factor}, got {pixels.shape[2]}×{pixels.shape[3]}"
            )

    def _check_latents(self, latents: torch.Tensor, name: str) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise UserInputError(f"{name}: expected (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(pixels.to(placement(self.vae)[1])).latent_dist.mode()
        return (latents - self.shift_factor) * self.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(placement(self.vae)[1]) / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents).sample.clamp(-1.0, 1.0)

    def encode_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] (B, 3, H, W) → latents (B, C, H/f, W/f)."""
        self._check_pixels(rgb, 3, "rgb")
        return self._encode(rgb)

    def encode_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """Normalised depth in [-1, 1] (B, 1, H, W) → latents (B, C, H/f, W/f)."""
        self._check_pixels(depth, 1, "depth")
        return self._encode(depth.expand(-1, 3, -1, -1))

    def encode_metric_depth(
        self, depth: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Depth in any unit (B, 1, H, W) → latents and the per-image `(near, far)` of the normalisation."""
        self._check_pixels(depth, 1, "depth")
        normalized, near, far = normalize_depth(depth, mask)
        return self.encode_depth(normalized), near, far

    def encode_rgbd(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """RGB and normalised depth → joint latents `[rgb, depth]` (B, 2C, h, w), in one VAE pass."""
        self._check_pixels(rgb, 3, "rgb")
        self._check_pixels(depth, 1, "depth")
        if rgb.shape[0] != depth.shape[0] or rgb.shape[2:] != depth.shape[2:]:
            raise UserInputError(f"rgb {tuple(rgb.shape)} and depth {tuple(depth.shape)} differ in batch or size")
        latents = self._encode(torch.cat([rgb, depth.expand(-1, 3, -1, -1)], dim=0))
        return join_modalities(*latents.chunk(2, dim=0))

    def decode_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) → RGB in [-1, 1] (B, 3, h·f, w·f)."""
        self._check_latents(latents, "rgb latents")
        return self._decode(latents)

    def decode_depth(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) → normalised depth in [-1, 1] (B, 1, h·f, w·f), the mean of the 3 channels."""
        self._check_latents(latents, "depth latents")
        return self._decode(latents).mean(dim=1, keepdim=True)

    def decode_rgbd(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint latents (B, 2C, h, w) → RGB (B, 3, H, W) and normalised depth (B, 1, H, W), in one VAE pass."""
        rgb_latents, depth_latents = split_modalities(latents)
        self._check_latents(rgb_latents, "rgb latents")
        rgb, depth = self._decode(torch.cat([rgb_latents, depth_latents], dim=0)).chunk(2, dim=0)
        return rgb, depth.mean(dim=1, keepdim=True)
