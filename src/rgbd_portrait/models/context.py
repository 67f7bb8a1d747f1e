"""The backbone's cross-attention context (`encoder_hidden_states`), without any text encoder.

Two interchangeable components, both diffusers `ModelMixin` + `ConfigMixin` (saved as `config.json` + safetensors):

* `LearnedContext` (default): a few learned tokens shared by every sample. No text or CLIP weights needed.
* `ClipImageContext`: the CLIP image embedding of the reference as one token (as in Animate Anyone), from a
  CLIP vision model in a LOCAL transformers folder; a linear layer maps it to the UNet's width when they differ.
  Dropped samples (guidance, reference dropout) get a zero token.

Both are called as `context(batch_size=B, reference_rgb=None | (B, 3, H, W) in [-1, 1], drop=None | (B,) bool)`
and return (B, tokens, cross_attention_dim).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.weights import assign_weights, empty_weights

# OpenAI CLIP's pixel statistics, used when the CLIP folder has no preprocessor_config.json.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class LearnedContext(ModelMixin, ConfigMixin):
    """`num_tokens` learned context tokens of width `cross_attention_dim`."""

    @register_to_config
    def __init__(self, cross_attention_dim: int, num_tokens: int = 4):
        super().__init__()
        # Unit scale, like the layer-normalised text embeddings a pretrained cross-attention was trained on.
        self.tokens = nn.Parameter(torch.randn(num_tokens, cross_attention_dim))

    @property
    def cross_attention_dim(self) -> int:
        return self.config.cross_attention_dim

    def forward(
        self, *, batch_size: int, reference_rgb: torch.Tensor | None = None, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.tokens.unsqueeze(0).expand(batch_size, -1, -1)


def _import_clip():
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError as error:
        raise UserInputError(
            "the CLIP context needs transformers: pip install 'rgbd-portrait[transformers]'"
        ) from error
    return CLIPVisionConfig, CLIPVisionModelWithProjection


class ClipImageContext(ModelMixin, ConfigMixin):
    """One context token: the CLIP image embedding of the reference. The CLIP encoder is frozen unless
    `train_encoder`; the projection (present when CLIP's projection_dim differs from the UNet's width) trains."""

    @register_to_config
    def __init__(
        self,
        clip_config: dict,
        cross_attention_dim: int,
        image_mean: tuple[float, float, float] = CLIP_IMAGE_MEAN,
        image_std: tuple[float, float, float] = CLIP_IMAGE_STD,
        train_encoder: bool = False,
    ):
        super().__init__()
        clip_config_class, clip_model_class = _import_clip()
        self.encoder = clip_model_class(clip_config_class.from_dict(clip_config))
        self.encoder.requires_grad_(train_encoder)
        projection_dim = self.encoder.config.projection_dim
        self.projection = (
            nn.Identity() if projection_dim == cross_attention_dim else nn.Linear(projection_dim, cross_attention_dim)
        )

    @classmethod
    def from_clip_folder(
        cls, path: str | os.PathLike, *, cross_attention_dim: int, train_encoder: bool = False
    ) -> ClipImageContext:
        """Load a `CLIPVisionModelWithProjection` saved by transformers in the local folder `path`."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserInputError(f"{path}: not a CLIP model folder (no config.json)")
        _, clip_model_class = _import_clip()
        try:
            clip = clip_model_class.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserInputError(f"{path}: cannot load the CLIP vision model ({first_line})") from error
        statistics = {}
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            settings = json.loads(preprocessor.read_text())
            statistics = {key: tuple(settings[key]) for key in ("image_mean", "image_std") if key in settings}
        with empty_weights():
            context = cls(
                clip_config=clip.config.to_dict(),
                cross_attention_dim=cross_attention_dim,
                train_encoder=train_encoder,
                **statistics,
            )
        if isinstance(context.projection, nn.Linear):
            # The projection is new: give it a real random initialisation.
            context.projection = nn.Linear(clip.config.projection_dim, cross_attention_dim)
        weights = {f"encoder.{key}": tensor for key, tensor in clip.state_dict().items()}
        weights |= {f"projection.{key}": tensor for key, tensor in context.projection.state_dict().items()}
        assign_weights(context, weights, source=str(path))
        return context

    @property
    def cross_attention_dim(self) -> int:
        return self.config.cross_attention_dim

    def _pixels(self, reference_rgb: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → CLIP's input: resized to its square size and standardised."""
        size = self.encoder.config.image_size
        pixels = (reference_rgb.float() + 1.0) / 2.0
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.config.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.encoder.dtype)

    def forward(
        self, *, batch_size: int, reference_rgb: torch.Tensor | None = None, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        if reference_rgb is None:
            return next(self.parameters()).new_zeros(batch_size, 1, self.cross_attention_dim)
        if reference_rgb.ndim != 4 or reference_rgb.shape[:2] != (batch_size, 3):
            raise UserInputError(f"reference_rgb: expected ({batch_size}, 3, H, W), got {tuple(reference_rgb.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_encoder):
            embeds = self.encoder(pixel_values=self._pixels(reference_rgb)).image_embeds
        tokens = self.projection(embeds).unsqueeze(1)
        if drop is not None:
            tokens = torch.where(drop.to(tokens.device).view(-1, 1, 1), torch.zeros_like(tokens), tokens)
        return tokens
