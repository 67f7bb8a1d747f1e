"""`MouthGuide`: lip sync by steering mouth-only sampling toward the mouth opening the audio predicts.

Motion layers that learn the mouth through the denoising loss alone stay at chance after the hundreds of steps a
CPU affords (docs/animate.md), although a linear map from the audio features they hear already follows the true
mouth (0.80 on held-out GRID clips of the training speaker, 0.63 on unseen speakers: `benchmarks/results/
mouth_cues.md`). The guide holds three maps fitted on real talking video (`rgbd_portrait.training.mouth_guide`),
linear and in closed form but for the audio map, which may be a small network:

* audio → opening: each frame's audio features with its ± r neighbours (the motion layers' windows), centred on
  the track's mean, to the mouth opening (`face_regions.mouth_opening`) about its mean: linear (`audio_weights`
  over the window), or, with `audio_hidden` widths, a small network (the window standardised by `audio_scale`,
  hidden layers with GELU, then `audio_weights` over the last hidden layer), which carries better to speakers it
  was not fitted on (docs/animate.md);
* opening → latents (`latent_direction`): the mean change of the codec latents (RGB and depth) of the mouth
  region per unit of opening, the direction in which a mouth opens;
* latents → opening (`latent_readout`): the opening read from those latents, their coordinate along it.

At each denoising step of a mouth-only animation the predicted clean latents of the generated frames of a window
move along the opening direction until their read-outs rise and fall as the openings the audio predicts do
(`steer`). Read-outs are compared across frames of one face, never with the training speakers' absolute values
(another face, or an estimate at high noise, reads off by an amount common to its frames): each window continues
at the level of the known frames before it, the reference photo for the first (`level_of`). The denoiser
continues from the steered prediction, so the later steps draw the mouth it was moved to (classifier guidance
with a regressor). Animation scales the predicted openings by its `mouth_guidance`: a regression's predictions
are shrunk toward the mean, and the drawn mouth opens less than its read-out says (three times the predicted
course follows real mouths best of 1, 2 and 3 on GRID, docs/animate.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MouthGuide(nn.Module):
    """The fitted maps (zeros until fitted or loaded): see the module text. Its buffers are saved with the motion
    layers that hold it."""

    def __init__(
        self,
        audio_window: int,
        audio_feature_dim: int,
        latent_shape: Sequence[int],
        audio_hidden: Sequence[int] = (),
    ):
        super().__init__()
        self.audio_window, self.audio_feature_dim = audio_window, audio_feature_dim
        self.audio_hidden = tuple(int(width) for width in audio_hidden)
        if self.audio_hidden:
            self.register_buffer("audio_scale", torch.ones(audio_window, audio_feature_dim))
            for index, (fan_in, width) in enumerate(
                zip((audio_window * audio_feature_dim,) + self.audio_hidden, self.audio_hidden)
            ):
                self.register_buffer(f"audio_hidden{index}_weight", torch.zeros(width, fan_in))
                self.register_buffer(f"audio_hidden{index}_bias", torch.zeros(width))
            self.register_buffer("audio_weights", torch.zeros(self.audio_hidden[-1]))
        else:
            self.register_buffer("audio_weights", torch.zeros(audio_window, audio_feature_dim))
        self.register_buffer("latent_readout", torch.zeros(*latent_shape))
        self.register_buffer("latent_direction", torch.zeros(*latent_shape))

    def audio_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The hidden layers' (weight, bias) of the audio map, in order (none for a linear map)."""
        return [
            (getattr(self, f"audio_hidden{index}_weight"), getattr(self, f"audio_hidden{index}_bias"))
            for index in range(len(self.audio_hidden))
        ]

    @torch.no_grad()
    def set_audio_network(self, scale: torch.Tensor, linears: Sequence[nn.Linear], output_scale: float) -> None:
        """Hold a fitted audio network: `scale` divides the centred windows, then the hidden `linears` (GELU after
        each) and the last one, to one output, which times `output_scale` is the opening."""
        *hidden, output = linears
        self.audio_scale.copy_(scale.reshape(self.audio_scale.shape))
        for (weight, bias), layer in zip(self.audio_layers(), hidden, strict=True):
            weight.copy_(layer.weight)
            bias.copy_(layer.bias)
        self.audio_weights.copy_(output.weight[0] * output_scale)

    @torch.no_grad()
    def openings_from_audio(self, windows: np.ndarray) -> np.ndarray:
        """The mouth opening per frame (T,) about its mean that the audio windows (T, window, D) of a whole track
        (or the same flattened, (T, window·D)) predict."""
        features = torch.from_numpy(np.asarray(windows, dtype=np.float64).reshape(len(windows), -1))
        features = features - features.mean(dim=0)
        if self.audio_hidden:
            features = features / self.audio_scale.detach().double().cpu().reshape(-1)
        for weight, bias in self.audio_layers():
            features = F.gelu(features @ weight.detach().double().cpu().T + bias.detach().double().cpu())
        openings = features @ self.audio_weights.detach().double().cpu().reshape(-1)
        return (openings - openings.mean()).numpy()

    def read_opening(self, latents: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The opening read from latents (N, 2C, h, w) on the latent cells (h, w) of the mouth region: (N,)."""
        readout = self.latent_readout.to(latents) * cells.to(latents)
        return (latents * readout).flatten(1).sum(dim=1)

    def level_of(self, latents: torch.Tensor, openings: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """How far the read-outs of known frames' latents (G, 2C, h, w) sit above their openings (G,): the mean
        offset, the level `steer` continues them at."""
        return (self.read_opening(latents, cells) - openings.to(latents)).mean()

    def steer(
        self,
        clean: torch.Tensor,
        targets: torch.Tensor,
        cells: torch.Tensor,
        *,
        level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Clean latents (N, 2C, h, w) of N frames moved on `cells` (h, w) along the opening direction until they
        read `targets` (N,) as their openings, each plus `level`; frames whose target is NaN are left as they are.

        `level` (`level_of` the known frames just before) makes generated frames continue from them: without
        it only the openings' course over these frames is imposed (each frame's change is its shortfall less the
        frames' mean shortfall, which needs at least 2 frames) and their common level stays the model's, so a
        window of silence is not drawn closed after a window of speech."""
        cells = cells.to(clean)
        direction = self.latent_direction.to(clean) * cells
        gain = (self.latent_readout.to(clean) * direction).sum()
        steered = targets.isfinite().to(clean.device)
        if not gain > 0 or int(steered.sum()) < (1 if level is not None else 2):
            return clean  # no fitted mouth in the region, or nothing to follow
        shortfall = targets.to(clean) - self.read_opening(clean, cells)
        offset = shortfall[steered].mean() if level is None else -level.to(clean)
        change = torch.where(steered, shortfall - offset, torch.zeros_like(shortfall))
        return clean + change.view(-1, 1, 1, 1) * direction / gain
