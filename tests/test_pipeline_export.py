"""Result folders: every export, loadable files, atomic writes, refusal to clobber."""

import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.pipelines import export
from rgbd_portrait.pipelines.export import EXPORTS, ExportOptions, ResultImages, write_result


def _result(height=6, width=8) -> ResultImages:
    rows, columns = np.mgrid[0:height, 0:width]
    rgb = np.stack([rows / height, columns / width, np.full((height, width), 0.5)], axis=-1).astype(np.float32)
    normals = np.zeros((height, width, 3), np.float32)
    normals[..., 2] = 1.0
    mask = np.ones((height, width), bool)
    mask[0, :3] = False
    return ResultImages(
        rgb=rgb,
        depth=(columns / (width - 1)).astype(np.float32),
        normals=normals,
        mask=mask,
        uncertainty=np.full((height, width), 0.1, np.float32),
        preview_inputs=[("reference", rgb)],
    )


def test_every_export_is_written_and_loads_back(tmp_path):
    result = _result()
    folder = write_result(tmp_path / "face", result, record={"task": "joint"})
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [
            "rgb.png",
            "depth.npy",
            "depth.png",
            "depth_color.png",
            "normals.png",
            "uncertainty.npy",
            "point_cloud.ply",
            "mesh.glb",
            "preview.png",
            "result.json",
        ]
    )
    np.testing.assert_array_equal(np.load(folder / "depth.npy", allow_pickle=False), result.depth)
    depth_png = np.asarray(Image.open(folder / "depth.png"), dtype=np.float64) / 65535
    assert np.abs(depth_png - result.depth).max() <= 0.5 / 65535 + 1e-9
    cloud = trimesh.load(folder / "point_cloud.ply")
    assert len(cloud.vertices) == result.mask.sum()
    expected_colors = np.round(result.rgb[result.mask] * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], expected_colors)
    mesh = trimesh.load(folder / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.vertices) <= result.mask.sum()
    assert json.loads((folder / "result.json").read_text()) == {"task": "joint"}
    assert Image.open(folder / "preview.png").width > Image.open(folder / "preview.png").height


def test_exports_choose_files_and_mesh_format(tmp_path):
    options = ExportOptions(exports=["mesh", "normals"], mesh_format="obj")
    folder = write_result(tmp_path / "x", _result(), record={}, options=options)
    assert sorted(path.name for path in folder.iterdir()) == ["mesh.obj", "normals.png", "result.json"]
    assert len(trimesh.load(folder / "mesh.obj", force="mesh").vertices) > 0
    with pytest.raises(UserInputError, match="exports: unknown holo"):
        write_result(tmp_path / "y", _result(), record={}, options=ExportOptions(exports=["holo"]))
    with pytest.raises(UserInputError, match="mesh_format: 'stl'"):
        write_result(tmp_path / "y", _result(), record={}, options=ExportOptions(mesh_format="stl"))


def test_existing_folders_are_replaced_only_when_asked_and_only_results(tmp_path):
    folder = write_result(tmp_path / "face", _result(), record={"run": 1})
    with pytest.raises(UserInputError, match="already exists"):
        write_result(folder, _result(), record={"run": 2})
    write_result(folder, _result(), record={"run": 2}, options=ExportOptions(overwrite=True))
    assert json.loads((folder / "result.json").read_text()) == {"run": 2}
    precious = tmp_path / "photos"
    precious.mkdir()
    with pytest.raises(UserInputError, match="not a result folder"):
        write_result(precious, _result(), record={}, options=ExportOptions(overwrite=True))


def test_a_failing_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_mesh", broken)
    with pytest.raises(OSError, match="disk full"):
        write_result(tmp_path / "face", _result(), record={}, options=ExportOptions(exports=EXPORTS))
    assert list(tmp_path.iterdir()) == []
