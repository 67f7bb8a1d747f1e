"""Stand-alone parts of the training engine: config, sample order, optimizer/EMA state, checkpoints, logs."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.layout import Task
from rgbd_portrait.models.testing import tiny_vae_config
from rgbd_portrait.training.checkpointing import (
    CheckpointWriter,
    TrainingState,
    list_checkpoints,
    read_checkpoint,
    read_training_state,
    restore_process_rng,
)
from rgbd_portrait.training.codec_stage import (
    CONFIDENT_ACCURACY,
    CodecOutputs,
    CodecTrainingModule,
    PatchDiscriminator,
    codec_loss,
)
from rgbd_portrait.training.config import CodecStageConfig, JointStageConfig, TaskProbabilities, load_config
from rgbd_portrait.training.curves import logged_stages, plot_training_curves
from rgbd_portrait.training.ema import ExponentialMovingAverage
from rgbd_portrait.training.joint_objective import depth_trust, make_diffusion_inputs
from rgbd_portrait.training.metrics_log import MetricsLogger
from rgbd_portrait.training.optim import (
    build_optimizer,
    learning_rate_factor,
    load_optimizer_state,
    optimizer_state_to_files,
)
from rgbd_portrait.training.sampler import SampleStream, StreamBatchSampler
from rgbd_portrait.training.seeding import derive_seed

MINIMAL = "model: {name: tiny}\ndata: {root: /nowhere}\ntrain: {output_dir: /tmp/run}\n"


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL)
    return path


def test_config_overrides_and_defaults(config_file):
    config = load_config(config_file, ["train.joint.max_steps=7", "data.resolution=64", "train.stages=[codec,joint]"])
    assert config.train.joint.max_steps == 7
    assert config.data.resolution == 64
    assert config.train.stages == ["codec", "joint"]
    assert config.train.codec.kl_weight == pytest.approx(1e-6)
    assert config.model == {"name": "tiny"}
    assert load_config(config_file, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_model_override_replaces_the_whole_section(config_file):
    config = load_config(config_file, ["model={pretrained: /models/rgbd}", "model.pretrained=/models/other"])
    assert config.model == {"pretrained": "/models/other"}
    assert load_config(config_file, ["model.depth=2"]).model == {"name": "tiny", "depth": 2}
    with pytest.raises(UserInputError, match="expected a mapping"):
        load_config(config_file, ["model=3"])


def test_shipped_configs_load():
    for name in ("default", "tiny", "sd15", "sd21"):
        config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
        assert config.model and config.data.root and config.train.output_dir


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.joint.max_step=3"], "max_step"),
        (["trian.seed=1"], "trian"),
        (["train.seed=abc"], "train.seed"),
        (["train.joint.tasks.joint=0.9"], "sum to 1"),
        (["train.stages=[joint,codec]"], "order"),
        (["train.stages=[decoder]"], "decoder"),
        (["train.mixed_precision=fp8"], "mixed_precision"),
        (["train.joint.lr_schedule=linear"], "lr_schedule"),
        (["train.codec.batch_size=0"], "batch_size"),
        (["train.joint.image_to_depth_terminal_fraction=1.5"], "terminal_fraction"),
        (["train.joint.image_to_depth_reference_dropout=-0.1"], "image_to_depth_reference_dropout"),
        (["seed"], "key=value"),
        (["data.root_weight=0"], "root_weight"),
        (["data.sources=[{root: x, weight: -1}]"], r"sources\[0\].weight"),
        (["train.joint.extrapolated_depth_weight=-0.5"], "extrapolated_depth_weight"),
    ],
)
def test_config_errors_are_one_line(config_file, overrides, message):
    with pytest.raises(UserInputError, match=message) as caught:
        load_config(config_file, overrides)
    assert "\n" not in str(caught.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(UserInputError, match="cannot parse YAML"):
        load_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(MINIMAL + "extra: 1\n")
    with pytest.raises(UserInputError, match="unknown.yaml.*extra"):
        load_config(unknown)
    no_model = tmp_path / "no_model.yaml"
    no_model.write_text("data: {root: x}\ntrain: {output_dir: y}\n")
    with pytest.raises(UserInputError, match="model"):
        load_config(no_model)


def test_sample_stream_is_seeded_and_covers_each_epoch():
    stream = SampleStream(10, seed=3)
    first_epoch = [stream.at(position)[0] for position in range(10)]
    assert sorted(first_epoch) == list(range(10))
    assert first_epoch != [SampleStream(10, seed=3).at(position)[0] for position in range(10, 20)]
    assert first_epoch == [SampleStream(10, seed=3).at(position)[0] for position in range(10)]
    assert first_epoch != [SampleStream(10, seed=4).at(position)[0] for position in range(10)]
    assert stream.at(13)[1] == 1


def test_a_weighted_stream_draws_each_sample_by_its_weight():
    weights = torch.tensor([1.0, 1.0, 6.0, 0.0], dtype=torch.float64)
    stream = SampleStream(4, seed=5, weights=weights)
    draws = torch.tensor([stream.at(position)[0] for position in range(4000)])
    shares = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(shares, weights / weights.sum(), atol=0.03, rtol=0)
    assert [SampleStream(4, seed=5, weights=weights).at(position)[0] for position in range(100, 120)] == draws[
        100:120
    ].tolist()
    with pytest.raises(ValueError, match="non-negative"):
        SampleStream(4, seed=0, weights=torch.zeros(4))


def test_pseudo_depth_is_trusted_less_where_it_is_extrapolated():
    stage = JointStageConfig(pseudo_depth_weight=0.8, extrapolated_depth_weight=0.25)
    observed = torch.tensor([1.0, 0.0, 0.5]).view(1, 1, 1, 3).expand(2, 1, 1, 3)
    trust = depth_trust(torch.tensor([0.0, 1.0]), observed, stage)
    torch.testing.assert_close(trust[0, 0, 0], torch.ones(3))
    torch.testing.assert_close(trust[1, 0, 0], torch.tensor([0.8, 0.2, 0.5]))
    # Only the depth channels of the loss carry it.
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean = torch.randn(2, 8, 1, 3)
    joint_only = JointStageConfig(tasks=TaskProbabilities(joint=1.0, image_to_depth=0.0, depth_to_image=0.0))
    inputs = make_diffusion_inputs(
        clean,
        torch.ones(2, 1, 1, 3),
        scheduler=scheduler,
        stage=joint_only,
        generator=torch.Generator().manual_seed(0),
        depth_weight=trust,
    )
    assert (inputs.loss_weights[:, :4] == 1).all()
    torch.testing.assert_close(inputs.loss_weights[:, 4:], trust.expand(2, 4, 1, 3))


def test_batch_sampler_shards_processes_and_resumes_anywhere():
    stream = SampleStream(5, seed=0)
    take = lambda sampler, count: [batch for batch, _ in zip(sampler, range(count))]
    rank0 = take(StreamBatchSampler(stream, rank=0, world_size=2, batch_size=3), 4)
    rank1 = take(StreamBatchSampler(stream, rank=1, world_size=2, batch_size=3), 4)
    single = take(StreamBatchSampler(stream, rank=0, world_size=1, batch_size=3), 8)
    # Two processes together read exactly the stream one process reads, and a smaller set than a batch wraps.
    assert [pair for a, b in zip(rank0, rank1) for pair in a + b] == [pair for batch in single for pair in batch]
    resumed = take(StreamBatchSampler(stream, rank=1, world_size=2, batch_size=3, start_position=12), 2)
    assert resumed == rank1[2:4]


def test_derive_seed_depends_on_every_part():
    seeds = {derive_seed(0, "joint", step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200
    assert derive_seed(1, "joint", 0, 0) != derive_seed(0, "joint", 0, 0)
    assert derive_seed(0, "joint", 3, 1) == derive_seed(0, "joint", 3, 1)


def test_learning_rate_schedule():
    factor = lambda step, schedule: learning_rate_factor(step, warmup_steps=4, max_steps=14, schedule=schedule)
    assert [factor(step, "constant") for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert factor(4, "cosine") == pytest.approx(1.0)
    assert factor(9, "cosine") == pytest.approx(0.5)
    assert factor(14, "cosine") == pytest.approx(0.0, abs=1e-12)


def _tiny_network():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))


def _train_steps(network, optimizer, scheduler, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss = network(torch.randn(8, 3, generator=generator)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_optimizer_state_round_trip_by_name(config_file, tmp_path):
    stage = load_config(config_file, ["train.joint.warmup_steps=2"]).train.joint
    network = _tiny_network()
    optimizer, scheduler = build_optimizer(list(network.named_parameters()), stage)
    _train_steps(network, optimizer, scheduler, 3, seed=0)
    tensors, values = optimizer_state_to_files(optimizer, list(network.named_parameters()))
    assert "0.weight/exp_avg" in tensors
    save_file(tensors, tmp_path / "optimizer.safetensors")
    tensors, values = load_file(tmp_path / "optimizer.safetensors"), json.loads(json.dumps(values))

    copy = _tiny_network()
    copy.load_state_dict(network.state_dict())
    # Hand the parameters over in another order: the state must follow the names, not the positions.
    reordered = list(reversed(list(copy.named_parameters())))
    copy_optimizer, copy_scheduler = build_optimizer(reordered, stage)
    load_optimizer_state(copy_optimizer, reordered, tensors, values, source="test")
    copy_scheduler.load_state_dict(json.loads(json.dumps(scheduler.state_dict())))
    assert _train_steps(copy, copy_optimizer, copy_scheduler, 3, seed=1) == _train_steps(
        network, optimizer, scheduler, 3, seed=1
    )

    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    other_optimizer, _ = build_optimizer(list(other.named_parameters()), stage)
    with pytest.raises(UserInputError, match="test: optimizer state does not match.*unexpected.*2.bias"):
        load_optimizer_state(other_optimizer, list(other.named_parameters()), tensors, values, source="test")


def test_ema_tracks_and_applies():
    network = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(list(network.named_parameters()), decay=0.5)
    with torch.no_grad():
        network.weight.fill_(1.0)
    ema.update()  # first update: decay min(0.5, 1/10) = 0.1
    start = ema.shadow["weight"].clone()
    ema.update()
    assert ema.updates == 2
    expected = start * (2 / 11) + (1 - 2 / 11)
    assert torch.allclose(ema.shadow["weight"], expected)
    with ema.applied():
        assert torch.equal(network.weight, ema.shadow["weight"])
    assert torch.all(network.weight == 1.0)


def test_checkpoint_writer_is_atomic_keeps_last_and_restores_rng(tmp_path):
    network = _tiny_network()
    named = list(network.named_parameters())
    writer = CheckpointWriter(tmp_path / "checkpoints", rank=0, barrier=lambda: None, keep=2)

    def save_model(folder):
        folder.mkdir()
        (folder / "weights.json").write_text("{}")

    for step in (1, 2, 3):
        torch.manual_seed(step)
        writer.save(
            TrainingState(stage="joint", step=step, samples_consumed=4 * step, world_size=1, seed=0),
            save_model=save_model,
            optimizer_files=lambda: ({"x/exp_avg": torch.zeros(2)}, {"param_groups": [], "scalars": {}}),
            ema_tensors={name: parameter.detach() for name, parameter in named},
        )
        expected_draw = torch.rand(3)
    names = [path.name for path in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["checkpoint-00000002", "checkpoint-00000003"]
    assert not list((tmp_path / "checkpoints").glob(".*"))
    latest = tmp_path / "checkpoints" / names[-1]
    contents = read_checkpoint(latest)
    assert contents.state.samples_consumed == 12
    assert set(contents.ema_tensors) == {name for name, _ in named}
    torch.manual_seed(99)
    assert restore_process_rng(latest, 0)
    assert torch.equal(torch.rand(3), expected_draw)
    assert not restore_process_rng(latest, 1)

    def failing_model(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        writer.save(
            TrainingState(stage="joint", step=4, samples_consumed=16, world_size=1, seed=0),
            save_model=failing_model,
            optimizer_files=lambda: ({}, {}),
            ema_tensors=None,
        )
    assert [path.name for path in list_checkpoints(tmp_path / "checkpoints")] == names
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_not_a_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(UserInputError, match="not a training checkpoint"):
        read_training_state(tmp_path)


def test_metrics_logger_truncates_on_resume_and_grows_columns(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(1, 5):
        logger.log("train", step, {"loss": 1.0 / step})
    logger.log("train", 5, {"loss": 0.2, "grad_norm": 3.0})
    logger.close()
    header = (tmp_path / "train.csv").read_text().splitlines()[0]
    assert header == "step,loss,grad_norm"
    resumed = MetricsLogger(tmp_path, resume_step=2)
    assert [row["step"] for row in resumed.read("train")] == [1, 2]
    assert len((tmp_path / "train.csv").read_text().splitlines()) == 3


def test_training_curves_plot_every_logged_stage(tmp_path):
    for stage, metrics in (("codec", {"rgb_psnr": 20.0, "depth_mae": 0.1}), ("joint", {"loss_joint": 0.2})):
        logger = MetricsLogger(tmp_path / stage / "logs")
        for step in range(20, 220, 20):
            logger.log("train", step, {"loss": 1.0 / step})
        logger.log("validation", 100, metrics)
        logger.log("validation", 200, {key: value * 1.1 for key, value in metrics.items()})
        logger.close()
    (tmp_path / "motion").mkdir()  # a stage that has not logged yet is left out
    assert logged_stages(tmp_path) == ["codec", "joint"]
    out = plot_training_curves(tmp_path, tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height > 300
    with pytest.raises(FileNotFoundError, match="no stage has a training log"):
        plot_training_curves(tmp_path / "motion", tmp_path / "none.png")


def test_each_adversarial_loss_moves_only_its_own_network():
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config())
    module = CodecTrainingModule(vae, PatchDiscriminator(channels=8))
    images = torch.rand(4, 3, 16, 16) * 2 - 1  # two RGB images, then two depth images
    stage = CodecStageConfig(adversarial_weight=1.0)
    outputs = module(images, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="last layer"):
        codec_loss(outputs, images, stage)
    _, metrics = codec_loss(outputs, images, stage, last_layer=vae.decoder.conv_out.weight)
    assert {"adversarial", "discriminator", "discriminator_accuracy"} <= set(metrics)

    def gradients(term: torch.Tensor) -> dict[str, torch.Tensor | None]:
        parameters = dict(module.named_parameters())
        found = torch.autograd.grad(term, list(parameters.values()), retain_graph=True, allow_unused=True)
        return dict(zip(parameters, found))

    def moved(found: dict, prefix: str) -> bool:
        return any(g is not None and g.abs().sum() > 0 for name, g in found.items() if name.startswith(prefix))

    decoder_term = -outputs.decoder_logits.mean()
    discriminator_term = (1 - outputs.real_logits).relu().mean() + (1 + outputs.fake_logits).relu().mean()
    assert moved(gradients(decoder_term), "vae.decoder") and not moved(gradients(decoder_term), "discriminator")
    assert moved(gradients(discriminator_term), "discriminator") and not moved(gradients(discriminator_term), "vae")


def test_the_decoder_follows_the_discriminator_as_far_as_it_tells_decoded_from_real():
    last_layer = torch.ones(2, requires_grad=True)
    reconstruction = last_layer.sum() * torch.ones(4, 3, 8, 8)  # two RGB images, then two depth images
    target = torch.zeros(4, 3, 8, 8)
    stage = CodecStageConfig(adversarial_weight=0.5)

    def scale(real: float, fake: float | list[float]) -> float:
        outputs = CodecOutputs(
            reconstruction,
            torch.zeros(4),
            real_logits=torch.full((2, 1, 2, 2), real),
            fake_logits=torch.tensor(fake).expand(8).reshape(2, 1, 2, 2),
            decoder_logits=-3 * reconstruction[:2, :1].mean((2, 3), keepdim=True),
        )
        return codec_loss(outputs, target, stage, last_layer=last_layer)[1]["adversarial_scale"].item()

    assert scale(1.0, 1.0) == 0  # accuracy 0.5: chance
    # Full accuracy: the decoder term's gradient at the last layer (3 per weight) is scaled to 0.5 times the L1's (1).
    assert scale(1.0, -1.0) == pytest.approx(0.5 / 3, rel=1e-3)
    # Accuracy 0.625 (every real patch, 2 of 8 decoded ones), half way to CONFIDENT_ACCURACY: half of that.
    assert CONFIDENT_ACCURACY == 0.75
    assert scale(1.0, [-1.0] * 2 + [1.0] * 6) == pytest.approx(0.25 / 3, rel=1e-3)


def test_image_to_depth_reference_dropout_drops_only_image_to_depth_references():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    clean = torch.randn(512, 8, 4, 4)
    foreground = torch.ones(512, 1, 4, 4)

    def draw(share):
        stage = JointStageConfig(reference_dropout=0.1, image_to_depth_reference_dropout=share)
        return make_diffusion_inputs(
            clean, foreground, scheduler=scheduler, stage=stage, generator=torch.Generator().manual_seed(5)
        )

    plain, half = draw(0.0), draw(0.5)
    assert plain.tasks == half.tasks
    # Everything dropped before stays dropped; the extra drops are image→depth samples only.
    assert (half.drop_reference | ~plain.drop_reference).all()
    added = half.drop_reference & ~plain.drop_reference
    image_to_depth = torch.tensor([task == Task.IMAGE_TO_DEPTH for task in half.tasks])
    assert added.any() and not (added & ~image_to_depth).any()
    kept = image_to_depth & ~plain.drop_reference
    assert 0.35 < float(added[kept].float().mean()) < 0.65


def test_terminal_fraction_moves_only_image_to_depth_samples_to_the_last_timestep():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    clean = torch.randn(512, 8, 4, 4)
    foreground = torch.ones(512, 1, 4, 4)

    def draw(fraction):
        stage = JointStageConfig(image_to_depth_terminal_fraction=fraction)
        return make_diffusion_inputs(
            clean, foreground, scheduler=scheduler, stage=stage, generator=torch.Generator().manual_seed(3)
        )

    uniform, half = draw(0.0), draw(0.5)
    assert uniform.tasks == half.tasks and torch.equal(uniform.drop_reference, half.drop_reference)
    moved = uniform.timesteps != half.timesteps
    assert (half.timesteps[moved] == 999).all()
    image_to_depth = torch.tensor([task == Task.IMAGE_TO_DEPTH for task in half.tasks])
    assert not (moved & ~image_to_depth).any()
    share = float(moved[image_to_depth].float().mean())
    assert 0.35 < share < 0.65
    # At the last timestep of a zero-terminal-SNR schedule the input is pure noise and v = -x0: a regression.
    at_end = half.timesteps == 999
    torch.testing.assert_close(half.target[at_end], -clean[at_end])
