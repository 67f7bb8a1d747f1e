"""The trainer end to end on the CPU: learning, exact resume, latent caching, NaN stop, errors, the CLI."""

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rgbd_portrait.cli.main import main as cli_main
from rgbd_portrait.data.sample_format import PortraitSample, write_sample
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.training import Trainer, TrainingDivergedError, load_config, stages, train
from rgbd_portrait.training.latent_cache import cache_fingerprint
from train_support import RESOLUTION, read_losses, render_tiny_dataset, write_tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return render_tiny_dataset(tmp_path_factory.mktemp("data") / "studio", val=True)


def _config(tmp_path, data_root, *, train=None, overrides=()):
    path = write_tiny_config(tmp_path / "config.yaml", data_root=data_root, output_dir=tmp_path / "run", train=train)
    return load_config(path, list(overrides))


def _train_until_interrupted(monkeypatch, recipe, config, *, loss_call):
    """Train `config` with Ctrl-C pressed inside the `loss_call`-th call of `recipe`'s loss."""
    original_loss = recipe.loss
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == loss_call:
            raise KeyboardInterrupt
        return original_loss(self, *args, **kwargs)

    monkeypatch.setattr(recipe, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, show_progress=False)
    monkeypatch.setattr(recipe, "loss", original_loss)


def test_losses_fall_by_half_on_eight_samples(tmp_path, data_root):
    config = _config(
        tmp_path,
        data_root,
        train={
            "stages": ["codec", "joint"],
            "codec": {"max_steps": 30, "batch_size": 8, "learning_rate": 2e-3},
            "joint": {"max_steps": 100, "batch_size": 8, "learning_rate": 2e-3, "validate_every": 100},
        },
        overrides=["data.validation_samples=2"],
    )
    final = train(config, show_progress=False)
    for stage in ("codec", "joint"):
        losses = read_losses(tmp_path / "run", stage)
        first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
        assert last < 0.5 * first, f"{stage}: {first:.3f} → {last:.3f}"
    # The codec stage calibrated the latent scale that the joint stage and the final model use.
    model = RGBDPortraitModel.from_pretrained(final)
    codec_model = RGBDPortraitModel.from_pretrained(tmp_path / "run" / "codec" / "model")
    assert model.vae.config.scaling_factor == codec_model.vae.config.scaling_factor != 0.18215
    validation = json.loads((tmp_path / "run" / "joint" / "logs" / "validation.jsonl").read_text())
    assert validation["step"] == 100
    assert {"loss_joint", "loss_image_to_depth", "loss_depth_to_image", "image_to_depth_mae"} <= set(validation)
    assert (tmp_path / "run" / "joint" / "validation" / "step-00000100.png").is_file()


def test_a_wider_decoder_alone_fine_tunes_into_the_same_latent_space(tmp_path, data_root):
    codec = {"max_steps": 4, "batch_size": 4, "learning_rate": 2e-3, "validate_every": 0}
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = train(
        _config(tmp_path / "first", data_root, train={"stages": ["codec"], "codec": codec}), show_progress=False
    )
    second = train(
        _config(
            tmp_path / "second",
            data_root,
            train={"stages": ["codec"], "codec": codec | {"train_encoder": False, "decoder_width": 2}},
            overrides=[f"model={{pretrained: {first}}}"],
        ),
        show_progress=False,
    )
    before, after = (RGBDPortraitModel.from_pretrained(folder).vae for folder in (first, second))
    assert after.decoder.conv_in.out_channels == 2 * before.decoder.conv_in.out_channels
    assert (after.config.scaling_factor, after.config.shift_factor) == (
        before.config.scaling_factor,
        before.config.shift_factor,
    )
    for name in ("encoder", "quant_conv", "decoder"):
        unchanged = all(
            torch.equal(a, b)
            for a, b in zip(getattr(before, name).state_dict().values(), getattr(after, name).state_dict().values())
        )
        assert unchanged == (name != "decoder"), name
    # The ship script drops such a decoder into a model of the same latent space, and refuses another space.
    ship_script = _load_script("ship_default_model")
    model = RGBDPortraitModel.from_pretrained(first)
    ship_script.take_decoder(model, second)
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), after.state_dict().values()))
    with torch.no_grad():
        model.vae.encoder.conv_in.weight.add_(1.0)
    with pytest.raises(SystemExit, match="encoder differs"):
        ship_script.take_decoder(model, second)


def test_an_adversarial_decoder_fine_tune_resumes_exactly_with_its_discriminator(tmp_path, data_root, monkeypatch):
    codec = {
        "max_steps": 4,
        "batch_size": 2,
        "crop_size": 16,
        "checkpoint_every": 2,
        "ema_decay": 0.9,
        "validate_every": 0,
        "train_encoder": False,
        "adversarial_weight": 0.1,
    }
    section = {"stages": ["codec"], "log_every": 1, "codec": codec}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    uninterrupted = train(_config(tmp_path / "a", data_root, train=section), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "a" / "run" / "codec" / "logs" / "train.jsonl").open()]
    assert all(math.isfinite(row["adversarial"]) and 0 <= row["discriminator_accuracy"] <= 1 for row in rows)
    checkpoint = tmp_path / "a" / "run" / "codec" / "checkpoints" / "checkpoint-00000004"
    discriminator = load_file(checkpoint / "training_only.safetensors")
    assert set(discriminator) == set(stages.PatchDiscriminator().state_dict())
    # The discriminator stays out of the model folder.
    assert not any("discriminator" in path.name for path in uninterrupted.rglob("*"))

    _train_until_interrupted(
        monkeypatch, stages.CodecRecipe, _config(tmp_path / "b", data_root, train=section), loss_call=3
    )
    resumed_checkpoint = tmp_path / "b" / "run" / "codec" / "checkpoints" / "checkpoint-00000002"
    (resumed_checkpoint / "training_only.safetensors").rename(tmp_path / "kept.safetensors")
    with pytest.raises(UserInputError, match="has no training_only.safetensors"):
        train(_config(tmp_path / "b", data_root, train=section, overrides=["train.resume=latest"]))
    (tmp_path / "kept.safetensors").rename(resumed_checkpoint / "training_only.safetensors")
    resumed = train(_config(tmp_path / "b", data_root, train=section, overrides=["train.resume=latest"]))

    assert read_losses(tmp_path / "b" / "run", "codec") == read_losses(tmp_path / "a" / "run", "codec")
    before, after = (RGBDPortraitModel.from_pretrained(folder).vae for folder in (uninterrupted, resumed))
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resume_config(tmp_path, data_root, **extra):
    return _config(
        tmp_path,
        data_root,
        train={
            "stages": ["codec", "joint"],
            "codec": {"max_steps": 2, "batch_size": 2, "crop_size": 8, "edge_weight": 0.5},
            "joint": {
                "max_steps": 6,
                "batch_size": 2,
                "gradient_accumulation_steps": 2,
                "checkpoint_every": 3,
                "ema_decay": 0.9,
                "lr_schedule": "cosine",
                "warmup_steps": 2,
            },
        },
        **extra,
    )


def test_resume_continues_the_loss_trajectory_exactly(tmp_path, data_root, monkeypatch):
    uninterrupted = tmp_path / "a"
    interrupted = tmp_path / "b"
    uninterrupted.mkdir()
    interrupted.mkdir()
    train(_resume_config(uninterrupted, data_root), show_progress=False)

    # Two micro-batches per step: the ninth loss is the first of step 5.
    _train_until_interrupted(monkeypatch, stages.JointRecipe, _resume_config(interrupted, data_root), loss_call=9)
    assert len(read_losses(interrupted / "run", "joint")) == 4
    with pytest.raises(UserInputError, match="train.seed: 1, but .*checkpoint-00000003 was trained with seed 0"):
        train(_resume_config(interrupted, data_root, overrides=["train.resume=latest", "train.seed=1"]))
    train(_resume_config(interrupted, data_root, overrides=["train.resume=latest"]), show_progress=False)

    assert read_losses(interrupted / "run", "joint") == read_losses(uninterrupted / "run", "joint")
    for component in ("backbone", "reference_net", "context"):
        weights = [
            load_file(folder / "run" / "joint" / "model" / component / "diffusion_pytorch_model.safetensors")
            for folder in (uninterrupted, interrupted)
        ]
        assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    checkpoints = sorted(path.name for path in (interrupted / "run" / "joint" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000003", "checkpoint-00000006"]


def test_a_run_stopped_before_its_first_log_row_can_end_at_its_checkpoint(tmp_path, data_root, monkeypatch):
    section = {"stages": ["joint"], "log_every": 10, "joint": {"max_steps": 6, "batch_size": 2, "checkpoint_every": 3}}
    _train_until_interrupted(monkeypatch, stages.JointRecipe, _config(tmp_path, data_root, train=section), loss_call=4)
    assert not (tmp_path / "run" / "joint" / "logs" / "train.jsonl").exists()
    # Resumed with max_steps at the checkpoint's step: nothing left to train, the final model is written all the same.
    overrides = ["train.resume=latest", "train.joint.max_steps=3"]
    final = train(_config(tmp_path, data_root, train=section, overrides=overrides), show_progress=False)
    checkpoint = tmp_path / "run" / "joint" / "checkpoints" / "checkpoint-00000003" / "model"
    weights = [load_file(folder / "backbone" / "diffusion_pytorch_model.safetensors") for folder in (final, checkpoint)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_latent_cache_gives_the_same_training(tmp_path, data_root):
    # Two folders: the cache of each is gathered into the mixture's order.
    photos = _write_pseudo_depth_photos(tmp_path / "photos", 3)
    runs = {}
    for cached in (False, True):
        folder = tmp_path / str(cached)
        folder.mkdir()
        config = _config(
            folder,
            data_root,
            # Half the samples on backdrops: the cache serves their latents as the pixel path encodes them.
            train={"stages": ["joint"], "joint": {"max_steps": 3, "backdrop_fraction": 0.5}},
            # Gradient checkpointing recomputes the same activations, so it may not change the losses either.
            overrides=[
                f"data.cache_latents={str(cached).lower()}",
                f"train.gradient_checkpointing={str(cached).lower()}",
                f"data.sources=[{{root: {photos}, weight: 1}}]",
            ],
        )
        train(config, show_progress=False)
        runs[cached] = read_losses(folder / "run", "joint")
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)
    caches = list((tmp_path / "True" / "run" / "latent_cache").iterdir())
    assert len(caches) == 2 and all((cache / "shard-00000.safetensors").is_file() for cache in caches)


def _write_pseudo_depth_photos(root, count, seed=0):
    """Samples as `rgbd-portrait prepare` writes them: pseudo-depth and face landmarks, one identity each."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:RESOLUTION, 0:RESOLUTION]
    mask = (rows - 8) ** 2 + (columns - 8) ** 2 < 36
    for index in range(count):
        meta = {
            "identity": f"photo{index}",
            "split": "train",
            "depth_source": "pseudo",
            "face_landmarks": [[5, 5, 1.0], [11, 5, 1.0], [8, 11, 1.0]],
        }
        depth = np.where(mask, 1.0 + 0.02 * rows, 0.0).astype(np.float32)
        rgb = rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
        write_sample(root / f"photo{index}", PortraitSample(rgb=rgb, depth=depth, mask=mask, meta=meta))
    return root


def test_a_mixture_caches_each_folder_once(tmp_path, data_root):
    photos = _write_pseudo_depth_photos(tmp_path / "photos", 3)
    more = _write_pseudo_depth_photos(tmp_path / "more", 2)
    cache_dir = tmp_path / "cache"

    def run(name: str, sources: str) -> dict[str, int]:
        (tmp_path / name).mkdir()
        config = _config(
            tmp_path / name,
            data_root,
            train={"stages": ["joint"], "joint": {"max_steps": 1}},
            overrides=["data.cache_latents=true", f"data.cache_dir={cache_dir}", f"data.sources=[{sources}]"],
        )
        train(config, show_progress=False)
        return {folder.name: (folder / "index.json").stat().st_mtime_ns for folder in cache_dir.iterdir()}

    first = run("first", f"{{root: {photos}, weight: 1}}")
    assert len(first) == 2  # the studio and the photos
    second = run("second", f"{{root: {photos}, weight: 2}}, {{root: {more}, weight: 1}}")
    # Only the new folder was encoded; the others' caches were read as they were.
    assert len(second) == 3 and all(second[name] == stamp for name, stamp in first.items())
    # A folder prepared again in place (same names, new pixels, written later) is encoded again, alone.
    shutil.rmtree(more)
    rewritten = _write_pseudo_depth_photos(more, 2, seed=1)
    for sample in rewritten.iterdir():
        for path in sample.iterdir():
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = run("third", f"{{root: {photos}, weight: 2}}, {{root: {more}, weight: 1}}")
    assert len(third) == 4 and all(third[name] == stamp for name, stamp in second.items())


def test_a_new_decoder_keeps_the_cache_fingerprint_a_new_encoder_does_not():
    model = RGBDPortraitModel.from_config(tiny_model_section())
    names, fingerprint = ["a", "b"], cache_fingerprint(model.codec, ["a", "b"], RESOLUTION)
    with torch.no_grad():
        model.codec.vae.decoder.conv_out.bias.add_(1.0)
        assert cache_fingerprint(model.codec, names, RESOLUTION) == fingerprint
        model.codec.vae.encoder.conv_in.bias.add_(1.0)
        assert cache_fingerprint(model.codec, names, RESOLUTION) != fingerprint
    assert cache_fingerprint(model.codec, names[:1], RESOLUTION) != cache_fingerprint(model.codec, names, RESOLUTION)


@pytest.mark.parametrize("cached", [False, True])
def test_mixed_sources_are_drawn_by_weight_with_their_depth_trust(tmp_path, data_root, monkeypatch, cached):
    photos = _write_pseudo_depth_photos(tmp_path / "photos", 3)
    seen = []
    original_loss = stages.JointRecipe.loss

    def recording_loss(self, module, batch, generator):
        seen.append(batch["pseudo_depth"].clone())
        return original_loss(self, module, batch, generator)

    monkeypatch.setattr(stages.JointRecipe, "loss", recording_loss)
    config = _config(
        tmp_path,
        data_root,
        train={"stages": ["joint"], "joint": {"max_steps": 12, "batch_size": 8, "extrapolated_depth_weight": 0.3}},
        overrides=[
            f"data.cache_latents={str(cached).lower()}",
            "data.root_weight=1",
            f"data.sources=[{{root: {photos}, weight: 3}}]",
        ],
    )
    train(config, show_progress=False)
    drawn = torch.cat(seen)
    # Three photos against eight studio samples, drawn three times as often as the studio in all.
    assert 0.6 < float(drawn.mean()) < 0.9
    assert all(math.isfinite(loss) for loss in read_losses(tmp_path / "run", "joint"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    config = _config(tmp_path, data_root, train={"stages": ["joint"], "joint": {"max_steps": 6, "checkpoint_every": 2}})
    original_loss = stages.JointRecipe.loss
    calls = []

    def nan_in_step_three(self, *args, **kwargs):
        loss, metrics = original_loss(self, *args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), metrics

    monkeypatch.setattr(stages.JointRecipe, "loss", nan_in_step_three)
    with pytest.raises(TrainingDivergedError, match="loss nan at step 3.*checkpoint-00000002") as caught:
        train(config, show_progress=False)
    assert "\n" not in str(caught.value)
    checkpoints = tmp_path / "run" / "joint" / "checkpoints"
    assert [path.name for path in checkpoints.iterdir()] == ["checkpoint-00000002"]
    assert not (tmp_path / "run" / "joint" / "model").exists()


def test_errors_before_any_work(tmp_path, data_root):
    output = tmp_path / "run"
    with pytest.raises(UserInputError, match="data.root: .*missing not found"):
        Trainer(_config(tmp_path, tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="no 'train' samples"):
        Trainer(_config(tmp_path, empty)).run()
    with pytest.raises(UserInputError, match="not a training checkpoint"):
        Trainer(_config(tmp_path, data_root, overrides=[f"train.resume={data_root}"]))
    with pytest.raises(UserInputError, match="no checkpoint"):
        Trainer(_config(tmp_path, data_root, overrides=["train.resume=latest"]))
    with pytest.raises(UserInputError, match="validation"):
        Trainer(
            _config(
                tmp_path, data_root, train={"joint": {"validate_every": 1}}, overrides=["data.validation_split=test"]
            )
        ).run()
    with pytest.raises(UserInputError, match="crop_size"):
        Trainer(_config(tmp_path, data_root, train={"stages": ["codec"], "codec": {"crop_size": 32}})).run()
    assert not output.exists()

    (output / "joint" / "model").mkdir(parents=True)
    with pytest.raises(UserInputError, match="already holds a run"):
        Trainer(_config(tmp_path, data_root))


def test_cli_trains_and_reports_bad_keys_in_one_line(tmp_path, data_root, capsys):
    config = write_tiny_config(
        tmp_path / "config.yaml",
        data_root=data_root,
        output_dir=tmp_path / "run",
        train={"stages": ["joint"], "joint": {"max_steps": 1}},
    )
    assert cli_main(["train", "--no-progress", str(config), "train.joint.batch_size=2"]) == 0
    assert str(tmp_path / "run" / "joint" / "model") in capsys.readouterr().out
    assert cli_main(["train", str(config), "train.joint.batch_sise=2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "batch_sise" in error
