"""`rgbd-portrait eval` end to end on a tiny random model and a tiny rendered data set, and its building blocks."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from rgbd_portrait.cli.main import main
from rgbd_portrait.data.dataset import discover_samples
from rgbd_portrait.data.synth import render_dataset
from rgbd_portrait.evaluation.runner import (
    EvaluationOptions,
    EvaluationSet,
    _IdentityCandidates,
    score_depth,
)
from rgbd_portrait.evaluation.synthetic_truth import is_synthetic, render_under_lights, view_from_meta
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section

SIZE = 32  # data images; the tiny model works at 16 px


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """4 identities × 2 samples with one relit render each: 2 identities for training, 2 for testing."""
    root = tmp_path_factory.mktemp("eval") / "studio"
    render_dataset(
        root,
        identities=4,
        samples_per_identity=2,
        size=SIZE,
        relights=1,
        val_fraction=0.0,
        test_fraction=0.5,
        seed=0,
        show_progress=False,
    )
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("eval-model") / "tiny"
    RGBDPortraitModel.from_config(tiny_model_section()).save_pretrained(folder)
    return folder


def test_eval_command_writes_every_task_section(data_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        ["eval", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--limit", "3"]
        + ["--speed-repeats", "1", "--batch-size", "2", "--no-progress"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 3 and results["identities"] == 2 and results["split"] == "test"
    assert results["command"].startswith(f"rgbd-portrait eval --model {model_dir} --data {data_dir} --split test")
    assert "--limit 3" in results["command"]

    depth_rows = results["image_to_depth"]["rows"]
    assert set(depth_rows) == {"model", "mean-face template", "flat plane"}
    for row in depth_rows.values():
        assert row["samples"] == 3
        assert 0 <= row["abs_rel"] < 1 and 0 <= row["delta1"] <= 1 and 0 <= row["normal_mean_deg"] <= 180

    depth_to_image = results["depth_to_image"]
    assert depth_to_image["ground_truth"] == {"re-rendered under the reference's light": 3}
    # The studio renders the stored samples again bit for bit: PSNR inf, written as null.
    assert depth_to_image["rerender_check_psnr"] is None
    assert set(depth_to_image["image"]["rows"]) == {"model", "reference image, unchanged"}
    assert set(depth_to_image["geometry"]["rows"]) == {"generated image", "ground-truth image", "mean-face template"}
    assert all(0 < row["psnr"] < 60 for row in depth_to_image["image"]["rows"].values())
    assert set(depth_to_image["detail"]["rows"]) == {"ground-truth image", "generated image"}

    joint = results["joint"]
    assert joint["consistency"]["rows"]["generated RGB vs generated depth"]["samples"] == 3 * 2
    assert joint["diversity"]["rows"]["between seeds"]["pairwise_rgb_mae"] > 0  # different seeds differ
    detail = {name: row["fine_detail"] for name, row in joint["detail"]["rows"].items()}
    assert set(detail) == {"reference photo", "reference photo through the codec", "generated image"}
    assert all(math.isfinite(value) for value in detail.values())
    identity = joint["identity"]["rows"]["generated"]
    assert identity["chance_pct"] == 50.0 and 0 <= identity["identity_top1_depth_pct"] <= 100

    relighting = results["relighting"]["rows"]
    assert len(relighting) == 5 and all(row["samples"] == 3 for row in relighting.values())
    speed = results["speed"]["rows"]
    assert set(speed) == {"image→depth", "depth→image", "joint generation", "relighting (depth predicted)"}
    assert all(row["seconds_per_image"] > 0 for row in speed.values())

    markdown = (out / "results.md").read_text()
    assert f"Command: `{results['command']}`" in markdown
    for heading in ("## Image → depth", "## Depth → image", "## Joint generation", "## Relighting", "## Speed"):
        assert heading in markdown
    assert "| mean-face template |" in markdown
    printed = capsys.readouterr().out
    assert "## Image → depth" in printed and str(out / "results.json") in printed


def test_eval_command_passes_the_image_to_depth_reference_choice(data_dir, model_dir, tmp_path):
    out = tmp_path / "results"
    arguments = ["eval", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--limit", "2"]
    assert main(arguments + ["--tasks", "image_to_depth", "--no-self-reference", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["options"]["self_reference"] is False and results["command"].endswith("--no-self-reference")
    assert results["model_settings"]["depth_self_reference"] is True
    assert "ensemble with no reference, depth→image" in (out / "results.md").read_text()


def test_eval_command_refuses_unknown_tasks_and_missing_data_before_loading(data_dir, tmp_path, capsys):
    missing_model = str(tmp_path / "no-model")
    assert main(["eval", "--model", missing_model, "--data", str(data_dir), "--tasks", "depth,speed"]) == 2
    assert "tasks: depth; choose from" in capsys.readouterr().err
    assert main(["eval", "--model", missing_model, "--data", str(tmp_path / "nothing")]) == 2
    assert "data folder not found" in capsys.readouterr().err


def test_evaluation_set_takes_identities_in_turn_with_same_identity_references(data_dir):
    samples = EvaluationSet(data_dir, split="test", limit=3)
    identities = [item.identity for item in samples.items]
    assert identities[0] != identities[1] and identities[2] == identities[0]
    for item in samples.items:
        reference = samples.reference_of(item)
        assert reference.identity == item.identity and reference.key != item.key


def test_a_limit_picks_the_same_people_whatever_the_folder_layout(data_dir, tmp_path):
    entries = [entry for entry in discover_samples(data_dir) if entry.split == "test"]
    identities = sorted({entry.identity for entry in entries})
    # The same samples under folders named so that the discovery order of the people is reversed.
    for entry in entries:
        rank = len(identities) - identities.index(entry.identity)
        shutil.copytree(entry.source, tmp_path / f"source-{rank}" / entry.source.name)
    for limit in (1, None):
        original = EvaluationSet(data_dir, split="test", limit=limit, show_progress=False)
        moved = EvaluationSet(tmp_path, split="test", limit=limit, show_progress=False)
        assert [item.identity for item in moved.items] == [item.identity for item in original.items]


def test_score_depth_of_an_affine_copy_of_the_truth_is_perfect(data_dir):
    item = EvaluationSet(data_dir, split="test").items[0]
    truth, mask = item.depth[None], item.mask[None]
    prediction = torch.where(mask, 0.3 * truth + 2.0, 7.0)  # any affine map on the mask; anything off it
    metrics = score_depth(prediction, truth, mask, intrinsics=[item.intrinsics()])
    assert metrics["abs_rel"].item() < 1e-6 and metrics["delta1"].item() == 1.0
    assert metrics["normal_mean_deg"].item() < 1e-2


def test_identity_of_another_render_of_the_reference_identity_ranks_first(data_dir):
    samples = EvaluationSet(data_dir, split="test")
    reference = samples.items[0]
    other = samples.reference_of(reference)  # the same identity's other sample
    depth = torch.where(other.mask, other.depth, other.depth.max())
    scores = _IdentityCandidates(samples).score(reference, other.rgb[None], depth[None])
    assert scores["own_identity_abs_rel"].item() < 1e-6 and scores["own_identity_colour_mae"].item() == 0
    assert scores["identity_top1_depth_pct"].item() == 100 and scores["identity_top1_colour_pct"].item() == 100


def test_synthetic_views_render_again_exactly_under_their_own_and_other_lights(data_dir):
    item = EvaluationSet(data_dir, split="test").items[0]
    meta = item.sample.meta
    assert is_synthetic(meta) and not is_synthetic({"source": "prepared"})
    assert view_from_meta(meta).identity.identity_id == meta["identity"]
    (view,) = render_under_lights([meta], [meta["relit"][0]])
    np.testing.assert_array_equal(view.own_light, item.sample.rgb)
    np.testing.assert_array_equal(view.other_light, item.sample.relit[0])
    np.testing.assert_array_equal(view.mask, item.sample.mask)


def test_options_are_checked():
    with pytest.raises(Exception, match="joint_samples"):
        EvaluationOptions(joint_samples=0).check()
    with pytest.raises(Exception, match="limit"):
        EvaluationOptions(limit=0).check()
