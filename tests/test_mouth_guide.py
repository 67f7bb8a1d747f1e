"""The mouth guide: fitted on talking sequences it predicts the mouth from audio and reads it from latents; steering
moves the read opening to the target; a steered prediction implies the steered clean latents; the motion stage
fits one and saves it with the motion layers."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from omegaconf import OmegaConf

from animate_support import write_fake_sequence
from rgbd_portrait.data.face_regions import FACE_TOP_AND_CHIN, INNER_LIPS, JAW_OUTLINE, SUBNASALE
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.lipsync import pearson
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.mouth_guide import MouthGuide
from rgbd_portrait.models.testing import add_tiny_motion_layers, tiny_model_section
from rgbd_portrait.pipelines.sampling import steered_prediction
from rgbd_portrait.training import load_config, train
from rgbd_portrait.training.motion_stage import MotionRecipe
from rgbd_portrait.training.mouth_guide import SpeakingSequence, fit_mouth_guide

WINDOW, FEATURES, LATENTS = 5, 6, (8, 6, 6)
REGION = (slice(None), slice(3, 5), slice(1, 5))  # the mouth's latent cells


def _sequence(rng: np.random.Generator, pattern: np.ndarray, frames: int = 60) -> SpeakingSequence:
    """Openings that wander; audio whose middle window frame's first feature follows them; mouth latents that
    move along `pattern` with them, plus noise and a per-sequence offset (a different face)."""
    openings = 0.05 + 0.03 * np.sin(np.arange(frames) / rng.uniform(2, 4) + rng.uniform(0, 6))
    audio = rng.normal(size=(frames, WINDOW, FEATURES))
    audio[:, WINDOW // 2, 0] = 40 * openings + 0.1 * rng.normal(size=frames)
    latents = np.zeros((frames, *LATENTS))
    on_region = (slice(None), *REGION)
    latents[on_region] = rng.normal(size=LATENTS)[REGION] + openings[:, None, None, None] * pattern[REGION][None]
    latents[on_region] += 0.02 * rng.normal(size=latents[on_region].shape)
    return SpeakingSequence(openings, audio, latents)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=LATENTS)
    guide, scores = fit_mouth_guide([_sequence(rng, pattern) for _ in range(10)])
    return guide, scores, pattern, _sequence(rng, pattern)


def test_a_fitted_guide_predicts_the_mouth_from_audio_and_reads_it_from_latents(fitted):
    guide, scores, pattern, unseen = fitted
    assert scores["mouth_guide_audio_r"] > 0.9 and scores["mouth_guide_latent_r"] > 0.9
    predicted = guide.openings_from_audio(unseen.audio)
    assert pearson(predicted, unseen.openings) > 0.95 and abs(predicted.mean()) < 1e-9
    cells = torch.zeros(LATENTS[1:], dtype=torch.bool)
    cells[REGION[1:]] = True
    read = guide.read_opening(torch.from_numpy(unseen.mouth_latents).float(), cells).numpy()
    assert pearson(read, unseen.openings) > 0.95
    # The direction is the pattern the mouth moves along, on the mouth's cells only.
    direction = guide.latent_direction.numpy()
    assert not direction[:, :3].any() and not direction[:, 5:].any()
    cosine = (direction * pattern)[REGION].sum() / np.linalg.norm(direction) / np.linalg.norm(pattern[REGION])
    assert cosine > 0.95


def _nonlinear_sequence(rng: np.random.Generator, frames: int = 200) -> SpeakingSequence:
    """Audio whose middle frame's first feature is the opening in either sign: the mouth follows its magnitude,
    which no linear map of the features can read."""
    base = _sequence(rng, np.ones(LATENTS), frames)
    base.audio[:, WINDOW // 2, 0] = rng.choice([-1.0, 1.0], size=frames) * 40 * base.openings
    return base


def test_an_audio_network_reads_what_a_linear_map_cannot_and_loads_back(tmp_path):
    rng = np.random.default_rng(1)
    sequences = [_nonlinear_sequence(rng) for _ in range(20)]
    unseen = _nonlinear_sequence(rng)
    linear, linear_scores = fit_mouth_guide(sequences)
    network, network_scores = fit_mouth_guide(sequences, audio_hidden=(16,))
    assert network_scores["mouth_guide_audio_r"] > 0.8 > 0.3 > linear_scores["mouth_guide_audio_r"]
    predicted = network.openings_from_audio(unseen.audio)
    assert pearson(predicted, unseen.openings) > 0.8 and abs(predicted.mean()) < 1e-9
    assert pearson(linear.openings_from_audio(unseen.audio), unseen.openings) < 0.3
    # Fitted with a fixed seed: the same data give the same guide, whatever the global random state.
    torch.manual_seed(123)
    again, _ = fit_mouth_guide(sequences, audio_hidden=(16,))
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), again.state_dict().values()))
    # Held by motion layers, the network and its widths are saved and loaded back.
    model = RGBDPortraitModel.from_config(tiny_model_section())
    add_tiny_motion_layers(model)
    motion = model.motion
    guide = MouthGuide(motion.audio_window, motion.config.audio_feature_dim, LATENTS, audio_hidden=(16, 16))
    guide.load_state_dict({name: torch.randn_like(buffer) for name, buffer in guide.state_dict().items()})
    motion.add_mouth_guide(guide)
    motion.save_pretrained(tmp_path / "motion")
    loaded = type(motion).from_pretrained(tmp_path / "motion")
    assert loaded.config.mouth_guide_audio_hidden == [16, 16]
    windows = rng.normal(size=(20, motion.audio_window, motion.config.audio_feature_dim))
    assert np.allclose(loaded.mouth_guide.openings_from_audio(windows), guide.openings_from_audio(windows))


def test_videos_without_latents_join_the_audio_map_only():
    """Two sequences with latents whose audio says nothing, many without latents whose audio follows the mouth:
    the audio map is learnt from the latter, the latent maps from the former."""
    rng = np.random.default_rng(2)
    pattern = rng.normal(size=LATENTS)
    with_latents = [_sequence(rng, pattern) for _ in range(2)]
    for sequence in with_latents:
        sequence.audio[:] = rng.normal(size=sequence.audio.shape)
    audio_only = [_sequence(rng, pattern) for _ in range(10)]
    for sequence in audio_only:
        sequence.mouth_latents = None
    guide, _ = fit_mouth_guide(with_latents + audio_only)
    unseen = _sequence(rng, pattern)
    assert pearson(guide.openings_from_audio(unseen.audio), unseen.openings) > 0.95
    direction = guide.latent_direction.numpy()
    cosine = (direction * pattern)[REGION].sum() / np.linalg.norm(direction) / np.linalg.norm(pattern[REGION])
    assert cosine > 0.95
    with pytest.raises(UserInputError, match="at least 2 talking sequences with latents, got 1"):
        fit_mouth_guide(with_latents[:1] + audio_only)


def test_steering_imposes_the_targets_course_over_the_frames_on_the_region_only(fitted):
    guide = fitted[0]
    cells = torch.zeros(LATENTS[1:], dtype=torch.bool)
    cells[3:5, 1:5] = True
    clean = torch.randn(4, *LATENTS)
    targets = torch.tensor([0.02, 0.09, 0.05, float("nan")])
    course = lambda values: values - values.mean()
    steered = guide.steer(clean, targets, cells)
    read, before = guide.read_opening(steered, cells), guide.read_opening(clean, cells)
    assert torch.allclose(course(read[:3]), course(targets[:3]), atol=1e-4)
    assert float(read[:3].mean()) == pytest.approx(float(before[:3].mean()), abs=1e-4)  # the level stays the model's
    assert torch.equal(steered[3], clean[3])  # NaN: left as it is
    assert torch.equal(steered[:, :, ~cells], clean[:, :, ~cells])
    # A region without any of the fitted mouth, or a single frame to steer, is left alone.
    elsewhere = torch.zeros_like(cells)
    elsewhere[0, 0] = True
    assert torch.equal(guide.steer(clean, targets, elsewhere), clean)
    assert torch.equal(guide.steer(clean, torch.tensor([0.1] + [float("nan")] * 3), cells), clean)


def test_steering_with_a_level_continues_from_known_frames(fitted):
    guide = fitted[0]
    cells = torch.zeros(LATENTS[1:], dtype=torch.bool)
    cells[3:5, 1:5] = True
    known, clean = torch.randn(2, *LATENTS), torch.randn(3, *LATENTS)
    level = guide.level_of(known, torch.tensor([0.01, 0.03]), cells)
    assert float(level) == pytest.approx(float(guide.read_opening(known, cells).mean()) - 0.02, abs=1e-5)
    targets = torch.tensor([0.08, float("nan"), 0.0])
    steered = guide.steer(clean, targets, cells, level=level)
    read = guide.read_opening(steered, cells)
    assert read[[0, 2]] == pytest.approx((targets[[0, 2]] + level).tolist(), abs=1e-4)  # the level is imposed too
    assert torch.equal(steered[1], clean[1])
    # One frame is enough to steer when the level is known.
    single = guide.steer(clean[:1], targets[:1], cells, level=level)
    assert float(guide.read_opening(single, cells)[0]) == pytest.approx(float(targets[0] + level), abs=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_steered_prediction_implies_the_steered_clean_latents(prediction_type):
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    timestep = scheduler.timesteps[3]
    latents, prediction = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    shift = torch.randn(2, 4, 3, 3)
    steered = steered_prediction(scheduler, latents, prediction, timestep, lambda clean: clean + shift)
    implied = lambda output: scheduler.step(output, timestep, latents).pred_original_sample
    assert torch.allclose(implied(steered), implied(prediction) + shift, atol=1e-4)


def _speaking_face() -> np.ndarray:
    """A face mesh on a 16-px frame: its mouth box covers the lower middle, its lips meet at row 11."""
    landmarks = np.zeros((478, 3))
    landmarks[list(JAW_OUTLINE), :2] = [[4.0, 13.0], [12.0, 13.0]] * (len(JAW_OUTLINE) // 2) + [[8.0, 14.0]]
    landmarks[SUBNASALE, :2] = [8.0, 9.5]
    landmarks[list(INNER_LIPS), :2] = [8.0, 11.0]
    landmarks[list(FACE_TOP_AND_CHIN), :2] = [[8.0, 1.0], [8.0, 14.0]]
    return landmarks


def test_the_motion_stage_fits_a_guide_that_is_saved_with_the_motion_layers(tmp_path):
    start = tmp_path / "start"
    torch.manual_seed(0)
    RGBDPortraitModel.from_config(tiny_model_section()).save_pretrained(start)
    data, more = tmp_path / "videos", tmp_path / "more_videos"
    for folder, numbers in ((data, range(3)), (more, range(3, 5))):
        for number in numbers:
            write_fake_sequence(
                folder / f"s{number}",
                identity=f"s{number}",
                split="train",
                seconds=0.6,
                seed=number,
                speaking_landmarks=_speaking_face(),
            )
    stage = {
        "max_steps": 1,
        "batch_size": 1,
        "clip_frames": 4,
        "motion_frames": 1,
        "checkpoint_every": 0,
        "mouth_inpainting": 1.0,
        "mouth_guide": True,
        "mouth_guide_roots": [str(more)],
        "layers": {"num_attention_heads": 4, "audio_token_dim": 16, "n_mels": 8, "max_frames": 8},
    }
    config_path = tmp_path / "config.yaml"
    OmegaConf.save(
        {
            "model": {"pretrained": str(start)},
            "data": {"root": str(data), "validation_samples": 0},
            "train": {"output_dir": str(tmp_path / "run"), "stages": ["motion"], "motion": stage},
        },
        config_path,
    )
    config = load_config(config_path)
    final = train(config, show_progress=False)

    model = RGBDPortraitModel.from_pretrained(final)  # strict keys: the guide's buffers are expected and found
    guide = model.motion.mouth_guide
    assert model.motion.config.mouth_guide_latents == list(guide.latent_readout.shape)
    assert guide.latent_direction.abs().sum() > 0 and guide.audio_weights.abs().sum() > 0
    (final_row,) = [json.loads(line) for line in (tmp_path / "run" / "motion" / "logs" / "final.jsonl").open()]
    assert np.isfinite(final_row["mouth_guide_audio_r"]) and np.isfinite(final_row["mouth_guide_latent_r"])

    # The guide is fitted on the training clips that tile each sequence (15 frames: clips from 0, 4 and 8), then
    # on those of the guide-only folder: their audio and mouth only, as sequences of their own.
    recipe = MotionRecipe(model, config.train.motion)
    clips = recipe.clips(config.data, validation=False, resolution=16, seed=0)
    batches = list(recipe.finishing_batches(recipe.samples(clips), clips, 1))
    training = [batch for batch in batches if "rgb" in batch]
    guide_only = [batch for batch in batches if "rgb" not in batch]
    assert len(training) == len(guide_only) * 3 // 2 == 9
    assert all(set(batch) == {"audio", "mouth_opening", "sequence"} for batch in guide_only)
    sequences = lambda part: {int(batch["sequence"]) for batch in part}
    assert sequences(training) == {0, 1, 2} and sequences(guide_only) == {3, 4}

    elsewhere = f"train.output_dir={tmp_path / 'other_run'}"
    without_guide = load_config(config_path, ["train.motion.mouth_guide=false", elsewhere])
    with pytest.raises(UserInputError, match="mouth_guide_roots: only read to fit a mouth guide"):
        train(without_guide, show_progress=False)
    missing = load_config(config_path, [f"train.motion.mouth_guide_roots=[{tmp_path / 'nowhere'}]", elsewhere])
    with pytest.raises(UserInputError, match=r"train.motion.mouth_guide_roots\[0\]: .*nowhere not found"):
        train(missing, show_progress=False)


def test_at_zero_terminal_snr_v_is_steered_and_epsilon_left_alone():
    shift = lambda clean: clean + 1.0
    latents, prediction = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    for prediction_type in ("v_prediction", "epsilon"):
        scheduler = DDIMScheduler(
            prediction_type=prediction_type, rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False
        )
        scheduler.set_timesteps(4)
        first = scheduler.timesteps[0]
        steered = steered_prediction(scheduler, latents, prediction, first, shift)
        if prediction_type == "epsilon":  # pure noise: ε says nothing about the clean latents
            assert torch.equal(steered, prediction)
        else:
            implied = [scheduler.step(output, first, latents).pred_original_sample for output in (steered, prediction)]
            assert torch.allclose(implied[0], implied[1] + 1.0, atol=1e-4)
