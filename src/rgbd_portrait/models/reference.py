"""Reference attention: a copy of the UNet reads a reference image, the backbone attends to what it saw.

The reference network is a UNet with `C` input channels (the reference RGB latent), run on the clean latent at
timestep 0. Its self-attention layers run `ReferenceWriteProcessor`s that store their input hidden states
(B, tokens, channels) in a bank under the layer's name. The backbone's self-attention layers run
`ReferenceReadProcessor`s: keys and values come from the layer's own tokens concatenated, on the token axis,
with the bank entry of the layer with the *same name* (both networks share the architecture, so names pair
exactly). Queries are the backbone's tokens only, so the output keeps the backbone's shape.

The features are computed once per sampling call and reused at every step (`ReferenceFeatures`). A per-sample
`drop` flag takes the reference tokens out of the softmax, so a dropped sample attends only to itself, as in a
vanilla UNet (two unmasked attention calls, one per group: a mask would rule out SDPA's flash kernel); the
tokens stay in the graph, so every reference parameter gets a gradient (zero for dropped samples) and DDP never
sees an unused parameter. Without features (`reference=None`) the backbone computes
vanilla attention exactly.

Nothing of the reference UNet after its last self-attention input reaches the bank. `ReferenceNet` therefore
stops the forward pass there (the last write processor raises a private signal that `forward` catches) and
deletes the modules that would only run afterwards (the output head, the tail of the last transformer block),
which are found once by a dry run of the architecture on the meta device.

All processors use `F.scaled_dot_product_attention`, like diffusers' `AttnProcessor2_0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.backbone import check_supported_unet, public_config
from rgbd_portrait.models.weights import assign_weights, cloned_state_dict, empty_weights

_PROCESSOR_SUFFIX = ".processor"


@dataclass
class ReferenceFeatures:
    """What the backbone needs from the reference, computed once per sampling call.

    `bank` maps a self-attention layer name to the reference tokens (B, tokens, channels); `drop` (B,) bool
    marks samples that ignore the reference; `context` (B, tokens, cross_attention_dim) is the backbone's
    cross-attention input; `latent_size` is the (h, w) of the reference latent.
    """

    bank: dict[str, torch.Tensor]
    drop: torch.Tensor
    context: torch.Tensor
    latent_size: tuple[int, int]
    # Read from `drop` once here: a tensor-to-bool read inside every attention layer would synchronise with the
    # device there and break torch.compile's graph.
    any_dropped: bool = field(init=False)
    # With dropped samples: indices of the samples that read the reference, of those that do not, and the order
    # that puts [kept, dropped] back into batch order.
    kept: torch.Tensor | None = field(init=False, default=None)
    dropped: torch.Tensor | None = field(init=False, default=None)
    batch_order: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.any_dropped = bool(self.drop.any())
        if self.any_dropped:
            self.kept = (~self.drop).nonzero().squeeze(1)
            self.dropped = self.drop.nonzero().squeeze(1)
            self.batch_order = torch.cat([self.kept, self.dropped]).argsort()

    @property
    def absent(self) -> bool:
        """True for the features of no reference (`RGBDPortraitModel.no_reference`): there are no tokens to read."""
        return not self.bank

    @property
    def batch_size(self) -> int:
        return self.drop.shape[0]

    def repeat_each(self, repeats: int) -> ReferenceFeatures:
        """Each sample's features `repeats` times in a row (e.g. once per frame of a clip), without running the
        reference net again."""
        return ReferenceFeatures(
            bank={name: tokens.repeat_interleave(repeats, dim=0) for name, tokens in self.bank.items()},
            drop=self.drop.repeat_interleave(repeats, dim=0),
            context=self.context.repeat_interleave(repeats, dim=0),
            latent_size=self.latent_size,
        )


def self_attention_layer_names(unet: UNet2DConditionModel) -> list[str]:
    """Names of the UNet's self-attention modules (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1`)."""
    return [
        name for name, module in unet.named_modules() if isinstance(module, Attention) and not module.is_cross_attention
    ]


def _attention(
    attn: Attention,
    hidden_states: torch.Tensor,
    *,
    extra_tokens: torch.Tensor | None = None,
    reference: ReferenceFeatures | None = None,
) -> torch.Tensor:
    """Self-attention of `hidden_states` (B, N, C), with `extra_tokens` (B, M, C) appended to keys and values.

    Without extra tokens this is exactly diffusers' `AttnProcessor2_0` for 3-D inputs. With them, the samples
    that `reference` drops ignore the extra tokens.
    """
    batch_size = hidden_states.shape[0]
    key_value_states = hidden_states if extra_tokens is None else torch.cat([hidden_states, extra_tokens], dim=1)
    query = attn.to_q(hidden_states)
    key = attn.to_k(key_value_states)
    value = attn.to_v(key_value_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    if extra_tokens is not None and reference is not None and reference.any_dropped:
        output = _attention_without_dropped_extra(query, key, value, reference, own_tokens=hidden_states.shape[1])
    else:
        output = F.scaled_dot_product_attention(query, key, value)
    output = output.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
    output = attn.to_out[0](output)
    output = attn.to_out[1](output)
    if attn.residual_connection:
        output = output + hidden_states
    return output / attn.rescale_output_factor


def _attention_without_dropped_extra(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, reference: ReferenceFeatures, *, own_tokens: int
) -> torch.Tensor:
    """SDPA over all keys for the samples that keep the reference and over their own `own_tokens` keys for those
    that drop it, returned in batch order. Two unmasked calls rather than one masked: a mask rules out SDPA's flash
    kernel on GPUs (on the CPU the two are within noise of each other, docs/training.md)."""
    kept, dropped = reference.kept, reference.dropped
    with_reference = F.scaled_dot_product_attention(query[kept], key[kept], value[kept])
    alone = F.scaled_dot_product_attention(query[dropped], key[dropped, :, :own_tokens], value[dropped, :, :own_tokens])
    return torch.cat([with_reference, alone])[reference.batch_order]


def _check_plain_self_attention(attn: Attention, hidden_states: torch.Tensor, attention_mask, layer_name: str):
    if (
        hidden_states.ndim != 3
        or attention_mask is not None
        or attn.group_norm is not None
        or attn.spatial_norm is not None
    ):
        raise ValueError(f"{layer_name}: reference attention supports unmasked transformer self-attention only")


class _ReferenceBankComplete(Exception):
    """Raised by the last write processor: the rest of the reference UNet's forward pass is not needed."""


class ReferenceWriteProcessor:
    """Reference UNet self-attention: store the input tokens in the bank, then attend as usual."""

    def __init__(self, layer_name: str, *, last: bool = False):
        self.layer_name = layer_name
        self.last = last

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_bank: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        _check_plain_self_attention(attn, hidden_states, attention_mask, self.layer_name)
        if reference_bank is None:
            raise ValueError(f"{self.layer_name}: run the reference UNet through ReferenceNet, which passes the bank")
        reference_bank[self.layer_name] = hidden_states
        if self.last:
            raise _ReferenceBankComplete
        return _attention(attn, hidden_states)


class ReferenceReadProcessor:
    """Backbone self-attention: attend to the layer's own tokens and to the paired reference tokens."""

    def __init__(self, layer_name: str):
        self.layer_name = layer_name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference: ReferenceFeatures | None = None,
    ) -> torch.Tensor:
        _check_plain_self_attention(attn, hidden_states, attention_mask, self.layer_name)
        if reference is None or reference.absent:
            return _attention(attn, hidden_states)
        if self.layer_name not in reference.bank:
            raise ValueError(f"{self.layer_name}: no reference features for this layer")
        tokens = reference.bank[self.layer_name]
        if tokens.shape[0] != hidden_states.shape[0] or tokens.shape[2] != hidden_states.shape[2]:
            raise ValueError(
                f"{self.layer_name}: reference tokens {tuple(tokens.shape)} do not fit hidden states "
                f"{tuple(hidden_states.shape)}"
            )
        return _attention(attn, hidden_states, extra_tokens=tokens.to(hidden_states.dtype), reference=reference)


class ContextAttentionProcessor(AttnProcessor2_0):
    """diffusers' SDPA cross-attention, accepting (and ignoring) the reference arguments meant for self-attention.

    Every attention layer receives the same `cross_attention_kwargs`; naming them here keeps diffusers from
    warning about unexpected arguments on every call.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference: ReferenceFeatures | None = None,
        reference_bank: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _set_processors(unet: UNet2DConditionModel, self_attention: dict[str, object]) -> None:
    """Give the named self-attention layers their processors and every other attention layer a context one."""
    processors = {
        name: self_attention.get(name.removesuffix(_PROCESSOR_SUFFIX), ContextAttentionProcessor())
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)


def install_reference_reading(backbone: UNet2DConditionModel) -> list[str]:
    """Make every self-attention layer of `backbone` read the reference bank; returns the layer names."""
    names = self_attention_layer_names(backbone)
    _set_processors(backbone, {name: ReferenceReadProcessor(name) for name in names})
    return names


def _dry_run_call_order(unet_config: dict) -> list[str]:
    """Names of the modules of a UNet with this config, in the order its forward pass calls them."""
    with torch.device("meta"):
        twin = UNet2DConditionModel.from_config(unet_config)
        calls: list[str] = []
        hooks = [
            module.register_forward_pre_hook(lambda _module, _args, name=name: calls.append(name))
            for name, module in twin.named_modules()
            if name
        ]
        side = 2 ** (len(twin.config.block_out_channels) - 1)
        sample = torch.zeros(1, twin.config.in_channels, side, side)
        context = torch.zeros(1, 1, twin.config.cross_attention_dim)
        twin(sample, torch.zeros(1), encoder_hidden_states=context)
    for hook in hooks:
        hook.remove()
    return calls


def _prepare_reference_unet(unet: UNet2DConditionModel) -> list[str]:
    """Install write processors, stop after the last bank write, delete what would run later; returns layers."""
    calls = _dry_run_call_order(public_config(unet))
    layer_names = self_attention_layer_names(unet)
    if not layer_names:
        raise UserInputError("reference unet: it has no self-attention layers to share")
    last_index = max(calls.index(name) for name in layer_names)
    last_layer = calls[last_index]
    # A module is needed if it, or a module inside it, runs up to the last bank write (containers such as
    # ModuleList never run themselves).
    needed = {""}
    for name in calls[: last_index + 1]:
        parts = name.split(".")
        needed.update(".".join(parts[:length]) for length in range(1, len(parts) + 1))
    for name, module in list(unet.named_modules()):
        parent_name, _, child_name = name.rpartition(".")
        if name not in needed and parent_name in needed and any(True for _ in module.parameters()):
            setattr(unet.get_submodule(parent_name), child_name, None)
    _set_processors(unet, {name: ReferenceWriteProcessor(name, last=name == last_layer) for name in layer_names})
    return layer_names


class ReferenceNet(ModelMixin, ConfigMixin):
    """The reference UNet (config: the base UNet's config), trimmed to what feeds the bank.

    Build it from a base UNet with `ReferenceNet.from_unet(unet)`; call it with the clean reference latents
    (B, C, h, w) and the cross-attention context to get the bank {layer name: tokens}.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict):
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(unet_config)
        check_supported_unet(self.unet, source="reference unet")
        self.layer_names = _prepare_reference_unet(self.unet)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel) -> ReferenceNet:
        """A reference net with the weights of `unet` (copied; `unet` is left unchanged)."""
        check_supported_unet(unet)
        with empty_weights():
            reference_net = cls(unet_config=public_config(unet))
        kept = reference_net.state_dict().keys()
        weights = {f"unet.{key}": tensor for key, tensor in cloned_state_dict(unet).items() if f"unet.{key}" in kept}
        assign_weights(reference_net, weights, source="ReferenceNet.from_unet")
        reference_net.train(unet.training)
        return reference_net

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    def forward(self, reference_latents: torch.Tensor, encoder_hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        """Bank {self-attention layer name: input tokens (B, tokens, channels)} of the clean reference."""
        bank: dict[str, torch.Tensor] = {}
        timestep = torch.zeros(reference_latents.shape[0], device=reference_latents.device)
        try:
            self.unet(
                reference_latents,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs={"reference_bank": bank},
            )
        except _ReferenceBankComplete:
            return bank
        raise RuntimeError("reference unet finished without reaching its last self-attention layer")
