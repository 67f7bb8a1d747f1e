"""Stage 2 (motion) in the trainer: a few steps on talking clips change the motion layers and nothing else."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from omegaconf import OmegaConf
from safetensors.torch import load_file

from animate_support import PSEUDO_DEPTH_META, write_fake_sequence, write_fake_still
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.training import load_config, train
from rgbd_portrait.training.config import MotionLayersConfig, MotionStageConfig
from rgbd_portrait.training.motion_stage import MotionRecipe, make_clip_inputs

CLIP = 4
MOTION_FRAMES = 1
STAGE = {
    "max_steps": 3,
    "batch_size": 1,
    "learning_rate": 1e-3,
    "clip_frames": CLIP,
    "motion_frames": MOTION_FRAMES,
    "checkpoint_every": 0,
    "validate_every": 3,
    "validation_inference_steps": 1,
    "layers": {"num_attention_heads": 4, "audio_token_dim": 16, "n_mels": 8, "max_frames": 8},
}


def _config(path, *, data_root, start_model, output_dir):
    OmegaConf.save(
        {
            "model": {"pretrained": str(start_model)},
            "data": {"root": str(data_root), "validation_samples": 1},
            "train": {"output_dir": str(output_dir), "stages": ["motion"], "log_every": 1, "motion": STAGE},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("start") / "model"
    torch.manual_seed(0)
    RGBDPortraitModel.from_config(tiny_model_section()).save_pretrained(folder)
    return folder


def test_motion_stage_trains_only_the_motion_layers(tmp_path, start_model):
    data = tmp_path / "data"
    write_fake_sequence(data / "sequences" / "train" / "a", identity="a", split="train", seconds=0.32, seed=1)
    write_fake_sequence(data / "sequences" / "val" / "b", identity="b", split="val", seconds=0.2, seed=2)
    output = tmp_path / "run"
    config = load_config(_config(tmp_path / "config.yaml", data_root=data, start_model=start_model, output_dir=output))
    final = train(config, show_progress=False)

    for component in ("backbone", "reference_net", "context", "vae"):
        before = load_file(start_model / component / "diffusion_pytorch_model.safetensors")
        after = load_file(final / component / "diffusion_pytorch_model.safetensors")
        assert before.keys() == after.keys()
        assert all(torch.equal(before[key], after[key]) for key in before), component
    trained = RGBDPortraitModel.from_pretrained(final)
    assert trained.motion.config.window_frames == CLIP and trained.motion.config.motion_frames == MOTION_FRAMES
    # The zero-initialised output projections moved: the motion layers now act.
    assert any(layer.proj_out.weight.abs().max() > 0 for layer in trained.motion.temporal)
    assert any(layer.attention.to_out[0].weight.abs().max() > 0 for layer in trained.motion.audio_attention[::2])
    losses = (output / "motion" / "logs" / "train.jsonl").read_text().splitlines()
    assert len(losses) == 3
    assert (output / "motion" / "validation" / "step-00000003.png").is_file()


def test_missing_sequences_stop_before_any_work(tmp_path, start_model):
    data = tmp_path / "stills"
    write_fake_still(data / "train" / "a_000", identity="a", split="train")
    output = tmp_path / "run"
    config = load_config(_config(tmp_path / "config.yaml", data_root=data, start_model=start_model, output_dir=output))
    with pytest.raises(UserInputError, match="no 'train' talking sequence"):
        train(config, show_progress=False)
    assert not (output / "motion").exists()
    with pytest.raises(UserInputError, match="motion_frames < clip_frames"):
        load_config(tmp_path / "config.yaml", ["train.motion.motion_frames=4"])


def test_motion_sources_mix_real_videos_in_by_weight(tmp_path, start_model):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_fake_sequence(synthetic / "train" / "a", identity="a", split="train", seconds=0.32, seed=1)
    write_fake_sequence(synthetic / "val" / "b", identity="b", split="val", seconds=0.2, seed=2)
    # Prepared videos: training clips only (held-out speakers live elsewhere), one frame without a face.
    real_x, real_y, pseudo = real / "s1__x", real / "s1__y", PSEUDO_DEPTH_META
    write_fake_sequence(real_x, identity="s1", split="train", seconds=0.4, seed=3, missing=(5,), frame_meta=pseudo)
    write_fake_sequence(real_y, identity="s1", split="train", seconds=0.2, seed=4, frame_meta=pseudo)
    output = tmp_path / "run"
    path = _config(tmp_path / "config.yaml", data_root=synthetic, start_model=start_model, output_dir=output)
    overrides = [f"train.motion.sources=[{{root: {real}, weight: 3.0}}]", "train.motion.data_root_weight=1.0"]
    overrides += ["train.motion.pseudo_depth_weight=0.5", "train.motion.extrapolated_depth_weight=0.35"]
    config = load_config(path, overrides)

    recipe = MotionRecipe(RGBDPortraitModel.from_pretrained(start_model), config.train.motion)
    clips = recipe.clips(config.data, validation=False, resolution=16, seed=0)
    parts = [len(part) for part in clips.parts]
    assert parts == [5, 2 + 1 + 2]
    is_real = torch.tensor([number == 1 for number, _ in clips.locations])
    assert float(clips.sample_weights[is_real].sum() / clips.sample_weights.sum()) == pytest.approx(0.75)
    # Validation reads the folders that have a validation split (here only the synthetic one).
    assert len(recipe.clips(config.data, validation=True, resolution=16, seed=0)) == 2

    final = train(config, show_progress=False)
    assert len((output / "motion" / "logs" / "train.jsonl").read_text().splitlines()) == 3
    assert RGBDPortraitModel.from_pretrained(final).motion is not None

    elsewhere = f"train.output_dir={tmp_path / 'other_run'}"
    missing = load_config(path, [f"train.motion.sources=[{{root: {tmp_path / 'nowhere'}}}]", elsewhere])
    with pytest.raises(UserInputError, match=r"train.motion.sources\[0\].root"):
        train(missing, show_progress=False)
    with pytest.raises(UserInputError, match="must be positive"):
        load_config(path, [f"train.motion.sources=[{{root: {real}, weight: 0}}]"])
    with pytest.raises(UserInputError, match="train.motion.pseudo_depth_weight must be >= 0"):
        load_config(path, ["train.motion.pseudo_depth_weight=-1"])


def test_cached_frame_latents_give_the_same_motion_training(tmp_path, start_model):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_fake_sequence(synthetic / "train" / "a", identity="a", split="train", seconds=0.32, seed=1)
    # Two folders, one with a frame missing: the cache maps each clip to its frames in each folder's cache.
    real_x = real / "s1__x"
    write_fake_sequence(
        real_x, identity="s1", split="train", seconds=0.4, seed=3, missing=(5,), frame_meta=PSEUDO_DEPTH_META
    )
    losses = {}
    for cached in (False, True):
        output = tmp_path / f"run_{cached}"
        path = _config(tmp_path / "config.yaml", data_root=synthetic, start_model=start_model, output_dir=output)
        overrides = [f"train.motion.sources=[{{root: {real}, weight: 1.0}}]", "train.motion.validate_every=0"]
        overrides += [f"data.cache_latents={str(cached).lower()}", "train.motion.batch_size=2"]
        train(load_config(path, overrides), show_progress=False)
        rows = (output / "motion" / "logs" / "train.jsonl").read_text().splitlines()
        losses[cached] = [json.loads(row)["loss"] for row in rows]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    caches = list((tmp_path / "run_True" / "latent_cache").iterdir())
    assert len(caches) == 2  # one per folder, each frame encoded once


def test_clip_inputs_share_a_timestep_per_clip_and_give_motion_frames():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    stage = dataclasses.replace(MotionStageConfig(), clip_frames=5, motion_frames=2, motion_frames_dropout=0.5)
    clean = torch.randn(64, 5, 8, 4, 4)
    foreground = torch.ones(64, 5, 1, 4, 4)
    inputs = make_clip_inputs(clean, foreground, scheduler=scheduler, stage=stage, generator=torch.Generator())
    timesteps = inputs.timesteps.view(64, 5)
    assert (timesteps == timesteps[:, :1]).all()
    given = inputs.masks.view(64, 5, 2, 4, 4).amax(dim=(2, 3, 4)) > 0
    with_motion = given[:, 0]
    assert 0 < with_motion.sum() < 64  # motion-frame dropout draws both kinds of clip
    assert given[with_motion, :2].all() and not given[:, 2:].any() and not given[~with_motion].any()
    weights = inputs.loss_weights.view(64, 5, -1)
    assert (weights[given] == 0).all() and (weights[~given] == 1).all()
    assert torch.equal(inputs.known, clean.flatten(0, 1))


def test_depth_weight_scales_the_depth_channels_of_the_generated_frames_only():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    stage = dataclasses.replace(MotionStageConfig(), clip_frames=3, motion_frames=1, motion_frames_dropout=0.0)
    clean = torch.randn(2, 3, 8, 4, 4)
    foreground = torch.ones(2, 3, 1, 4, 4)
    depth_weight = torch.ones(2, 3, 1, 4, 4)
    depth_weight[1] = 0.25  # the second clip has pseudo-depth
    depth_weight[1, :, :, 0, 0] = 0.1  # extrapolated there
    inputs = make_clip_inputs(
        clean, foreground, scheduler=scheduler, stage=stage, generator=torch.Generator(), depth_weight=depth_weight
    )
    weights = inputs.loss_weights.view(2, 3, 8, 4, 4)
    assert (weights[:, 0] == 0).all()  # the motion frame is given
    assert (weights[:, 1:, :4] == 1).all() and (weights[0, 1:, 4:] == 1).all()  # RGB, and exact depth, plain
    assert torch.allclose(weights[1, 1:, 4:, 0, 0], torch.tensor(0.1))
    assert torch.allclose(weights[1, 1:, 4:].flatten(2)[..., 1:], torch.tensor(0.25))


def test_dynamic_loss_weight_favours_the_cells_that_change():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    plain = dataclasses.replace(MotionStageConfig(), clip_frames=4, motion_frames=0, motion_frames_dropout=0.0)
    weighted = dataclasses.replace(plain, dynamic_loss_weight=3.0)
    clean = torch.zeros(2, 4, 8, 4, 4)
    clean[0, :, :, 1, 2] = torch.arange(4.0).view(4, 1)  # one cell of the first clip moves; the second is still
    foreground = torch.ones(2, 4, 1, 4, 4)
    draw = lambda stage: make_clip_inputs(
        clean, foreground, scheduler=scheduler, stage=stage, generator=torch.Generator().manual_seed(0)
    )
    assert (draw(plain).loss_weights == 1).all()
    weights = draw(weighted).loss_weights.view(2, 4, 8, 4, 4)
    assert (weights[1] == 1).all()  # a still clip keeps the plain weights
    moving = weights[0, :, :, 1, 2]
    assert (moving > 1).all() and torch.allclose(weights[0].mean(), torch.tensor(4.0))  # 1 + 3 on average
    assert torch.allclose(weights[0].sum(dim=(2, 3)) - moving, torch.full((4, 8), 15.0))


def test_mouth_inpainting_knows_the_reference_outside_the_mouth_box_of_the_generated_frames_only():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    plain = dataclasses.replace(MotionStageConfig(), clip_frames=3, motion_frames=1, motion_frames_dropout=0.0)
    inpainting = dataclasses.replace(plain, mouth_inpainting=1.0)
    clean = torch.randn(2, 3, 8, 4, 4)
    foreground = torch.ones(2, 3, 1, 4, 4)
    # 32-px frames, 8-px latent cells: the first clip's box covers rows 2-3 and columns 1-2; the second has none.
    boxes = torch.tensor([[17.0, 30.0, 9.0, 20.0], [float("nan")] * 4])
    references = torch.randn(2, 8, 4, 4)
    draw = lambda stage, mouth_boxes: make_clip_inputs(
        clean,
        foreground,
        scheduler=scheduler,
        stage=stage,
        generator=torch.Generator().manual_seed(0),
        mouth_boxes=mouth_boxes,
        still_latents=references,
        side=32,
    )
    without, inpainted = draw(plain, boxes), draw(inpainting, boxes)
    # Off (the default), the boxes change nothing, not even the random draws.
    reference = draw(plain, None)
    assert torch.equal(without.masks, reference.masks) and torch.equal(without.noisy, reference.noisy)
    masks = inpainted.masks.view(2, 3, 2, 4, 4)
    mouth = torch.zeros(4, 4, dtype=torch.bool)
    mouth[2:4, 1:3] = True
    assert (masks[:, 0] == 1).all()  # motion frames stay whole
    assert (masks[0, 1:, :, mouth] == 0).all() and (masks[0, 1:, :, ~mouth] == 1).all()
    assert (masks[1, 1:] == 0).all()  # no landmarks: generated whole
    weights = inpainted.loss_weights.view(2, 3, 8, 4, 4)
    assert (weights[0, 1:, :, mouth] == 1).all() and (weights[0, 1:, :, ~mouth] == 0).all()
    assert (weights[1, 1:] == 1).all()
    # What is known around the mouth is the still reference, as animation gives the photo: each frame's own
    # surround would tell the mouth's opening. Motion frames, and clips generated whole, keep their own latents.
    known = inpainted.known.view(2, 3, 8, 4, 4)
    assert torch.equal(known[0, 1:], references[0].expand(2, -1, -1, -1))
    assert torch.equal(known[0, 0], clean[0, 0]) and torch.equal(known[1], clean[1])
    with pytest.raises(ValueError, match="still latents"):
        make_clip_inputs(
            clean,
            foreground,
            scheduler=scheduler,
            stage=inpainting,
            generator=torch.Generator(),
            mouth_boxes=boxes,
            side=32,
        )


def test_the_clip_mouth_box_spans_its_frames_landmarks(tmp_path):
    from rgbd_portrait.data.audio import LogMelFeatures
    from rgbd_portrait.data.face_regions import JAW_OUTLINE, SUBNASALE, mouth_box
    from rgbd_portrait.data.sequence_dataset import TalkingClipDataset

    landmarks = np.zeros((478, 3))
    landmarks[list(JAW_OUTLINE), :2] = [[4.0, 10.0], [12.0, 12.0]] * (len(JAW_OUTLINE) // 2) + [[8.0, 13.0]]
    landmarks[SUBNASALE, :2] = [8.0, 9.0]
    box = mouth_box(landmarks)
    # From below the nose (row 9) to a quarter of nose-to-chin below the chin (13 + 1), the jaw's width ± 0.8.
    assert box == pytest.approx([9.0, 14.0, 3.2, 12.8])
    folder = tmp_path / "seq"
    meta = {"face_landmarks": landmarks.tolist()}
    write_fake_sequence(folder, identity="a", split="train", seconds=0.2, frame_meta=meta)
    faceless = tmp_path / "faceless"
    write_fake_sequence(faceless, identity="b", split="train", seconds=0.2)
    features = LogMelFeatures(n_mels=8)
    # Read at twice the stored 16 px, the box scales about the pixel centres.
    clips = TalkingClipDataset(folder, audio_features=features, resolution=32, clip_frames=3)
    assert clips.mouth_box_of(0) == pytest.approx((box + 0.5) * 2 - 0.5)
    assert torch.equal(clips[0]["mouth_box"], torch.from_numpy(clips.mouth_box_of(0)))
    assert np.isnan(TalkingClipDataset(faceless, audio_features=features, clip_frames=3).mouth_box_of(0)).all()


def test_layers_trained_with_mouth_inpainting_default_to_mouth_only_animation(start_model):
    layers = MotionLayersConfig(**STAGE["layers"])
    stage = dataclasses.replace(MotionStageConfig(), clip_frames=CLIP, motion_frames=MOTION_FRAMES, layers=layers)
    for share, expected in ((0.0, False), (0.5, True)):
        model = RGBDPortraitModel.from_pretrained(start_model)
        MotionRecipe(model, dataclasses.replace(stage, mouth_inpainting=share))
        assert model.motion.config.mouth_only is expected
