"""Motion layers (temporal + audio attention) inserted into the tiny backbone: identity at the start, exact."""

import copy

import pytest
import torch

from rgbd_portrait.data.audio import LogMelFeatures
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.motion import MotionLayers, insertion_points
from rgbd_portrait.models.testing import tiny_model_section, tiny_unet_config

FRAMES = 3
N_MELS = 8


@pytest.fixture(scope="module")
def base_model() -> RGBDPortraitModel:
    torch.manual_seed(0)
    return RGBDPortraitModel.from_config(tiny_model_section()).eval()


@pytest.fixture
def model(base_model) -> RGBDPortraitModel:
    """A fresh copy per test: tests insert motion layers."""
    return copy.deepcopy(base_model)


def _motion(model: RGBDPortraitModel) -> MotionLayers:
    return MotionLayers.for_backbone(
        model.backbone, audio_features=LogMelFeatures(n_mels=N_MELS), num_attention_heads=4, audio_token_dim=16
    )


def _randomise(module: torch.nn.Module) -> None:
    """Move every weight off its initial value, as training would (zero projections included)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def _clip_inputs(model: RGBDPortraitModel, clips: int = 1):
    reference = model.encode_reference(torch.randn(clips, 4, 8, 8)).repeat_each(FRAMES)
    noisy = torch.randn(clips * FRAMES, 8, 8, 8)
    timesteps = torch.full((clips * FRAMES,), 400)
    audio = torch.rand(clips * FRAMES, 5, N_MELS)
    return reference, noisy, timesteps, audio


@torch.no_grad()
def test_fresh_motion_layers_leave_every_frame_exactly_as_the_image_model(model):
    reference, noisy, timesteps, audio = _clip_inputs(model, clips=2)
    image_model = model.denoise(noisy, timesteps, task="joint", reference=reference)
    motion = _motion(model)
    model.add_motion_layers(motion)
    with motion.frames(FRAMES, batch_size=2 * FRAMES, audio_windows=audio):
        animated = model.denoise(noisy, timesteps, task="joint", reference=reference)
    assert torch.equal(animated, image_model)


@torch.no_grad()
def test_trained_temporal_layers_mix_frames_only_inside_frames(model):
    reference, noisy, timesteps, audio = _clip_inputs(model)
    image_model = model.denoise(noisy, timesteps, task="joint", reference=reference)
    motion = _motion(model)
    _randomise(motion)
    model.add_motion_layers(motion)
    # Outside frames() the hooks pass everything through: image tasks are untouched.
    assert torch.equal(model.denoise(noisy, timesteps, task="joint", reference=reference), image_model)
    changed = noisy.clone()
    changed[2] += 1.0
    with motion.frames(FRAMES, batch_size=FRAMES, audio_windows=audio):
        before = model.denoise(noisy, timesteps, task="joint", reference=reference)
        after = model.denoise(changed, timesteps, task="joint", reference=reference)
    assert not torch.allclose(before[0], image_model[0], atol=1e-4)
    # Frame 0 sees frame 2 through temporal attention.
    assert not torch.allclose(before[0], after[0], atol=1e-5)


@torch.no_grad()
def test_dropped_audio_is_exactly_no_audio(model):
    reference, noisy, timesteps, audio = _clip_inputs(model)
    motion = _motion(model)
    _randomise(motion)
    model.add_motion_layers(motion)
    with motion.frames(FRAMES, batch_size=FRAMES):
        silent = model.denoise(noisy, timesteps, task="joint", reference=reference)
    with motion.frames(FRAMES, batch_size=FRAMES, audio_windows=audio, drop_audio=torch.ones(FRAMES, dtype=bool)):
        dropped = model.denoise(noisy, timesteps, task="joint", reference=reference)
    with motion.frames(FRAMES, batch_size=FRAMES, audio_windows=audio):
        heard = model.denoise(noisy, timesteps, task="joint", reference=reference)
    assert torch.equal(dropped, silent)
    assert not torch.allclose(heard, silent, atol=1e-5)


@torch.no_grad()
def test_checkpoint_keeps_motion_layers_and_image_checkpoints_have_none(model, tmp_path):
    model.save_pretrained(tmp_path / "image")
    assert RGBDPortraitModel.from_pretrained(tmp_path / "image").motion is None
    assert not (tmp_path / "image" / "motion").exists()

    motion = _motion(model)
    _randomise(motion)
    model.add_motion_layers(motion)
    model.save_pretrained(tmp_path / "talking")
    loaded = RGBDPortraitModel.from_pretrained(tmp_path / "talking")
    reference, noisy, timesteps, audio = _clip_inputs(model)
    outputs = []
    for candidate in (model, loaded):
        with candidate.motion.frames(FRAMES, batch_size=FRAMES, audio_windows=audio):
            outputs.append(candidate.denoise(noisy, timesteps, task="joint", reference=reference))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)

    (tmp_path / "talking" / "motion" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="motion"):
        RGBDPortraitModel.from_pretrained(tmp_path / "talking")


@torch.no_grad()
def test_a_deep_copy_runs_its_own_motion_layers(model):
    model.add_motion_layers(_motion(model))
    copied = copy.deepcopy(model)
    _randomise(copied.motion)
    reference, noisy, timesteps, audio = _clip_inputs(model)
    outputs = []
    for candidate in (model, copied, model):
        with candidate.motion.frames(FRAMES, batch_size=FRAMES, audio_windows=audio):
            outputs.append(candidate.denoise(noisy, timesteps, task="joint", reference=reference))
    assert torch.equal(outputs[0], outputs[2]) and not torch.allclose(outputs[0], outputs[1], atol=1e-4)


def _enter(context) -> None:
    with context:
        pass


def test_clip_shapes_and_backbones_are_checked(model):
    motion = _motion(model)
    with pytest.raises(RuntimeError, match="attach"):
        _enter(motion.frames(FRAMES, batch_size=FRAMES))
    model.add_motion_layers(motion)
    with pytest.raises(UserInputError, match="clips of"):
        _enter(motion.frames(FRAMES, batch_size=FRAMES + 1))
    longest = motion.config.max_frames
    with pytest.raises(UserInputError, match="take 1 to"):
        _enter(motion.frames(longest + 1, batch_size=longest + 1))
    with pytest.raises(UserInputError, match="audio windows"):
        _enter(motion.frames(FRAMES, batch_size=FRAMES, audio_windows=torch.zeros(FRAMES, 4, N_MELS)))
    other = RGBDPortraitModel.from_config(
        tiny_model_section(backbone=tiny_unet_config(last_up_block_has_attention=False))
    )
    with pytest.raises(UserInputError, match="do not match"):
        other.add_motion_layers(_motion(model))


def test_insertion_points_follow_the_blocks(base_model):
    points = insertion_points(base_model.backbone)
    names = [point.name for point in points]
    assert names == [
        "down_blocks.0.attentions.0",
        "down_blocks.1.resnets.0",
        "mid_block.attentions.0",
        "up_blocks.0.resnets.0",
        "up_blocks.0.resnets.1",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    ]
    assert [point.has_audio for point in points] == ["attentions" in name for name in names]
