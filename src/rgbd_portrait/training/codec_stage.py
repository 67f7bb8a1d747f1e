"""The codec stage: train or fine-tune the `AutoencoderKL` on RGB images and normalised depth maps.

Each batch encodes the RGB images and the depth maps (replicated to 3 channels, Marigold's convention) as one
batch of images. The loss is an L1 reconstruction, plus `kl_weight` times the KL divergence of the posterior
to N(0, I), plus `edge_weight` times an L1 on the image gradients (finite differences): sharp edges without a
perceptual network and its downloaded weights. Depth images are weighted by `depth_weight`.

After training, `calibrate_latent_scale` sets the VAE's `scaling_factor` and `shift_factor` so that the
latents the diffusion stage sees have zero mean and unit variance, as Stable Diffusion's constant does for its
VAE.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import AutoencoderKL
from torch import nn

from rgbd_portrait.training.config import CodecStageConfig


def codec_images(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """RGB (B, 3, H, W) and depth (B, 1, H, W) of a data batch → one batch of 2B three-channel images."""
    return torch.cat([batch["rgb"], batch["depth"].expand(-1, 3, -1, -1)], dim=0)


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random `size`×`size` window, the same for the whole batch (B, C, H, W); drawn from `generator`."""
    height, width = images.shape[-2:]
    top = int(torch.randint(height - size + 1, (1,), generator=generator, device=generator.device))
    left = int(torch.randint(width - size + 1, (1,), generator=generator, device=generator.device))
    return images[..., top : top + size, left : left + size]


class CodecTrainingModule(nn.Module):
    """What the codec stage trains (and DDP wraps): the VAE's encode → sample → decode pass."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions of `images` and the per-image KL divergence of their posteriors."""
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator=generator)).sample
        return reconstruction, posterior.kl()


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def codec_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, kl: torch.Tensor, stage: CodecStageConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stage's loss for a batch laid out by `codec_images` (first half RGB, second half depth)."""
    batch = target.shape[0] // 2
    weights = torch.cat([torch.ones(batch), torch.full((batch,), stage.depth_weight)]).to(target)
    per_image_l1 = (reconstruction - target).abs().flatten(1).mean(1)
    reconstruction_term = (weights * per_image_l1).sum() / weights.sum()
    loss = reconstruction_term + stage.kl_weight * kl.mean()
    metrics = {
        "rgb_l1": per_image_l1[:batch].mean().detach(),
        "depth_l1": per_image_l1[batch:].mean().detach(),
        "kl": kl.mean().detach(),
    }
    if stage.edge_weight > 0:
        edge_term = sum(
            (weights.view(-1, 1, 1, 1) * (predicted - expected).abs()).mean() / weights.mean()
            for predicted, expected in zip(image_gradients(reconstruction), image_gradients(target))
        )
        loss = loss + stage.edge_weight * edge_term
        metrics["edge_l1"] = edge_term.detach()
    return loss, metrics


@torch.no_grad()
def calibrate_latent_scale(vae: AutoencoderKL, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """Set the VAE's `shift_factor` and `scaling_factor` to the mean and 1/std of its latents over `batches`.

    Returns (shift, scale). The latents are posterior modes of both RGB and depth, as the diffusion stage uses.
    """
    total, total_squares, count = 0.0, 0.0, 0
    device = next(vae.parameters()).device
    for batch in batches:
        images = codec_images(batch).to(device=device, dtype=vae.dtype)
        latents = vae.encode(images).latent_dist.mode().double()
        total += latents.sum().item()
        total_squares += latents.square().sum().item()
        count += latents.numel()
    if count == 0:
        raise ValueError("latent-scale calibration needs at least one batch")
    mean = total / count
    std = max(total_squares / count - mean * mean, 1e-12) ** 0.5
    vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    return mean, 1.0 / std
