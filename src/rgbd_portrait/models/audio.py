"""Audio conditioning: per-frame audio features become tokens that the backbone reads by cross-attention.

* `AudioProjection`: the features of a frame and its ± r neighbours (N, 2r + 1, D_features), from
  `rgbd_portrait.data.audio`, → tokens (N, 2r + 1, D_tokens): a small MLP per neighbour plus a learned
  embedding of the neighbour's offset, layer-normalised.
* `AudioCrossAttention`: the spatial tokens of a frame (queries) attend to that frame's audio tokens (keys and
  values); the result is added to the hidden states. The output projection starts at zero, so the layer is
  the identity until trained. A per-frame `keep` weight (0 = audio dropped, for classifier-free guidance and
  audio dropout) scales the added part, so a dropped frame gets the hidden states unchanged, exactly.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from rgbd_portrait.errors import UserInputError


class AudioProjection(nn.Module):
    def __init__(self, feature_dim: int, token_dim: int, *, window: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(feature_dim, token_dim), nn.SiLU(), nn.Linear(token_dim, token_dim))
        self.offset_embedding = nn.Parameter(torch.randn(window, token_dim) * 0.02)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, window, feature_dim) → (N, window, token_dim)."""
        window, feature_dim = self.offset_embedding.shape[0], self.mlp[0].in_features
        if windows.ndim != 3 or tuple(windows.shape[1:]) != (window, feature_dim):
            raise UserInputError(f"audio windows: expected (N, {window}, {feature_dim}), got {tuple(windows.shape)}")
        return self.norm(self.mlp(windows.to(self.offset_embedding.dtype)) + self.offset_embedding)


class AudioCrossAttention(nn.Module):
    def __init__(self, channels: int, token_dim: int, *, num_attention_heads: int):
        super().__init__()
        if channels % num_attention_heads:
            raise UserInputError(f"audio attention: {num_attention_heads} heads do not divide {channels} channels")
        self.norm = nn.LayerNorm(channels)
        self.attention = Attention(
            query_dim=channels,
            cross_attention_dim=token_dim,
            heads=num_attention_heads,
            dim_head=channels // num_attention_heads,
            out_bias=True,
        )
        nn.init.zeros_(self.attention.to_out[0].weight)
        nn.init.zeros_(self.attention.to_out[0].bias)

    def forward(self, hidden_states: torch.Tensor, audio_tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """hidden states (N, C, H, W), audio tokens (N, T, token_dim), keep (N,) in [0, 1] → (N, C, H, W)."""
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)  # (N, H·W, C)
        attended = self.attention(self.norm(tokens), encoder_hidden_states=audio_tokens.to(tokens.dtype))
        update = attended.transpose(1, 2).reshape(batch, channels, height, width)
        return hidden_states + keep.to(update.dtype).view(batch, 1, 1, 1) * update
