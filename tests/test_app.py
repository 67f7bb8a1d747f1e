"""`rgbd-portrait app` through `gradio_client`: every endpoint against the app on a free port, with a tiny random
talking model at 32 px; bad inputs give the CLI's messages; uploads are limited; no file outside the app's folder
is served; four clients at once."""

import inspect
import io
import json
import os
import socket
import struct
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed: pip install '.[app]'")

import httpx  # noqa: E402  (a Gradio dependency)
import trimesh  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from rgbd_portrait.app.server import start_app  # noqa: E402
from rgbd_portrait.app.tasks import DEPTH_DOWNLOADS  # noqa: E402
from rgbd_portrait.cli.main import main  # noqa: E402
from rgbd_portrait.models import RGBDPortraitModel  # noqa: E402
from rgbd_portrait.models.testing import add_tiny_motion_layers, tiny_model_section  # noqa: E402
from rgbd_portrait.pipelines import RGBDPortraitPipeline  # noqa: E402

SIDE = 32
MAX_UPLOAD_MB = 1.0
# gradio_client's requests time out after 5 s by default, too soon on a loaded 2-core machine.
CLIENT_OPTIONS = {"verbose": False, "httpx_kwargs": {"timeout": 120}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = RGBDPortraitModel.from_config(tiny_model_section(resolution=SIDE, default_steps=1, ensemble_size=2))
    add_tiny_motion_layers(model)
    folder = tmp_path_factory.mktemp("model") / "talking"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(model_dir):
    pipeline = RGBDPortraitPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def app(pipeline):
    running = start_app(pipeline, port=0, max_upload_mb=MAX_UPLOAD_MB)
    yield running
    running.close()


@pytest.fixture
def client(app, tmp_path):
    return Client(app.url, download_files=str(tmp_path / "downloads"), **CLIENT_OPTIONS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "portrait.png")
    rows, columns = np.mgrid[0:40, 0:48]
    np.save(folder / "depth.npy", (1.0 + 0.01 * (rows - 20) ** 2 + 0.01 * (columns - 24) ** 2).astype(np.float32))
    np.save(folder / "small.npy", np.ones((10, 10), dtype=np.float32))
    np.save(folder / "cube.npy", np.ones((2, 3, 4), dtype=np.float32))
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "speech.wav").write_text("not audio")
    (folder / "huge.png").write_bytes(_png_header(30000, 30000))
    return folder


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` × `height` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _image(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _depth(client, portrait, *, seed=0):
    return client.predict(handle_file(str(portrait)), 2, 1, seed, api_name="/depth")


def _relight(client, light="lamp", azimuth=-45.0):
    return client.predict(light, azimuth, 20.0, 0.8, 0.2, api_name="/relight")


def _cli_error(capsys, monkeypatch, folder, argv, model_dir) -> str:
    """The message `rgbd-portrait` prints for `argv`, run in `folder` with file names relative to it."""
    monkeypatch.chdir(folder)
    capsys.readouterr()
    assert main([*argv, "--model", str(model_dir), "--out", "cli-out"]) == 2
    # The app's server threads write to stderr too; the CLI's error is its one line.
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rgbd-portrait ")]
    return line.split(": error: ", 1)[1]


def _app_error(call) -> str:
    with pytest.raises(AppError) as caught:
        call()
    return str(caught.value)


def test_depth_shows_the_portrait_its_depth_normals_uncertainty_and_mesh_with_downloads(
    app, client, inputs, model_dir, tmp_path
):
    seen, depth_color, normals, uncertainty, mesh, downloads = _depth(client, inputs / "portrait.png")
    for image in (seen, depth_color, normals, uncertainty):
        assert _image(image).shape == (SIDE, SIDE, 3)
    assert [os.path.basename(path) for path in downloads] == list(DEPTH_DOWNLOADS)
    files = {os.path.basename(path): path for path in downloads}
    depth = np.load(files["depth.npy"])
    assert depth.shape == (SIDE, SIDE) and 0.0 <= depth.min() <= depth.max() <= 1.0
    assert Image.open(files["depth.png"]).mode.startswith("I")
    assert len(trimesh.load(mesh, force="mesh").vertices) == SIDE * SIDE
    assert os.path.getsize(files["point_cloud.ply"]) > 0
    # The same result as the CLI with the same model, dtype (the app's pipeline is float32) and seed, written
    # inside the app's folder.
    argv = ["depth", str(inputs / "portrait.png"), "--ensemble", "2", "--steps", "1", "--out", str(tmp_path / "cli")]
    assert main([*argv, "--model", str(model_dir), "--dtype", "float32"]) == 0
    np.testing.assert_array_equal(depth, np.load(tmp_path / "cli" / "portrait" / "depth.npy"))
    assert any((app.folder / "gradio" / "results").glob("depth-*/portrait/depth.npy"))


def test_relight_reuses_the_depth_and_follows_the_light(client, inputs, pipeline, monkeypatch):
    assert "upload a portrait" in _app_error(lambda: _relight(client))
    _depth(client, inputs / "portrait.png")

    def no_model(*args, **kwargs):
        raise AssertionError("relighting ran the model")

    monkeypatch.setattr(pipeline, "predict_depth", no_model)
    monkeypatch.setattr(pipeline, "_sample", no_model)
    left, right = (_image(_relight(client, azimuth=azimuth)[0]) for azimuth in (-60.0, 60.0))
    assert left.shape == right.shape == (SIDE, SIDE, 3)
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 1.0
    relit, shading, albedo = _relight(client, light="rim")
    assert {_image(path).shape for path in (relit, shading, albedo)} == {(SIDE, SIDE, 3)}


def test_relight_with_an_uploaded_depth_map(client, inputs, capsys, monkeypatch, model_dir):
    portrait = handle_file(str(inputs / "portrait.png"))

    def use_depth(depth):
        depth = None if depth is None else handle_file(str(inputs / depth))
        return _image(client.predict(portrait, depth, "lamp", -45, 20, 0.8, 0.2, api_name="/relight_depth")[0])

    _depth(client, inputs / "portrait.png")
    predicted = _image(_relight(client)[0])
    given = use_depth("depth.npy")
    assert given.shape == (SIDE, SIDE, 3) and not np.array_equal(given, predicted)
    # The next light keeps the uploaded depth (fitted once; the portrait is then read back from its 8-bit file).
    again = _image(_relight(client)[0]).astype(int)
    assert np.abs(again - given).max() <= 4 and np.abs(again - predicted).max() > 4
    np.testing.assert_array_equal(use_depth(None), predicted)  # removing it restores the predicted one
    message = _app_error(lambda: use_depth("small.npy"))
    argv = ["relight", "portrait.png", "--light", "front", "--depth", "small.npy"]
    assert message == _cli_error(capsys, monkeypatch, inputs, argv, model_dir)
    assert message.startswith("small.npy (10×10) does not match the size of portrait.png")


def test_generate_and_render_show_every_sample_and_zip_every_result(client, inputs):
    portrait = handle_file(str(inputs / "portrait.png"))
    gallery, mesh, archive = client.predict(portrait, 2, 0, 1, 2.0, api_name="/generate")
    assert [item["caption"] for item in gallery] == ["image 0", "depth 0", "image 1", "depth 1"]
    assert {_image(item["image"]).shape for item in gallery} == {(SIDE, SIDE, 3)}
    assert trimesh.load(mesh, force="mesh").vertices.shape[1] == 3
    with zipfile.ZipFile(archive) as contents:
        names = set(contents.namelist())
    assert {"portrait_0/rgb.png", "portrait_1/depth.npy", "portrait_1/mesh.glb", "portrait_0/result.json"} <= names

    gallery, depth_color, mesh, archive = client.predict(
        portrait, handle_file(str(inputs / "depth.npy")), 1, 0, 1, 1.0, api_name="/render"
    )
    assert [item["caption"] for item in gallery] == ["image 0"]
    assert _image(gallery[0]["image"]).shape == _image(depth_color).shape == (SIDE, SIDE, 3)
    with zipfile.ZipFile(archive) as contents:
        record = json.loads(contents.read("depth_0/result.json"))
    assert record["task"] == "depth_to_image"


def test_animate_writes_the_three_videos_and_every_frame_depth(client, app):
    portrait, _ = app.examples.portraits[-1]
    videos_and_depth = client.predict(
        handle_file(str(portrait)), handle_file(str(app.examples.speech)), 0.2, 0, 1, 1.0, api_name="/animate"
    )
    *videos, depth = videos_and_depth
    assert [os.path.basename(path) for path in videos] == ["side_by_side.mp4", "rgb.mp4", "depth.mp4"]
    assert all(os.path.getsize(path) > 0 for path in videos)
    assert np.load(depth).shape == (5, SIDE, SIDE)  # 0.2 s at 25 fps


def test_bad_inputs_give_the_cli_message_in_the_page(client, inputs, capsys, monkeypatch, model_dir):
    portrait = handle_file(str(inputs / "portrait.png"))
    cases = [
        (lambda: _depth(client, inputs / "notes.txt"), ["depth", "notes.txt"]),
        (lambda: _depth(client, inputs / "empty.png"), ["depth", "empty.png"]),
        (lambda: _depth(client, inputs / "huge.png"), ["depth", "huge.png"]),
        (
            lambda: client.predict(portrait, handle_file(str(inputs / "cube.npy")), 1, 0, 1, 1.0, api_name="/render"),
            ["render", "cube.npy", "--reference", "portrait.png"],
        ),
        (
            lambda: client.predict(
                portrait, handle_file(str(inputs / "speech.wav")), 0.2, 0, 1, 1.0, api_name="/animate"
            ),
            ["animate", "--reference", "portrait.png", "--audio", "speech.wav"],
        ),
    ]
    messages = []
    for call, argv in cases:
        message = _app_error(call)
        assert message == _cli_error(capsys, monkeypatch, inputs, argv, model_dir)
        messages.append(message)
    assert messages[0].startswith("notes.txt: cannot read image")
    assert "exceeds limit" in messages[2]
    assert messages[3].startswith("cube.npy: depth must be a 2-D numeric array")
    assert messages[4].startswith("speech.wav: cannot decode audio")
    assert "no portrait" in _app_error(lambda: client.predict(None, 1, 0, 1, 2.0, api_name="/generate"))


def test_uploads_are_limited_and_no_file_outside_the_app_folder_is_served(app, inputs):
    too_big = io.BytesIO(bytes(int(MAX_UPLOAD_MB * 1024 * 1024) + 1))
    response = httpx.post(f"{app.url}/gradio_api/upload", files={"files": ("big.png", too_big)})
    assert response.status_code == 413
    inside = app.examples.speech
    assert httpx.get(f"{app.url}/gradio_api/file={inside}").status_code == 200
    outside_files = ["/etc/passwd", "../../../../etc/passwd", str(inputs / "portrait.png"), inspect.getfile(main)]
    for outside in outside_files:
        assert httpx.get(f"{app.url}/gradio_api/file={outside}").status_code in (403, 404)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and app.page.analytics_enabled is False


def test_four_clients_at_once_and_one_model_job_at_a_time(app, inputs, pipeline, monkeypatch, tmp_path):
    running, most = [0], [0]
    lock = threading.Lock()

    def counted(method):
        def run(*args, **kwargs):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                return method(*args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1

        return run

    for name in ("predict_depth", "generate"):
        monkeypatch.setattr(pipeline, name, counted(getattr(pipeline, name)))

    def session(index: int):
        client = Client(app.url, download_files=str(tmp_path / f"client{index}"), **CLIENT_OPTIONS)
        depth = np.load(_depth(client, inputs / "portrait.png", seed=index)[5][0])
        relit = _image(_relight(client, azimuth=30.0 * index)[0])
        gallery, _, _ = client.predict(
            handle_file(str(inputs / "portrait.png")), 1, index, 1, 2.0, api_name="/generate"
        )
        return depth, relit, len(gallery)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(session, range(4)))
    assert [count for _, _, count in results] == [2, 2, 2, 2]
    assert all(depth.shape == (SIDE, SIDE) for depth, _, _ in results)
    assert not np.array_equal(results[0][1], results[3][1])
    assert most[0] == 1


def test_cli_refuses_bad_server_options_before_loading_the_model(capsys, monkeypatch):
    def must_not_load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("rgbd_portrait.cli.app.pipeline_loader", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["app", "--port", "70000"], "--port 70000: not a port number"),
            (["app", "--port", str(port)], f"--host 127.0.0.1 --port {port}: cannot listen there"),
            (["app", "--max-upload-mb", "0"], "--max-upload-mb 0.0: must be positive"),
            (["app", "--queue-size", "0"], "--queue-size 0: must be positive"),
        ]
        for argv, message in cases:
            assert main(argv) == 2
            assert message in capsys.readouterr().err
