"""The codec stage: train or fine-tune the `AutoencoderKL` on RGB images and normalised depth maps.

Each batch encodes the RGB images and the depth maps (replicated to 3 channels, Marigold's convention) as one
batch of images. The loss is an L1 reconstruction, plus `kl_weight` times the KL divergence of the posterior
to N(0, I), plus `edge_weight` times an L1 on the image gradients (finite differences): sharp edges without a
perceptual network and its downloaded weights. Depth images are weighted by `depth_weight`.

With `adversarial_weight` > 0 a small patch discriminator, trained alongside from scratch, judges the RGB
reconstructions against the images (hinge losses), and the decoder is pushed towards what it calls real: an L1
loss alone decodes the average of the details a latent could hold, which is a blur. Depth keeps its L1 alone
(a smooth surface has no texture to invent). Both losses come out of one forward pass and one backward pass: the
discriminator scores the detached reconstructions for its own loss, and the decoder's term reads the
discriminator through detached weights, so each loss moves only its own network. The decoder's term is scaled
as in VQGAN (Esser et al. 2021): to the reconstruction loss's gradient norm at the decoder's last layer, times
`adversarial_weight`; and it is gated by the discriminator's accuracy on the batch, from nothing at chance to
full at `CONFIDENT_ACCURACY`: a discriminator that cannot yet tell decoded from real gives the decoder noise.

After training, `calibrate_latent_scale` sets the VAE's `scaling_factor` and `shift_factor` so that the
latents the diffusion stage sees have zero mean and unit variance, as Stable Diffusion's constant does for its
VAE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from diffusers import AutoencoderKL
from torch import nn
from torch.func import functional_call

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


class PatchDiscriminator(nn.Module):
    """Real-or-decoded logits per patch of (B, 3, H, W) images in [-1, 1], each seeing ~34 px of the image: the
    scale of skin texture, hair strands and eyelids at 128 px, not the face's layout (the L1 loss keeps that)."""

    def __init__(self, channels: int = 64):
        super().__init__()

        def block(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(inputs, outputs, 4, stride=stride, padding=1),
                nn.GroupNorm(8, outputs),
                nn.LeakyReLU(0.2),
            ]

        self.layers = nn.Sequential(
            nn.Conv2d(3, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            *block(channels, 2 * channels, 2),
            *block(2 * channels, 4 * channels, 1),
            nn.Conv2d(4 * channels, 1, 4, stride=1, padding=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class CodecOutputs(NamedTuple):
    reconstruction: torch.Tensor  # (2B, 3, H, W): RGB then depth, as `codec_images` lays them out
    kl: torch.Tensor  # (2B,)
    # With a discriminator: its logits on the RGB images, on the detached RGB reconstructions (its own loss), and
    # on the reconstructions through its detached weights (the decoder's loss).
    real_logits: torch.Tensor | None = None
    fake_logits: torch.Tensor | None = None
    decoder_logits: torch.Tensor | None = None


class CodecTrainingModule(nn.Module):
    """What the codec stage trains (and DDP wraps): the VAE's encode → sample → decode pass, and the
    discriminator when there is one (inside the module, so DDP averages its gradients too)."""

    def __init__(self, vae: AutoencoderKL, discriminator: PatchDiscriminator | None = None):
        super().__init__()
        self.vae = vae
        self.discriminator = discriminator

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> CodecOutputs:
        """Reconstructions of `images` (laid out by `codec_images`), the per-image KL divergence of their
        posteriors, and the discriminator's logits on the RGB half."""
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator=generator)).sample
        if self.discriminator is None:
            return CodecOutputs(reconstruction, posterior.kl())
        rgb = images.shape[0] // 2
        frozen = {name: parameter.detach() for name, parameter in self.discriminator.named_parameters()}
        return CodecOutputs(
            reconstruction,
            posterior.kl(),
            real_logits=self.discriminator(images[:rgb]),
            fake_logits=self.discriminator(reconstruction[:rgb].detach()),
            decoder_logits=functional_call(self.discriminator, frozen, (reconstruction[:rgb],)),
        )


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


# The discriminator's batch accuracy from which the decoder takes its full adversarial term (none at 0.5).
CONFIDENT_ACCURACY = 0.75


def codec_loss(
    outputs: CodecOutputs, target: torch.Tensor, stage: CodecStageConfig, *, last_layer: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stage's loss for a batch laid out by `codec_images` (first half RGB, second half depth).

    `last_layer` (the decoder's output weight) scales the adversarial term, when `outputs` has one."""
    reconstruction, kl = outputs.reconstruction, outputs.kl
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
    if outputs.decoder_logits is not None:
        if last_layer is None:
            raise ValueError("codec_loss: the adversarial term needs the decoder's last layer")
        decoder_term = -outputs.decoder_logits.mean()
        discriminator_term = (1 - outputs.real_logits).relu().mean() + (1 + outputs.fake_logits).relu().mean()
        accuracy = torch.cat([(outputs.real_logits > 0).flatten(), (outputs.fake_logits < 0).flatten()]).float().mean()
        (reconstruction_gradient,) = torch.autograd.grad(loss, last_layer, retain_graph=True)
        (adversarial_gradient,) = torch.autograd.grad(decoder_term, last_layer, retain_graph=True)
        balance = (reconstruction_gradient.norm() / (adversarial_gradient.norm() + 1e-4)).clamp(max=1e4)
        gate = ((accuracy - 0.5) / (CONFIDENT_ACCURACY - 0.5)).clamp(0, 1)
        adversarial_scale = (stage.adversarial_weight * balance * gate).detach()
        loss = loss + adversarial_scale * decoder_term + discriminator_term
        metrics |= {
            "adversarial": decoder_term.detach(),
            "adversarial_scale": adversarial_scale,
            "discriminator": discriminator_term.detach(),
            # Above 0.5 the discriminator tells the decoder's images from the real ones.
            "discriminator_accuracy": accuracy,
        }
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
