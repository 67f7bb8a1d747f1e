import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.context import ClipImageContext, LearnedContext
from rgbd_portrait.models.testing import tiny_model_section


@pytest.fixture
def clip_folder(tmp_path):
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=12,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def test_learned_context_shares_its_tokens():
    context = LearnedContext(cross_attention_dim=16, num_tokens=3)
    tokens = context(batch_size=2)
    assert tokens.shape == (2, 3, 16)
    assert torch.equal(tokens[0], tokens[1])


def test_clip_context_embeds_the_reference_like_transformers(clip_folder):
    context = ClipImageContext.from_clip_folder(clip_folder, cross_attention_dim=12).eval()
    clip = CLIPVisionModelWithProjection.from_pretrained(clip_folder).eval()
    reference = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens = context(batch_size=2, reference_rgb=reference)
        expected = clip(pixel_values=context._pixels(reference)).image_embeds
    assert isinstance(context.projection, torch.nn.Identity)
    assert tokens.shape == (2, 1, 12)
    torch.testing.assert_close(tokens[:, 0], expected)


def test_clip_context_projects_drops_and_stays_frozen(clip_folder):
    context = ClipImageContext.from_clip_folder(clip_folder, cross_attention_dim=16)
    assert isinstance(context.projection, torch.nn.Linear)
    assert not any(parameter.requires_grad for parameter in context.encoder.parameters())
    assert all(parameter.requires_grad for parameter in context.projection.parameters())
    tokens = context(batch_size=2, reference_rgb=torch.zeros(2, 3, 32, 32), drop=torch.tensor([False, True]))
    assert tokens.shape == (2, 1, 16)
    assert tokens[0].abs().sum() > 0 and torch.all(tokens[1] == 0)
    assert torch.all(context(batch_size=3) == 0)


def test_model_with_clip_context_round_trips(clip_folder, tmp_path):
    section = tiny_model_section(context={"type": "clip", "path": str(clip_folder)})
    model = RGBDPortraitModel.from_config(section).eval()
    reference_rgb = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = model.encode_reference(torch.randn(1, 4, 8, 8), reference_rgb=reference_rgb).context
        model.save_pretrained(tmp_path / "model")
        loaded = RGBDPortraitModel.from_pretrained(tmp_path / "model")
        actual = loaded.encode_reference(torch.randn(1, 4, 8, 8), reference_rgb=reference_rgb).context
    assert isinstance(loaded.context, ClipImageContext)
    torch.testing.assert_close(actual, expected)


def test_clip_context_errors(tmp_path):
    with pytest.raises(UserInputError, match="not a CLIP model folder"):
        ClipImageContext.from_clip_folder(tmp_path, cross_attention_dim=16)
    with pytest.raises(UserInputError, match="context.path"):
        RGBDPortraitModel.from_config(tiny_model_section(context={"type": "clip"}))
    with pytest.raises(UserInputError, match="context.type"):
        RGBDPortraitModel.from_config(tiny_model_section(context={"type": "text"}))
