import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import DDIMScheduler

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel, read_model_section
from rgbd_portrait.models import checkpoint as checkpoint_module
from rgbd_portrait.models.testing import tiny_model_section

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model and its checkpoint folder (tests that damage a checkpoint copy it first)."""
    model = RGBDPortraitModel.from_config(tiny_model_section(resolution=32)).eval()
    directory = tmp_path_factory.mktemp("checkpoint") / "model"
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture
def copy_of(saved, tmp_path):
    return shutil.copytree(saved[1], tmp_path / "copy")


def _outputs(model):
    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 8, 8, 8, generator=generator)
    known = torch.randn(2, 8, 8, 8, generator=generator)
    reference_latents = torch.randn(2, 4, 8, 8, generator=generator)
    with torch.no_grad():
        reference = model.encode_reference(reference_latents, drop=[False, True])
        return model.denoise(noisy, torch.tensor([10, 900]), known=known, task="image_to_depth", reference=reference)


def test_round_trip_is_exact_and_keeps_the_settings(saved):
    model, directory = saved
    loaded = RGBDPortraitModel.from_pretrained(directory)
    assert torch.equal(_outputs(model), _outputs(loaded))
    assert loaded.settings == model.settings
    assert loaded.resolution == 32 and loaded.default_steps == 4
    files = sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
    components = ("backbone", "context", "reference_net", "vae")
    assert files == sorted(
        ["model_index.json"] + [f"{name}/{file}" for name in components for file in ("config.json", WEIGHTS)]
    )
    index = json.loads((directory / "model_index.json").read_text())
    assert index["backbone"] == ["diffusers", "UNet2DConditionModel"]
    assert index["reference_net"] == ["rgbd_portrait", "ReferenceNet"]
    assert index["input_layout"] == {
        "noisy_rgb": 4, "noisy_depth": 4, "known_rgb": 4, "known_depth": 4, "mask_rgb": 1, "mask_depth": 1
    }  # fmt: skip
    assert index["prediction_type"] == "v_prediction"


def test_half_precision_storage_loads_as_float32(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    stored = safetensors.torch.load_file(tmp_path / "half" / "backbone" / WEIGHTS)
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    assert next(model.parameters()).dtype == torch.float32  # the saved model itself is left alone
    loaded = RGBDPortraitModel.from_pretrained(tmp_path / "half")
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.float32}
    # Rounding the weights to fp16 moves the outputs by about fp16's resolution, no more.
    torch.testing.assert_close(_outputs(loaded), _outputs(model), atol=2e-2, rtol=0)
    assert not torch.equal(_outputs(loaded), _outputs(model))


def test_scheduler_is_trailing_ddim_on_zero_terminal_snr(saved):
    scheduler = saved[0].make_scheduler()
    assert isinstance(scheduler, DDIMScheduler)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.alphas_cumprod[-1] < 1e-6
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]


def _rewrite_weights(path, change):
    weights = safetensors.torch.load_file(path)
    change(weights)
    safetensors.torch.save_file(weights, path)


def test_missing_keys_are_named(copy_of):
    _rewrite_weights(copy_of / "backbone" / WEIGHTS, lambda weights: weights.pop("conv_in.weight"))
    with pytest.raises(
        UserInputError, match=r"backbone/diffusion_pytorch_model\.safetensors: missing keys conv_in\.weight$"
    ):
        RGBDPortraitModel.from_pretrained(copy_of)


def test_unexpected_keys_are_named(copy_of):
    _rewrite_weights(copy_of / "context" / WEIGHTS, lambda weights: weights.update(extra=torch.zeros(1)))
    with pytest.raises(UserInputError, match=r"context/diffusion_pytorch_model\.safetensors: unexpected keys extra$"):
        RGBDPortraitModel.from_pretrained(copy_of)


def test_wrong_shape_is_named(copy_of):
    _rewrite_weights(copy_of / "context" / WEIGHTS, lambda weights: weights.update(tokens=torch.zeros(3, 16)))
    with pytest.raises(UserInputError, match=r"tokens has shape \(3, 16\), the model expects \(2, 16\)"):
        RGBDPortraitModel.from_pretrained(copy_of)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_are_named(copy_of, damage):
    path = copy_of / "reference_net" / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file")
    with pytest.raises(
        UserInputError, match=r"reference_net/diffusion_pytorch_model\.safetensors: corrupt or truncated"
    ):
        RGBDPortraitModel.from_pretrained(copy_of)


def test_folders_that_are_not_checkpoints(tmp_path, copy_of):
    with pytest.raises(UserInputError, match="checkpoint folder not found"):
        RGBDPortraitModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="not an rgbd-portrait checkpoint"):
        RGBDPortraitModel.from_pretrained(tmp_path / "empty")
    (copy_of / "vae" / WEIGHTS).unlink()
    with pytest.raises(UserInputError, match=r"vae/diffusion_pytorch_model\.safetensors: weights file not found"):
        RGBDPortraitModel.from_pretrained(copy_of)
    (copy_of / "model_index.json").write_text("{")
    with pytest.raises(UserInputError, match="model_index.json: cannot read model index"):
        RGBDPortraitModel.from_pretrained(copy_of)


def test_saving_is_atomic_and_never_replaces_other_folders(saved, tmp_path, monkeypatch):
    model, _ = saved
    (tmp_path / "data").mkdir()
    with pytest.raises(UserInputError, match="already exists"):
        model.save_pretrained(tmp_path / "data")
    with pytest.raises(UserInputError, match="not a checkpoint; refusing"):
        model.save_pretrained(tmp_path / "data", overwrite=True)
    model.save_pretrained(tmp_path / "model")
    model.save_pretrained(tmp_path / "model", overwrite=True)

    def failing_save(component, directory, dtype=None):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_component", failing_save)
    monkeypatch.setattr("rgbd_portrait.models.rgbd_model.save_component", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "new")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "model"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"colour": 1}, "unknown model entries colour"),
        ({"prediction_type": "x0"}, "prediction_type must be one of"),
        ({"prediction_type": "epsilon"}, "zero-terminal-SNR"),
        ({"scheduler": {"class_name": "NoSuchScheduler"}}, "not a diffusers scheduler"),
        ({"scheduler": {"beta_stat": 0.1}}, "DDIMScheduler does not take beta_stat"),
        ({"default_steps": 0}, "default_steps must be a positive integer"),
        ({"depth_self_reference": "no"}, "depth_self_reference must be true or false, got 'no'"),
        ({"resolution": 15}, "not a multiple of the VAE's factor 2"),
        ({"pretrained": "somewhere"}, "pretrained excludes other model entries"),
        ({"backbone": None}, "backbone .* is required"),
        ({"vae": {"latent_channels": 3}}, "backbone in/out channels must equal vae.latent_channels=3"),
        ({"vae": {"latent_chanels": 4}}, "vae: .*latent_chanels"),
    ],
)
def test_config_errors(entries, message):
    with pytest.raises(UserInputError, match=message):
        RGBDPortraitModel.from_config(tiny_model_section(**entries))


def test_epsilon_prediction_with_a_plain_schedule():
    section = tiny_model_section(prediction_type="epsilon", scheduler={"rescale_betas_zero_snr": False})
    scheduler = RGBDPortraitModel.from_config(section).make_scheduler()
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.timestep_spacing == "trailing"


def test_pretrained_entry_loads_a_checkpoint(saved, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  pretrained: {saved[1]}\n")
    loaded = RGBDPortraitModel.from_config(read_model_section(config))
    assert torch.equal(_outputs(saved[0]), _outputs(loaded))


# Parameter counts of the diffusers Stable Diffusion UNet and VAE (SD 1.5 and SD 2.1 share the VAE).
SD15_UNET_PARAMETERS = 859_520_964
SD21_UNET_PARAMETERS = 865_910_724
SD_VAE_PARAMETERS = 83_653_863


@pytest.mark.parametrize("name", ["tiny", "sd15", "sd21"])
def test_shipped_configs_build(name):
    section = read_model_section(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    with torch.device("meta"):  # architecture only: no memory, no initialisation
        model = RGBDPortraitModel.from_config(section, source=f"{name}.yaml")
    count = lambda module: sum(parameter.numel() for parameter in module.parameters())
    assert model.latent_channels == 4 and model.prediction_type == "v_prediction"
    assert model.resolution == {"tiny": 128, "sd15": 512, "sd21": 768}[name]
    assert model.resolution == model.backbone.config.sample_size * model.codec.downscale_factor
    if name != "tiny":
        base = {"sd15": SD15_UNET_PARAMETERS, "sd21": SD21_UNET_PARAMETERS}[name]
        # The expanded backbone adds 14 input channels to conv_in (320·14·3·3) and 4 outputs to conv_out.
        assert count(model.backbone) == base + 320 * 14 * 9 + 4 * 320 * 9 + 4
        assert count(model.vae) == SD_VAE_PARAMETERS


def test_the_input_framing_is_a_checked_setting(tmp_path):
    model = RGBDPortraitModel.from_config(tiny_model_section(resolution=32) | {"fit": "face"})
    assert model.settings.fit == "face"
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["fit"] == "face"
    assert RGBDPortraitModel.from_pretrained(tmp_path / "model").settings.fit == "face"
    with pytest.raises(UserInputError, match="fit must be one of crop, pad, face, got 'tight'"):
        RGBDPortraitModel.from_config(tiny_model_section(resolution=32) | {"fit": "tight"})
