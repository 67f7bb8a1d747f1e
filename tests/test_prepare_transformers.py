"""The transformers depth-estimation backend, with a tiny randomly initialised model saved by transformers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.data.prepare import prepare
from rgbd_portrait.data.prepare.transformers_depth import NOMINAL_PERSON_DEPTH_RANGE_M, model_output_kind
from rgbd_portrait.data.sample_format import read_sample
from rgbd_portrait.errors import UserInputError

transformers = pytest.importorskip("transformers")
pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def tiny_depth_model(tmp_path_factory):
    """A Depth Anything ("relative": predicts disparity) small enough to run in milliseconds."""
    backbone = transformers.Dinov2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=28,
        patch_size=14,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 16],
        reassemble_factors=[1, 1],
        fusion_hidden_size=8,
        head_hidden_size=8,
        patch_size=14,
        initializer_range=0.2,
    )
    model = transformers.DepthAnythingForDepthEstimation(config)
    # The head ends in a ReLU; a positive bias keeps the random prediction from being zero almost everywhere.
    torch.nn.init.constant_(model.head.conv3.bias, 1.0)
    folder = tmp_path_factory.mktemp("tiny-depth-anything")
    model.save_pretrained(folder)
    transformers.DPTImageProcessor(
        size={"height": 28, "width": 28}, keep_aspect_ratio=False, ensure_multiple_of=14
    ).save_pretrained(folder)
    return folder


def test_depth_model_backend_writes_depth_in_the_nominal_range(tmp_path, tiny_depth_model):
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    summary = prepare(
        [tmp_path / "astronaut.png"],
        tmp_path / "out",
        size=64,
        depth_backend="transformers",
        depth_model=tiny_depth_model,
        device="cpu",
        progress=False,
    )
    assert not summary.failures and summary.samples_written == 1
    sample = read_sample(tmp_path / "out" / "astronaut")
    assert sample.meta["depth_backend"] == f"transformers:{tiny_depth_model.name}"
    assert sample.meta["depth_source"] == "pseudo"
    person = sample.depth[sample.mask]
    assert np.all(np.isfinite(person))
    # Disparity quantiles map to [nose tip, nose tip + range]; the nose tip is within a head of 1 m.
    assert person.min() > 0.85 and person.max() < 1.15 + NOMINAL_PERSON_DEPTH_RANGE_M
    assert person.max() - person.min() > 0.5 * NOMINAL_PERSON_DEPTH_RANGE_M
    assert np.all(sample.depth[~sample.mask] == 0)


def test_model_output_kind_follows_the_model_family():
    assert model_output_kind(transformers.DPTConfig()) == "disparity"
    assert model_output_kind(transformers.DepthAnythingConfig(depth_estimation_type="relative")) == "disparity"
    assert model_output_kind(transformers.DepthAnythingConfig(depth_estimation_type="metric")) == "metric"
    assert model_output_kind(transformers.ZoeDepthConfig()) == "metric"
    with pytest.raises(UserInputError, match="--depth-model-output"):
        model_output_kind(SimpleNamespace(model_type="mystery"))


def test_a_folder_without_a_model_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not a transformers model folder"):
        prepare([tmp_path], tmp_path / "out", depth_backend="transformers", depth_model=tmp_path)
