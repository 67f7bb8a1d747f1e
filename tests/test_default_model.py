"""The shipped default model (`rgbd_portrait/weights/default`): it loads strictly and does every task on the CPU.

One held-out synthetic test head at the model's size, one or two denoising steps per task: seconds, not a
benchmark (the measured quality is in weights/default/training/evaluation).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from rgbd_portrait.data.audio import AudioTrack
from rgbd_portrait.data.synth.studio import render_samples, still_view, studio_identity
from rgbd_portrait.demo.portraits import STUDIO, studio_test_identities
from rgbd_portrait.evaluation.metrics import align_scale_shift, depth_metrics
from rgbd_portrait.models.checkpoint import read_index
from rgbd_portrait.pipelines import RGBDPortraitPipeline
from rgbd_portrait.weights import default_model_dir


@pytest.fixture(scope="module")
def pipe():
    return RGBDPortraitPipeline.from_pretrained()


@pytest.fixture(scope="module")
def head(pipe):
    """Two views of the first test identity (never seen in training): (reference, target) samples."""
    index = studio_test_identities(1)[0]
    options = replace(STUDIO, size=pipe.model.resolution)
    identity = studio_identity(STUDIO.seed, index)
    return render_samples([still_view(options, identity, index, view) for view in (0, 1)])


def test_shipped_weights_are_small_fp16_and_load_as_float32(pipe):
    folder = default_model_dir()
    weights = list(folder.rglob("*.safetensors"))
    assert sum(path.stat().st_size for path in weights) < 60 * 2**20
    assert {parameter.dtype for parameter in pipe.model.parameters()} == {torch.float32}
    index = read_index(folder)
    assert "motion" in index  # the talking-head layers ship with it
    assert pipe.model.motion is not None


def test_image_to_depth_recovers_a_test_head(pipe, head):
    target = head[1]
    out = pipe.predict_depth(target.rgb, num_inference_steps=1, center_on_face=False, output_type="pt")
    depth = out.depth.reshape(1, *target.depth.shape)
    assert depth.shape[-1] == pipe.model.resolution
    truth = torch.from_numpy(target.depth)[None]
    mask = torch.from_numpy(target.mask)[None].bool()
    aligned = align_scale_shift(depth.float(), truth, mask).aligned
    abs_rel = float(depth_metrics(aligned, truth, mask, align=False)["abs_rel"].mean())
    # The mean-face template scores about 0.02 on the test split; a working model is well under it.
    assert abs_rel < 0.015


def test_generation_rendering_and_relighting_run(pipe, head):
    reference, target = head
    generator = torch.Generator().manual_seed(0)
    options = {"num_inference_steps": 2, "center_on_face": False, "generator": generator, "output_type": "np"}
    joint = pipe.generate(reference.rgb, **options)
    rendered = pipe.render(target.depth, reference=reference.rgb, mask=target.mask, **options)
    relit = pipe.relight(target.rgb, "left", center_on_face=False, num_inference_steps=1, output_type="np")
    side = pipe.model.resolution
    for out in (joint, rendered, relit):
        image = np.asarray(out.rgb).reshape(-1, side, side, 3)
        assert np.isfinite(image).all() and image.std() > 0.02  # an image, not a constant
    assert np.asarray(joint.depth).reshape(-1, side, side).std() > 0.01


def test_animation_runs_one_window(pipe, head):
    tone = (0.1 * np.sin(np.linspace(0, 400 * np.pi, 16000))).astype(np.float32)
    audio = AudioTrack(tone, 16000, "a 200 Hz tone")
    out = pipe.animate(head[0].rgb, audio, seconds=0.4, num_inference_steps=1, center_on_face=False)
    assert out.rgb.shape[0] == out.depth.shape[0] == 10  # 0.4 s at 25 frames/s
    assert np.isfinite(out.rgb).all() and np.isfinite(out.depth).all()
