"""`rgbd-portrait generate | depth | render | relight` end to end with a tiny random model folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.cli import common
from rgbd_portrait.cli.main import main
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.pipelines.files import run_depth

COMMON_FILES = {"depth.npy", "depth.png", "depth_color.png", "normals.png", "point_cloud.ply", "preview.png"}
COMMON_FILES |= {"rgb.png", "result.json"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    RGBDPortraitModel.from_config(tiny_model_section(ensemble_size=2)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for name, (height, width) in {"a.png": (20, 30), "b.jpg": (24, 18), "c.png": (16, 16)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    rows, columns = np.mgrid[0:20, 0:30]
    np.save(folder / "depth.npy", (1.0 + 0.02 * rows + 0.01 * columns).astype(np.float32))
    return folder


def _run(model_dir, *argv):
    return main([*argv, "--model", str(model_dir), "--no-face-centering", "--no-progress"])


def _files(folder):
    return {path.name for path in folder.iterdir()}


def test_generate_writes_every_export_per_sample(model_dir, inputs, tmp_path, capsys):
    reference = str(inputs / "a.png")
    assert _run(model_dir, "generate", "--reference", reference, "--out", str(tmp_path), "--samples", "2") == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_0", "a_1"]
    assert _files(tmp_path / "a_0") == COMMON_FILES | {"mesh.glb"}
    assert np.load(tmp_path / "a_0" / "depth.npy").shape == (16, 16)
    assert str(tmp_path / "a_1") in capsys.readouterr().out


def test_depth_on_a_folder_in_batches_maps_back_to_input_sizes(model_dir, inputs, tmp_path):
    assert (
        _run(
            model_dir,
            "depth",
            str(inputs),
            "--out",
            str(tmp_path),
            "--batch-size",
            "2",
            "--match-input-size",
            "--mesh-format",
            "obj",
        )
        == 0
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b", "c"]
    assert _files(tmp_path / "b") == COMMON_FILES | {"mesh.obj", "uncertainty.npy"}
    assert np.load(tmp_path / "b" / "depth.npy").shape == (24, 18)
    assert Image.open(tmp_path / "b" / "rgb.png").size == (18, 24)

    # input i is seeded with seed + i, so the batch size does not change the results (up to float rounding)
    single = tmp_path / "single"
    assert (
        _run(
            model_dir,
            "depth",
            str(inputs),
            "--out",
            str(single),
            "--batch-size",
            "1",
            "--match-input-size",
            "--exports",
            "depth_npy",
        )
        == 0
    )
    for name in ("a", "b", "c"):
        np.testing.assert_allclose(
            np.load(single / name / "depth.npy"), np.load(tmp_path / name / "depth.npy"), atol=1e-5
        )


def test_render_and_training_free_render(model_dir, inputs, tmp_path):
    depth, reference = str(inputs / "depth.npy"), str(inputs / "a.png")
    assert _run(model_dir, "render", depth, "--reference", reference, "--out", str(tmp_path / "trained")) == 0
    assert _files(tmp_path / "trained" / "depth_0") == COMMON_FILES | {"mesh.glb"}
    assert (
        _run(
            model_dir,
            "render",
            depth,
            "--reference",
            reference,
            "--out",
            str(tmp_path / "free"),
            "--training-free",
            "--match-input-size",
        )
        == 0
    )
    assert Image.open(tmp_path / "free" / "depth_0" / "rgb.png").size == (30, 20)


def test_relight_by_angles_with_regeneration_and_by_preset_with_given_depth(model_dir, inputs, tmp_path):
    image = str(inputs / "a.png")
    assert _run(model_dir, "relight", image, "--light", "30,20", "--regenerate", "--out", str(tmp_path / "p")) == 0
    assert _files(tmp_path / "p" / "a") == COMMON_FILES | {"mesh.glb", "albedo.png", "shading.png", "uncertainty.npy"}
    assert (
        _run(
            model_dir,
            "relight",
            image,
            "--light",
            "rim",
            "--depth",
            str(inputs / "depth.npy"),
            "--match-input-size",
            "--out",
            str(tmp_path / "g"),
        )
        == 0
    )
    assert Image.open(tmp_path / "g" / "a" / "rgb.png").size == (30, 20)
    sh_file = tmp_path / "light.txt"
    sh_file.write_text(", ".join(["0.8"] + ["0.1"] * 8))
    assert (
        _run(model_dir, "relight", image, "--light", str(sh_file), "--exports", "rgb", "--out", str(tmp_path / "sh"))
        == 0
    )


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_inputs_fail_with_one_line_and_write_nothing(model_dir, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    nan_depth = tmp_path / "nan.npy"
    np.save(nan_depth, np.full((20, 30), np.nan, dtype=np.float32))
    small_depth = tmp_path / "small.npy"
    np.save(small_depth, np.ones((10, 10), dtype=np.float32))
    empty_mask = tmp_path / "mask.png"
    Image.new("L", (30, 20)).save(empty_mask)
    cases = [
        (["depth", str(broken)], f"{broken}: cannot read image"),
        (["depth", str(tiny)], f"{tiny}: image is 1×1 pixels"),
        (["depth", str(tmp_path / "missing.png")], "missing.png: no such file or folder"),
        (["render", str(nan_depth), "--reference", str(inputs / "a.png")], f"{nan_depth}: depth has no finite"),
        (
            ["render", str(inputs / "depth.npy"), "--reference", str(inputs / "a.png"), "--mask", str(empty_mask)],
            "depth has no valid pixels (all background)",
        ),
        (
            ["relight", str(inputs / "a.png"), "--light", "front", "--depth", str(small_depth)],
            f"{small_depth} (10×10) does not match the size of {inputs / 'a.png'} (30×20)",
        ),
        (["relight", str(inputs / "a.png"), "--light", "disco"], "--light disco: not a preset"),
        (["depth", str(inputs / "a.png"), "--dtype", "float16", "--device", "cpu"], "--dtype float16"),
    ]
    for argv, message in cases:
        assert _run(model_dir, *argv, "--out", str(out)) == 2
        assert message in _error(capsys)
        assert not out.exists()

    missing = tmp_path / "no-model"
    assert main(["depth", str(inputs / "a.png"), "--out", str(out), "--model", str(missing)]) == 2
    assert f"{missing}: model folder not found" in _error(capsys)
    # Without --model the shipped default is used; where a package has none, the error says what to pass.
    monkeypatch.setattr(common, "default_model_dir", lambda: tmp_path / "no-default")
    assert main(["depth", str(inputs / "a.png"), "--out", str(out)]) == 2
    message = _error(capsys)
    assert "no default model is installed" in message and "pass --model" in message
    assert not out.exists()


def test_existing_results_are_refused_before_the_model_loads(model_dir, inputs, tmp_path, capsys):
    argv = ["depth", str(inputs / "c.png"), "--out", str(tmp_path), "--exports", "depth_npy"]
    assert _run(model_dir, *argv) == 0
    written = (tmp_path / "c" / "depth.npy").read_bytes()

    def must_not_load():
        raise AssertionError("the model was loaded although the destination exists")

    with pytest.raises(UserInputError, match="already exists"):
        run_depth(must_not_load, [inputs / "c.png", inputs / "a.png"], tmp_path)
    assert not (tmp_path / "a").exists()
    assert _run(model_dir, *argv) == 2
    assert "already exists" in _error(capsys)
    assert _run(model_dir, *argv, "--overwrite", "--seed", "1") == 0
    assert (tmp_path / "c" / "depth.npy").read_bytes() != written
