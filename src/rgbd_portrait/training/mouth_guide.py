"""Fitting a `MouthGuide` (`rgbd_portrait.models.mouth_guide`) on talking videos with face landmarks.

Every map is a least-squares fit over the frames of whole sequences, each sequence centred on its own means (only
changes over time count: a speaker's resting mouth or lighting does not), in closed form:

* audio → opening: a ridge regression on standardised features, the strength picked among `RIDGE_STRENGTHS` by
  the Pearson correlation per sequence on every fifth sequence held out (the way the benchmark scores a mouth),
  then refitted on all of them; or, with hidden widths, a small network (AdamW on standardised features and
  openings, dropout after each hidden layer, a fixed seed), scored the same way, then refitted on all;
* opening → latents: the mean latent change per unit of opening (covariance over the opening's variance), the
  opening direction; latents → opening is the coordinate along it.

The latents are those of the mouth region of each clip (`face_regions.box_cells` of its `mouth_box`), the cells
mouth-only animation generates; the read-out and the direction live on the union of those cells. The audio map
needs no latents, so it may be fitted on more videos than the latent maps (`SpeakingSequence.mouth_latents`
None): more clips of a speaker teach that speaker's mouth; other voices gained little past ~90 clips of one
speaker on GRID (docs/animate.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.lipsync import pearson
from rgbd_portrait.models.mouth_guide import MouthGuide

RIDGE_STRENGTHS = tuple(10.0**power for power in range(-1, 6))
# Sequences held out to pick the ridge strength and score the read-outs: every HOLD_OUT_EVERY-th.
HOLD_OUT_EVERY = 5
# The audio network's fit: on GRID speaker 1 these carry best to the unseen speakers (docs/animate.md).
NETWORK_EPOCHS = 60
NETWORK_BATCH = 256
NETWORK_LEARNING_RATE = 1e-3
NETWORK_WEIGHT_DECAY = 1e-2
NETWORK_DROPOUT = 0.2
NETWORK_SEED = 0


@dataclass
class SpeakingSequence:
    """The frames of one talking video: true mouth openings (T,), audio windows (T, window, D), and the codec
    latents (T, 2C, h, w) with only the mouth region kept (zero elsewhere), or None for a video that only the
    audio map is fitted on."""

    openings: np.ndarray
    audio: np.ndarray
    mouth_latents: np.ndarray | None


def centred(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Features (T, D) and targets (T,) of several sequences, each centred on its own means, stacked."""
    features = np.concatenate([x - x.mean(axis=0) for x, _ in parts])
    targets = np.concatenate([y - y.mean() for _, y in parts])
    return features, targets


def fit_ridges(features: np.ndarray, targets: np.ndarray, strengths) -> dict[float, np.ndarray]:
    """Ridge weights (fitted on standardised features, returned for the raw ones) per strength, for centred
    features and targets: the Gram matrix is formed once for all strengths."""
    scale = features.std(axis=0) + 1e-6
    scaled = features / scale
    gram, moment = scaled.T @ scaled, scaled.T @ targets
    identity = np.eye(len(gram))
    return {strength: np.linalg.solve(gram + strength * identity, moment) / scale for strength in strengths}


def held_out_split(parts: list) -> tuple[list, list]:
    """The sequences held out to score a read-out (every `HOLD_OUT_EVERY`-th) and those it is fitted on."""
    held_out = parts[::HOLD_OUT_EVERY]
    fitting = [part for number, part in enumerate(parts) if number % HOLD_OUT_EVERY]
    if not held_out or not fitting:
        raise UserInputError(f"a read-out needs at least 2 talking sequences, got {len(parts)}")
    return held_out, fitting


def ridge_read_out(
    parts: list[tuple[np.ndarray, np.ndarray]], strengths=RIDGE_STRENGTHS
) -> tuple[np.ndarray, float, float]:
    """Ridge weights from features (T, D) to targets (T,) over sequences `parts`, at the strength best on the
    held-out sequences (mean Pearson per sequence); that strength and its held-out score."""
    held_out, fitting = held_out_split(parts)
    scores = {
        strength: float(np.nanmean([pearson(x @ weights, y) for x, y in held_out]))
        for strength, weights in fit_ridges(*centred(fitting), strengths).items()
    }
    best = max(scores, key=lambda strength: np.nan_to_num(scores[strength], nan=-np.inf))
    return fit_ridges(*centred(parts), [best])[best], best, scores[best]


def fit_audio_network(guide: MouthGuide, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Fit `guide`'s audio network (its `audio_hidden` widths, GELU, dropout) from features (T, D) to targets (T,)
    over sequences `parts`, each centred; the same for the same data whatever the global random state."""
    features, targets = centred(parts)
    scale = features.std(axis=0) + 1e-6
    target_scale = float(targets.std()) + 1e-12
    inputs = torch.from_numpy(features / scale).float()
    outputs = torch.from_numpy(targets / target_scale).float()
    hidden = guide.audio_hidden
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(NETWORK_SEED)
        layers: list[nn.Module] = []
        for fan_in, width in zip((inputs.shape[1], *hidden), hidden):
            layers += [nn.Linear(fan_in, width), nn.GELU(), nn.Dropout(NETWORK_DROPOUT)]
        network = nn.Sequential(*layers, nn.Linear(hidden[-1], 1))
        optimizer = torch.optim.AdamW(network.parameters(), lr=NETWORK_LEARNING_RATE, weight_decay=NETWORK_WEIGHT_DECAY)
        for _ in range(NETWORK_EPOCHS):
            for batch in torch.randperm(len(inputs)).split(NETWORK_BATCH):
                loss = (network(inputs[batch]).squeeze(1) - outputs[batch]).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    linears = [layer for layer in network if isinstance(layer, nn.Linear)]
    guide.set_audio_network(torch.from_numpy(scale), linears, target_scale)


def network_read_out(guide: MouthGuide, parts: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Fit `guide`'s audio network on sequences `parts`; its score fitted without the held-out sequences (mean
    Pearson per held-out sequence)."""
    held_out, fitting = held_out_split(parts)
    fit_audio_network(guide, fitting)
    score = float(np.nanmean([pearson(guide.openings_from_audio(x), y) for x, y in held_out]))
    fit_audio_network(guide, parts)
    return score


def opening_direction(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The mean change of the features (T, D) per unit of the target (T,) over sequences `parts`, each centred."""
    features, targets = centred(parts)
    return features.T @ targets / max(float(targets @ targets), 1e-12)


def projection(direction: np.ndarray) -> np.ndarray:
    """The read-out that gives a feature vector's coordinate along `direction` (least squares)."""
    return direction / max(float(direction @ direction), 1e-24)


def fit_mouth_guide(
    sequences: list[SpeakingSequence], audio_hidden: Sequence[int] = ()
) -> tuple[MouthGuide, dict[str, float]]:
    """A guide fitted on `sequences`, its audio map linear or a network of `audio_hidden` widths, on all of them,
    its latent maps on those with mouth latents (at least 2); and the held-out correlations of its two
    read-outs."""
    frames, window, feature_dim = sequences[0].audio.shape
    with_latents = [s for s in sequences if s.mouth_latents is not None]
    if len(with_latents) < 2:
        raise UserInputError(f"mouth guide: needs at least 2 talking sequences with latents, got {len(with_latents)}")
    latent_shape = with_latents[0].mouth_latents.shape[1:]
    region = np.any([np.any(s.mouth_latents != 0, axis=(0, 1)) for s in with_latents], axis=0)  # (h, w)
    if not region.any():
        raise UserInputError("mouth guide: the talking sequences have no mouth region")
    audio = [(s.audio.reshape(len(s.openings), -1), s.openings) for s in sequences]
    mouth = [(s.mouth_latents[:, :, region].reshape(len(s.openings), -1), s.openings) for s in with_latents]
    # The latents are read by their coordinate along the opening direction: a ridge read-out follows the true
    # mouth as well on clean latents (0.99 on GRID) but reads noise in the estimates of early denoising steps.
    held_out, fitting = held_out_split(mouth)
    held_out_readout = projection(opening_direction(fitting))
    latent_r = float(np.nanmean([pearson(x @ held_out_readout, y) for x, y in held_out]))
    direction = opening_direction(mouth)

    guide = MouthGuide(window, feature_dim, latent_shape, audio_hidden=audio_hidden)
    if audio_hidden:
        audio_r = network_read_out(guide, audio)
    else:
        audio_weights, _, audio_r = ridge_read_out(audio)
        guide.audio_weights.copy_(torch.from_numpy(audio_weights.reshape(window, feature_dim)))

    def on_region(values: np.ndarray) -> torch.Tensor:
        full = torch.zeros(latent_shape)
        full[:, torch.from_numpy(region)] = torch.from_numpy(values.reshape(latent_shape[0], -1)).float()
        return full

    guide.latent_readout.copy_(on_region(projection(direction)))
    guide.latent_direction.copy_(on_region(direction))
    return guide, {"mouth_guide_audio_r": audio_r, "mouth_guide_latent_r": latent_r}
