import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

from rgbd_portrait.cli import main as cli_main
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_unet_config, tiny_vae_config


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny Stable Diffusion folder, written by diffusers itself."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    UNet2DConditionModel(**tiny_unet_config()).save_pretrained(folder / "unet")
    AutoencoderKL(**tiny_vae_config()).save_pretrained(folder / "vae")
    PNDMScheduler(beta_start=0.001, beta_end=0.02, beta_schedule="scaled_linear", skip_prk_steps=True).save_pretrained(
        folder / "scheduler"
    )
    return folder


def _init(monkeypatch, *arguments):
    # Only this command, so the test does not depend on the other commands' modules.
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("rgbd_portrait.cli.init",))
    return cli_main.main(["init", *map(str, arguments), "--no-progress"])


def test_init_is_a_registered_command():
    assert "rgbd_portrait.cli.init" in cli_main.COMMAND_MODULES


def test_init_builds_an_expanded_model_equal_to_the_base_unet(sd_folder, tmp_path, monkeypatch, capsys):
    assert _init(monkeypatch, "--base", sd_folder, "--out", tmp_path / "model") == 0
    assert "wrote" in capsys.readouterr().out
    model = RGBDPortraitModel.from_pretrained(tmp_path / "model")
    base = UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()

    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 16)
    timesteps = torch.tensor([1, 800])
    with torch.no_grad():
        expected = base(sample, timesteps, encoder_hidden_states=context).sample
        inputs = torch.cat([sample, torch.zeros(2, 14, 8, 8)], dim=1)
        output = model.backbone(inputs, timesteps, encoder_hidden_states=context).sample
    assert (output[:, :4] - expected).abs().max() < 1e-5
    assert torch.equal(model.reference_net.unet.conv_in.weight, base.conv_in.weight)

    scheduler = model.make_scheduler()
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.001, 0.02)
    assert scheduler.config.prediction_type == "v_prediction"
    assert model.resolution == 16


def test_init_takes_settings_from_a_config(sd_folder, tmp_path, monkeypatch):
    config = tmp_path / "model.yaml"
    config.write_text(
        "model:\n"
        "  default_steps: 2\n"
        "  resolution: 32\n"
        "  context: {num_tokens: 3}\n"
        "  backbone: {cross_attention_dim: 16}\n"
    )
    assert _init(monkeypatch, "--base", sd_folder, "--out", tmp_path / "model", "--config", config) == 0
    model = RGBDPortraitModel.from_pretrained(tmp_path / "model")
    assert (model.default_steps, model.resolution, model.context.tokens.shape[0]) == (2, 32, 3)


def test_init_errors_are_one_line(sd_folder, tmp_path, monkeypatch, capsys):
    config = tmp_path / "sd21.yaml"
    config.write_text("model:\n  backbone: {cross_attention_dim: 1024}\n")
    assert _init(monkeypatch, "--base", sd_folder, "--out", tmp_path / "a", "--config", config) == 2
    error = capsys.readouterr().err.strip()
    assert "backbone.cross_attention_dim is 1024, but the Stable Diffusion backbone has 16" in error
    assert len(error.splitlines()) == 1

    assert _init(monkeypatch, "--base", tmp_path / "nothing", "--out", tmp_path / "b") == 2
    assert "Stable Diffusion folder not found" in capsys.readouterr().err

    (tmp_path / "broken").mkdir()
    assert _init(monkeypatch, "--base", tmp_path / "broken", "--out", tmp_path / "c") == 2
    assert "unet/config.json: component config not found" in capsys.readouterr().err
    assert not any(path.name in {"a", "b", "c"} for path in tmp_path.iterdir())
