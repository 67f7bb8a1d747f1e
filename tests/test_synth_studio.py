"""The studio's data set: layout, determinism, splits by identity, bad input, shards, preview and CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.cli.main import main
from rgbd_portrait.data.sample_format import find_samples, read_meta, read_sample, sequence_frames
from rgbd_portrait.data.shards import index_shard
from rgbd_portrait.data.synth import (
    Camera,
    Expression,
    Pose,
    View,
    assign_splits,
    render_dataset,
    render_samples,
    still_view,
    studio_identity,
)
from rgbd_portrait.data.synth.head import MATERIALS, HeadScene
from rgbd_portrait.data.synth.renderer import camera_rays, rotate
from rgbd_portrait.data.synth.studio import StudioOptions
from rgbd_portrait.errors import UserInputError

SMALL = dict(identities=4, samples_per_identity=2, size=32, relights=1, sequences=1, sequence_seconds=0.2)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    render_dataset(root, **SMALL, seed=3, batch_size=3, preview=True, show_progress=False)
    return root


def test_layout_and_sample_contents(dataset):
    description = json.loads((dataset / "dataset.json").read_text())
    assert description["samples"] == 8 and description["sequences"] == 1
    samples = find_samples(dataset)
    assert len(samples) == 8
    sample = read_sample(samples[0])
    assert sample.rgb.shape == (32, 32, 3) and sample.depth.dtype == np.float32
    assert len(sample.relit) == 1 and sample.normal is not None and sample.albedo is not None
    meta = sample.meta
    assert meta["depth_source"] == "exact" and meta["split"] == samples[0].parent.name
    assert np.allclose(np.asarray(meta["intrinsics"])[2], [0, 0, 1])
    assert len(meta["relit"]) == 1 and "direction" in meta["relit"][0]["lights"][0]
    assert {"jaw_open", "smile", "blink", "brow_raise"} <= set(meta["expression"])
    with Image.open(dataset / "preview.png") as preview:
        assert preview.width == 5 * 128  # rgb, depth, normals, albedo, one relit image


def test_same_seed_gives_byte_identical_files_whatever_the_batch_size(dataset, tmp_path):
    again = tmp_path / "again"
    render_dataset(again, **SMALL, seed=3, batch_size=8, preview=True, show_progress=False)
    assert _tree(again) == _tree(dataset)
    # Worker processes render the same files.
    parallel = tmp_path / "parallel"
    render_dataset(parallel, **SMALL, seed=3, batch_size=2, workers=2, preview=True, show_progress=False)
    assert _tree(parallel) == _tree(dataset)
    other = tmp_path / "other"
    render_dataset(other, **{**SMALL, "sequences": 0}, seed=4, show_progress=False)
    (seed_4,) = other.glob("*/id00000_000")
    (seed_3,) = dataset.glob("*/id00000_000")
    assert (seed_4 / "rgb.png").read_bytes() != (seed_3 / "rgb.png").read_bytes()


def test_splits_are_disjoint_by_identity(dataset):
    split_of = {}
    for folder in find_samples(dataset, include_sequences=True):
        meta = read_meta(folder)
        assert split_of.setdefault(meta["identity"], meta["split"]) == meta["split"]
    described = json.loads((dataset / "dataset.json").read_text())["splits"]
    assert sorted(sum(described.values(), [])) == sorted(split_of)
    for split, identities in described.items():
        assert all(split_of[identity] == split for identity in identities)


def test_split_assignment_shares_and_determinism():
    splits = assign_splits(20, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (16, 2, 2)
    assert splits == assign_splits(20, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert splits != assign_splits(20, seed=1, val_fraction=0.1, test_fraction=0.1)
    assert assign_splits(3, seed=0, val_fraction=0.1, test_fraction=0.1).count("train") == 1
    assert assign_splits(1, seed=0, val_fraction=0.1, test_fraction=0.1) == ["train"]


def test_sequence_folder(dataset):
    (sequence,) = [path for path in (dataset / "sequences").glob("*/*") if path.is_dir()]
    frames = sequence_frames(sequence)
    meta = read_meta(sequence)
    assert len(frames) == meta["frame_count"] == 5 and meta["fps"] == 25
    assert (sequence / meta["audio"]).is_file() and meta["audio_sample_rate"] == 16000
    assert read_meta(frames[2])["frame_index"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"identities": 0}, "identities"),
        ({"samples_per_identity": -1}, "samples_per_identity"),
        ({"relights": -2}, "relights"),
        ({"sequences": -1}, "sequences"),
        ({"size": 36}, "multiple of 8"),
        ({"sequence_seconds": 0.0}, "sequence_seconds"),
        ({"device": "tpu-ish"}, "device"),
    ],
)
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, overrides, message):
    with pytest.raises(UserInputError, match=message) as error:
        render_dataset(tmp_path / "out", **{**SMALL, **overrides}, show_progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_unwritable_or_non_empty_output_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserInputError, match="cannot write"):
        render_dataset(blocker / "out", **SMALL, show_progress=False)
    with pytest.raises(UserInputError, match="not a folder"):
        render_dataset(blocker, **SMALL, show_progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(UserInputError, match="not empty"):
        render_dataset(tmp_path / "full", **SMALL, show_progress=False)
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "out"), "--identities", "-3", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "identities" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_writes_shards_readable_like_folders(tmp_path, capsys):
    root = tmp_path / "sharded"
    arguments = ["synth", "--out", str(root), "--identities", "3", "--samples-per-identity", "2", "--size", "32"]
    assert main([*arguments, "--relights", "1", "--shards", "--samples-per-shard", "2", "--no-progress"]) == 0
    assert "wrote 6 samples" in capsys.readouterr().out
    shards = sorted(root.glob("*.tar"))
    assert [path.name for path in shards] == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]
    entry = index_shard(shards[0])[0]
    sharded = entry.read()
    options = StudioOptions(identities=3, samples_per_identity=2, size=32, relights=1)
    identity_index, sample_index = int(entry.key[2:7]), int(entry.key[-3:])  # keys are idNNNNN_KKK
    (expected,) = render_samples(
        [still_view(options, studio_identity(0, identity_index), identity_index, sample_index)]
    )
    np.testing.assert_array_equal(sharded.rgb, expected.rgb)
    np.testing.assert_array_equal(sharded.depth, expected.depth)
    assert len(sharded.relit) == 1


def test_identities_differ_and_expressions_move_the_face():
    options = StudioOptions(identities=2, samples_per_identity=1, size=64, relights=0)
    base = still_view(options, studio_identity(0, 0), 0, 0)
    other = still_view(options, studio_identity(0, 1), 1, 0)
    close = Camera(size=64, focal_length_mm=85.0, distance=0.6)  # the head fills the frame
    neutral = View(base.identity, Expression(), Pose(), close, base.lighting)
    variants = {
        "other identity": View(other.identity, Expression(), Pose(), close, base.lighting),
        "jaw": View(base.identity, Expression(jaw_open=1.0), Pose(), close, base.lighting),
        "blink": View(base.identity, Expression(blink=1.0), Pose(), close, base.lighting),
    }
    samples = render_samples([neutral, *variants.values()])
    reference = samples[0]
    changed = {
        name: np.abs(sample.rgb.astype(int) - reference.rgb.astype(int)).sum(-1) > 30
        for name, sample in zip(variants, samples[1:])
    }
    assert changed["other identity"].mean() > 0.1
    rows = np.nonzero(reference.mask.any(1))[0]
    top, height = rows[0], rows[-1] - rows[0]
    # The jaw changes the lower face, a blink the eye band, each hardly anything else.
    jaw_rows = np.nonzero(changed["jaw"].any(1))[0]
    blink_rows = np.nonzero(changed["blink"].any(1))[0]
    assert jaw_rows.size and jaw_rows.min() > top + 0.35 * height
    assert blink_rows.size and blink_rows.max() < top + 0.6 * height
    eye_pixels = []
    for view in (neutral, variants["blink"]):
        scene = HeadScene([view])
        sample = render_samples([view])[0]
        eye_pixels.append(_count_material(scene, view, sample, "eye"))
    assert eye_pixels[0] >= 6 and eye_pixels[1] == 0


def _count_material(scene, view, sample, material):
    """Pixels whose surface belongs to `material`, by the scene's own parts at the rendered depth."""
    rays = camera_rays([view.camera])[0]
    hit = torch.from_numpy(sample.mask.reshape(-1))
    count = int(hit.sum())
    points_camera = rays[:, hit] * (torch.from_numpy(sample.depth.reshape(-1))[hit] / -rays[2, hit])
    points = rotate(scene.rotation.expand(count, 3, 3), points_camera) + scene.translation[0, :, None]
    columns = scene.parameters.columns(torch.zeros(count, dtype=torch.long))
    return int((scene.materials(tuple(points), columns) == MATERIALS.index(material)).sum())
