"""`MotionLayers`: the temporal and audio layers of the talking-head model, inserted into the backbone by name.

The backbone stays a plain diffusers `UNet2DConditionModel` (no fork): the motion layers live in their own
component and run from forward hooks registered on named backbone modules. After every spatial layer of the
backbone (each transformer of an attention block; each resnet of a block without attention) the hook applies

    audio cross-attention   (at transformers only; `rgbd_portrait.models.audio`)
    temporal attention      (`rgbd_portrait.models.temporal`)

to that layer's output. Both start as the identity, so with fresh motion layers the backbone computes exactly
what the image model computes, frame by frame. Keeping the layers out of the backbone's module tree also keeps
the backbone's attention processors (and so the reference attention, paired by layer name with the reference
net) as they are: every frame reads the same reference bank.

The hooks act only inside `motion.frames(...)`, which says how the batch is made of clips and carries the audio
of each frame; outside it (every image task) they pass the backbone's outputs through untouched.

    motion = MotionLayers.for_backbone(model.backbone, audio_features=LogMelFeatures())
    model.add_motion_layers(motion)
    with motion.frames(num_frames=F, audio_windows=windows, drop_audio=drop):   # batch = clips × F frames
        prediction = model.denoise(noisy, timesteps, known=known, masks=masks, reference=per_frame_reference)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.audio import AudioCrossAttention, AudioProjection
from rgbd_portrait.models.mouth_guide import MouthGuide
from rgbd_portrait.models.temporal import temporal_layer

# The frame rate of the synthetic talking sequences and of prepared videos.
DEFAULT_FPS = 25.0


@dataclass(frozen=True)
class InsertionPoint:
    """A backbone module after which motion layers run: its name, its output channels, and whether it is a
    spatial transformer (which also gets audio cross-attention)."""

    name: str
    channels: int
    has_audio: bool


def insertion_points(unet: UNet2DConditionModel) -> list[InsertionPoint]:
    """The backbone's spatial layers in forward order: transformers of attention blocks, resnets elsewhere."""
    blocks = [(f"down_blocks.{index}", block) for index, block in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{index}", block) for index, block in enumerate(unet.up_blocks)]
    points = []
    for block_name, block in blocks:
        attentions = getattr(block, "attentions", None)
        for index, resnet in enumerate(block.resnets):
            # Attention j follows resnet j and keeps its width (in the mid block too).
            if attentions is not None and index < len(attentions):
                points.append(InsertionPoint(f"{block_name}.attentions.{index}", resnet.out_channels, True))
            elif attentions is None:
                points.append(InsertionPoint(f"{block_name}.resnets.{index}", resnet.out_channels, False))
    return points


class _MotionHook:
    """The forward hook of insertion point `index`: runs the motion layers on the module's output inside `frames`.

    An object rather than a closure, so that a deep copy of the model gets hooks calling the copied layers.
    """

    def __init__(self, motion: MotionLayers, index: int):
        self.motion = motion
        self.index = index

    def __call__(self, _module: nn.Module, _inputs, output):
        if self.motion._state is None:
            return output
        if isinstance(output, tuple):
            return (self.motion._run_layers(self.index, output[0]), *output[1:])
        if hasattr(output, "sample"):  # a transformer called with return_dict=True
            output.sample = self.motion._run_layers(self.index, output.sample)
            return output
        return self.motion._run_layers(self.index, output)


@dataclass
class _ClipState:
    """What the hooks need while `frames` is active."""

    num_frames: int
    batch_size: int  # clips × frames
    audio_tokens: torch.Tensor | None  # (batch_size, window, token_dim)
    audio_keep: torch.Tensor  # (batch_size,) 1 = the frame hears its audio


class MotionLayers(ModelMixin, ConfigMixin):
    """Temporal and audio layers for a backbone whose insertion points are `layer_names` (see the module text).

    Config: the layers' names, widths and which have audio attention (checked against the backbone when
    attached); `num_attention_heads`/`norm_num_groups` of the temporal and audio layers; `max_frames` per clip;
    the audio features the layers read (`audio_features`: a spec of `rgbd_portrait.data.audio`, with
    `audio_feature_dim`) over ± `audio_radius` frames, projected to `audio_token_dim`; `fps` the frame rate they
    were trained at; `window_frames` and `motion_frames` the clips they were trained on, which sampling uses by
    default (windows of that many frames, the first `motion_frames` of them given by the previous window);
    `mouth_only` whether animation generates only the mouth box by default (layers trained to fill it in,
    `train.motion.mouth_inpainting`); `mouth_guide_latents` the latent shape (2C, h, w) of a fitted `mouth_guide`
    (`rgbd_portrait.models.mouth_guide`; None: none) and `mouth_guide_audio_hidden` the hidden widths of its audio
    map (none: linear), and `mouth_guidance` the scale of the predicted openings mouth-only animation steers to by
    default (3, the best measured on GRID: docs/animate.md).
    """

    @register_to_config
    def __init__(
        self,
        layer_names: Sequence[str],
        layer_channels: Sequence[int],
        audio_layers: Sequence[bool],
        audio_features: dict[str, Any],
        audio_feature_dim: int,
        audio_radius: int = 2,
        audio_token_dim: int = 128,
        num_attention_heads: int = 8,
        norm_num_groups: int = 32,
        max_frames: int = 32,
        fps: float = DEFAULT_FPS,
        window_frames: int = 12,
        motion_frames: int = 2,
        mouth_only: bool = False,
        mouth_guide_latents: Sequence[int] | None = None,
        mouth_guide_audio_hidden: Sequence[int] = (),
        mouth_guidance: float = 3.0,
    ):
        super().__init__()
        if not len(layer_names) == len(layer_channels) == len(audio_layers):
            raise UserInputError("motion layers: layer_names, layer_channels and audio_layers differ in length")
        if audio_radius < 0 or max_frames <= 0 or not fps > 0:
            raise UserInputError("motion layers: audio_radius must be >= 0, max_frames and fps positive")
        if not 0 <= motion_frames < window_frames <= max_frames:
            raise UserInputError(
                f"motion layers: need 0 <= motion_frames < window_frames <= max_frames, got {motion_frames}, "
                f"{window_frames}, {max_frames}"
            )
        self.temporal = nn.ModuleList(
            temporal_layer(
                channels,
                num_attention_heads=num_attention_heads,
                norm_num_groups=norm_num_groups,
                max_frames=max_frames,
            )
            for channels in layer_channels
        )
        self.audio_projection = AudioProjection(audio_feature_dim, audio_token_dim, window=2 * audio_radius + 1)
        self.audio_attention = nn.ModuleList(
            AudioCrossAttention(channels, audio_token_dim, num_attention_heads=num_attention_heads)
            if has_audio
            else nn.Identity()
            for channels, has_audio in zip(layer_channels, audio_layers)
        )
        self.mouth_guide = None
        if mouth_guide_latents is not None:
            self.mouth_guide = MouthGuide(
                2 * audio_radius + 1, audio_feature_dim, mouth_guide_latents, audio_hidden=mouth_guide_audio_hidden
            )
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._state: _ClipState | None = None

    @classmethod
    def for_backbone(cls, backbone: UNet2DConditionModel, *, audio_features, **options: Any) -> MotionLayers:
        """Fresh (identity) motion layers for every insertion point of `backbone`.

        `audio_features` is a feature extractor of `rgbd_portrait.data.audio` (its spec and width are stored);
        `options` are the other config entries. The norm groups default to the backbone's.
        """
        points = insertion_points(backbone)
        options.setdefault("norm_num_groups", backbone.config.norm_num_groups)
        return cls(
            layer_names=[point.name for point in points],
            layer_channels=[point.channels for point in points],
            audio_layers=[point.has_audio for point in points],
            audio_features=audio_features.spec(),
            audio_feature_dim=audio_features.dim,
            **options,
        )

    def add_mouth_guide(self, guide: MouthGuide) -> None:
        """Hold a fitted `MouthGuide` (for the layers' audio windows), recorded in the config and saved with them."""
        if (guide.audio_window, guide.audio_feature_dim) != (self.audio_window, self.config.audio_feature_dim):
            raise ValueError(
                f"a mouth guide for audio windows {(guide.audio_window, guide.audio_feature_dim)} does not fit"
            )
        self.mouth_guide = guide.to(self.device)
        self.register_to_config(
            mouth_guide_latents=list(guide.latent_readout.shape), mouth_guide_audio_hidden=list(guide.audio_hidden)
        )

    @property
    def audio_window(self) -> int:
        return 2 * self.config.audio_radius + 1

    # -- inserting into the backbone -------------------------------------------------------------------------
    def attach(self, backbone: UNet2DConditionModel) -> None:
        """Register the hooks on `backbone`; its insertion points must match the config by name and width."""
        if self._hooks:
            raise RuntimeError("these motion layers are already attached to a backbone")
        points = insertion_points(backbone)
        expected = list(zip(self.config.layer_names, self.config.layer_channels, self.config.audio_layers))
        found = [(point.name, point.channels, point.has_audio) for point in points]
        if found != expected:
            raise UserInputError("motion layers: their layer names or widths do not match the backbone's")
        for index, point in enumerate(points):
            module = backbone.get_submodule(point.name)
            self._hooks.append(module.register_forward_hook(_MotionHook(self, index)))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _run_layers(self, index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        state = self._state
        if hidden_states.shape[0] != state.batch_size:
            raise ValueError(
                f"motion layers: the backbone runs a batch of {hidden_states.shape[0]}, the clips hold "
                f"{state.batch_size} frames; denoise inside frames() with the same batch"
            )
        if state.audio_tokens is not None and self.config.audio_layers[index]:
            hidden_states = self.audio_attention[index](hidden_states, state.audio_tokens, state.audio_keep)
        return self.temporal[index](hidden_states, num_frames=state.num_frames)

    # -- conditioning ----------------------------------------------------------------------------------------
    @contextmanager
    def frames(
        self,
        num_frames: int,
        *,
        batch_size: int,
        audio_windows: torch.Tensor | None = None,
        drop_audio: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Backbone calls inside see batches of `batch_size` frames: clips of `num_frames` consecutive frames.

        `audio_windows` (batch_size, 2r + 1, audio_feature_dim) are each frame's audio features (None: no audio
        at all); `drop_audio` (batch_size,) bool marks frames whose audio is dropped. The audio tokens are
        projected once here and reused by every backbone call inside the block.
        """
        if self._state is not None:
            raise RuntimeError("motion layers: frames() is already active")
        if not self._hooks:
            raise RuntimeError("motion layers: attach them to the backbone first (RGBDPortraitModel.add_motion_layers)")
        if not 0 < num_frames <= self.config.max_frames:
            raise UserInputError(f"clips of {num_frames} frames: the motion layers take 1 to {self.config.max_frames}")
        if batch_size % num_frames:
            raise UserInputError(f"a batch of {batch_size} frames is not made of clips of {num_frames}")
        tokens = None
        if audio_windows is not None:
            if audio_windows.shape[0] != batch_size:
                raise UserInputError(f"audio windows: {audio_windows.shape[0]} for a batch of {batch_size} frames")
            tokens = self.audio_projection(audio_windows.to(self.device))
        keep = torch.ones(batch_size, device=self.device)
        if drop_audio is not None:
            drop_audio = torch.as_tensor(drop_audio, device=self.device).reshape(-1)
            if drop_audio.shape[0] != batch_size:
                raise UserInputError(f"drop_audio: {drop_audio.shape[0]} flags for a batch of {batch_size} frames")
            keep = (~drop_audio.bool()).float()
        self._state = _ClipState(num_frames=num_frames, batch_size=batch_size, audio_tokens=tokens, audio_keep=keep)
        try:
            yield
        finally:
            self._state = None
