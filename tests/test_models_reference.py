import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.backbone import expand_unet
from rgbd_portrait.models.reference import ReferenceNet, install_reference_reading, self_attention_layer_names
from rgbd_portrait.models.testing import tiny_model_section, tiny_unet_config


@pytest.fixture
def model():
    return RGBDPortraitModel.from_config(tiny_model_section()).eval()


def _inputs(batch_size=2, size=8):
    noisy = torch.randn(batch_size, 8, size, size)
    known = torch.randn(batch_size, 8, size, size)
    timesteps = torch.tensor([999, 250][:batch_size])
    return noisy, known, timesteps


def test_without_reference_the_backbone_is_vanilla_attention_exactly():
    unet = UNet2DConditionModel(**tiny_unet_config()).eval()
    backbone = expand_unet(unet).eval()
    backbone.set_attn_processor(AttnProcessor2_0())
    inputs, context = torch.randn(2, 18, 8, 8), torch.randn(2, 2, 16)
    with torch.no_grad():
        vanilla = backbone(inputs, 10, encoder_hidden_states=context).sample
        install_reference_reading(backbone)
        with_empty_bank = backbone(inputs, 10, encoder_hidden_states=context, cross_attention_kwargs={}).sample
        without_reference = backbone(
            inputs, 10, encoder_hidden_states=context, cross_attention_kwargs={"reference": None}
        ).sample
    assert torch.equal(vanilla, with_empty_bank)
    assert torch.equal(vanilla, without_reference)


def test_reference_changes_the_output_and_dropped_samples_ignore_it(model):
    noisy, known, timesteps = _inputs()
    with torch.no_grad():
        without = model.denoise(noisy, timesteps, known=known, task="joint")
        outputs = []
        for _ in range(2):
            reference = model.encode_reference(torch.randn(2, 4, 8, 8), drop=[False, True])
            outputs.append(model.denoise(noisy, timesteps, known=known, task="joint", reference=reference))
    assert (outputs[0][0] - outputs[1][0]).abs().max() > 1e-4
    assert (outputs[0][1] - without[1]).abs().max() < 1e-5
    assert (outputs[1][1] - without[1]).abs().max() < 1e-5
    # No reference is a reference dropped everywhere, without running the reference net.
    no_reference = model.no_reference(2, (8, 8), device=noisy.device)
    assert no_reference.absent and no_reference.drop.all()
    with torch.no_grad():
        explicit = model.denoise(noisy, timesteps, known=known, task="joint", reference=no_reference)
    assert torch.equal(explicit, without)


@pytest.mark.parametrize("drop", [[True, False, False], [False, True, True], [True, True, False]])
def test_a_mixed_batch_keeps_each_sample_in_place(model, drop):
    """Kept and dropped samples attend in separate groups; each output lands at its own sample's position."""
    noisy, known, _ = _inputs(batch_size=3)
    timesteps = torch.tensor([999, 500, 250])
    reference_latents = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        mixed = model.denoise(
            noisy, timesteps, known=known, task="joint", reference=model.encode_reference(reference_latents, drop=drop)
        )
        kept = model.denoise(
            noisy, timesteps, known=known, task="joint", reference=model.encode_reference(reference_latents)
        )
        without = model.denoise(noisy, timesteps, known=known, task="joint")
    for index, dropped in enumerate(drop):
        expected = without[index] if dropped else kept[index]
        torch.testing.assert_close(mixed[index], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("drop", [[False, True], [False, False]])
def test_denoising_with_a_reference_traces_as_one_graph(model, drop):
    """torch.compile sees the whole backbone: no host read of the drop flags inside the attention layers."""
    noisy, known, timesteps = _inputs()
    reference = model.encode_reference(torch.randn(2, 4, 8, 8), drop=drop)

    def denoise(noisy, known):
        return model.denoise(noisy, timesteps, known=known, task="image_to_depth", reference=reference)

    with torch.no_grad():
        explanation = torch._dynamo.explain(denoise)(noisy, known)
    assert explanation.graph_break_count == 0, explanation.break_reasons[:1]


def test_bank_pairs_with_the_backbone_by_layer_name(model):
    reference = model.encode_reference(torch.randn(1, 4, 8, 8))
    assert sorted(reference.bank) == sorted(self_attention_layer_names(model.backbone))
    for name, tokens in reference.bank.items():
        width = model.backbone.get_submodule(name).to_q.in_features
        assert tokens.shape == (1, 64 if name.startswith(("down_blocks.0", "up_blocks.1")) else 16, width)


def test_reference_net_runs_once_per_sampling_loop(model):
    calls = []
    model.reference_net.register_forward_hook(lambda *_: calls.append(1))
    scheduler = model.make_scheduler()
    scheduler.set_timesteps(4)
    reference_latents = torch.randn(1, 4, 8, 8)
    latents = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        reference = model.encode_reference(torch.cat([reference_latents] * 2), drop=[False, True])
        for timestep in scheduler.timesteps:
            prediction = model.denoise(torch.cat([latents] * 2), timestep, task="joint", reference=reference)
            conditional, unconditional = prediction.chunk(2)
            guided = unconditional + 2.0 * (conditional - unconditional)
            latents = scheduler.step(guided, timestep, latents).prev_sample
    assert len(calls) == 1
    assert len(scheduler.timesteps) == 4
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("last_up_block_has_attention", [True, False])
def test_reference_net_is_trimmed_and_every_parameter_gets_a_gradient(last_up_block_has_attention):
    backbone = tiny_unet_config(last_up_block_has_attention=last_up_block_has_attention)
    model = RGBDPortraitModel.from_config(tiny_model_section(backbone=backbone))
    unet_keys = set(UNet2DConditionModel(**backbone).state_dict())
    reference_keys = {key.removeprefix("unet.") for key in model.reference_net.state_dict()}
    assert reference_keys < unet_keys
    assert not any(key.startswith("conv_out") for key in reference_keys)

    noisy, known, timesteps = _inputs()
    prediction = model.denoiser(
        noisy,
        timesteps,
        known=known,
        task=["joint", "image_to_depth"],
        reference_latents=torch.randn(2, 4, 8, 8),
        drop_reference=torch.tensor([True, True]),  # even a fully dropped batch reaches every parameter
    )
    prediction.square().mean().backward()
    without_gradient = [name for name, parameter in model.denoiser.named_parameters() if parameter.grad is None]
    assert without_gradient == []


def test_reference_net_from_unet_copies_weights():
    unet = UNet2DConditionModel(**tiny_unet_config())
    reference_net = ReferenceNet.from_unet(unet)
    assert torch.equal(reference_net.unet.conv_in.weight, unet.conv_in.weight)
    assert reference_net.unet.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()


def test_mismatched_reference_inputs_are_one_line_errors(model):
    noisy, _, timesteps = _inputs()
    reference = model.encode_reference(torch.randn(2, 4, 4, 4))
    with pytest.raises(UserInputError, match="reference latents are 4×4, the noisy latents 8×8"):
        model.denoise(noisy, timesteps, task="joint", reference=reference)
    reference = model.encode_reference(torch.randn(1, 4, 8, 8))
    with pytest.raises(UserInputError, match="batch of 1"):
        model.denoise(noisy, timesteps, task="joint", reference=reference)
    with pytest.raises(UserInputError, match=r"reference latents: expected \(B, 4, h, w\)"):
        model.encode_reference(torch.randn(2, 3, 8, 8))
    with pytest.raises(UserInputError, match="noisy latents"):
        model.denoise(torch.randn(2, 4, 8, 8), timesteps, task="joint")
    with pytest.raises(UserInputError, match="exactly one of task and masks"):
        model.denoise(noisy, timesteps)
