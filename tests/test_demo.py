"""`rgbd-portrait demo` end to end with tiny random models at 32 px: the page, its links, every task's files."""

import contextlib
import io
import json
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.cli import common
from rgbd_portrait.cli.main import main
from rgbd_portrait.data.audio import LogMelFeatures
from rgbd_portrait.data.sample_format import AUDIO_SAMPLE_RATE
from rgbd_portrait.data.synth.studio import assign_splits
from rgbd_portrait.demo import overview, run_demo
from rgbd_portrait.demo import run as demo_run
from rgbd_portrait.demo.portraits import STUDIO, speech_clip, studio_test_identities
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.models import RGBDPortraitModel
from rgbd_portrait.models.motion import MotionLayers
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.pipelines import RGBDPortraitPipeline

SIDE = 32
WINDOW = 4
RESULT_FILES = {"rgb.png", "depth.npy", "depth.png", "depth_color.png", "normals.png", "point_cloud.ply"}
RESULT_FILES |= {"mesh.glb", "preview.png", "result.json"}
ANIMATION_FILES = {"rgb.mp4", "depth.mp4", "side_by_side.mp4", "depth.npy", "reference.png", "result.json"}
STILL_TASKS = ("image_to_depth", "joint", "depth_to_image", "relight_left", "relight_rim")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = RGBDPortraitModel.from_config(tiny_model_section(resolution=SIDE, default_steps=1, ensemble_size=2))
    model.save_pretrained(folder / "image")
    motion = MotionLayers.for_backbone(
        model.backbone,
        audio_features=LogMelFeatures(n_mels=8),
        num_attention_heads=4,
        audio_token_dim=16,
        max_frames=8,
        window_frames=WINDOW,
        motion_frames=1,
    )
    model.add_motion_layers(motion)
    model.save_pretrained(folder / "talking")
    return folder


@pytest.fixture(scope="module")
def demo(models, tmp_path_factory):
    """One demo through the CLI with the talking model: its folder and what the command printed."""
    out = tmp_path_factory.mktemp("runs") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--model", str(models / "talking"), "--out", str(out), "--steps", "1", "--no-progress"])
    assert code == 0
    return out, printed


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href")]


def _links(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def test_page_is_printed_and_every_link_is_a_written_file(demo):
    out, printed = demo
    assert printed.getvalue() == f"{out / 'index.html'}\n"
    parser = _links(out / "index.html")
    files = [link for link in parser.links if not link.startswith("#")]
    assert len(files) > 50
    for link in files:
        assert "://" not in link and not link.startswith("/"), link  # relative, no external asset
        assert (out / link).exists(), link
    assert "script" not in parser.tags and "link" not in parser.tags  # self-contained: no JS, no stylesheet
    # every image and video of the page is shown, not only linked
    shown = {link for link in files if link.endswith((".png", ".mp4"))}
    assert {"inputs/astronaut.png", "inputs/grace_hopper.png", "animation/astronaut/side_by_side.mp4"} <= shown
    assert "overview.png" in shown
    assert "ensemble of 2, the image as its own reference" in (out / "index.html").read_text()


def test_overview_sheet_has_a_row_per_portrait_and_a_column_per_result(demo):
    out, _ = demo
    record = json.loads((out / "demo.json").read_text())
    with Image.open(out / "overview.png") as sheet:
        columns, rows = 6, len(record["portraits"])  # input, depth, joint image and depth, depth→image, relit
        gap, caption = overview.GAP, overview.CAPTION_HEIGHT
        assert sheet.size == (columns * SIDE + (columns - 1) * gap, caption + rows * SIDE + (rows - 1) * gap)
        # The second row's joint image is the joint task's result for the second portrait, pixel for pixel.
        left, top = 2 * (SIDE + gap), caption + SIDE + gap
        tile = np.asarray(sheet.crop((left, top, left + SIDE, top + SIDE)))
    joint = np.asarray(Image.open(out / "joint" / f"{record['portraits'][1]['name']}_0" / "rgb.png").convert("RGB"))
    np.testing.assert_array_equal(tile, joint)


def test_every_task_ran_on_every_portrait_with_every_export(demo):
    out, _ = demo
    record = json.loads((out / "demo.json").read_text())
    names = [portrait["name"] for portrait in record["portraits"]]
    # Photographs first.
    assert names == ["astronaut", "grace_hopper"] + [f"id{index:05d}" for index in studio_test_identities(2)]
    done = {(run["task"], run["portrait"]) for run in record["tasks"]}
    assert done == {(task, name) for task in STILL_TASKS for name in names} | {
        ("animation", "astronaut"),
        ("animation", names[2]),
    }
    for run in record["tasks"]:
        (folder,) = run["folders"]
        expected = ANIMATION_FILES if run["task"] == "animation" else RESULT_FILES
        assert expected <= {path.name for path in (out / folder).iterdir()}, folder
        assert run["seconds"] > 0
    relit = json.loads((out / "relight_rim" / "astronaut" / "result.json").read_text())
    assert relit["light"] == "rim" and relit["depth"].endswith("image_to_depth/astronaut/depth.npy")
    assert record["model"]["resolution"] == SIDE and record["model"]["motion"]["window_frames"] == WINDOW
    assert record["model"]["parameters"] == sum(record["model"]["component_parameters"].values())
    assert record["machine"]["torch_threads"] == torch.get_num_threads()
    assert record["animation"]["unavailable"] is None and record["notes"] == []
    assert not [path for path in out.parent.iterdir() if path.name.startswith(".")]  # no temporary left


def test_synthetic_heads_come_with_their_exact_depth_and_a_score(demo):
    out, _ = demo
    record = json.loads((out / "demo.json").read_text())
    synthetic = [portrait for portrait in record["portraits"] if portrait["synthetic"]]
    assert len(synthetic) == 2
    for portrait in synthetic:
        truth = np.load(out / portrait["truth_depth"], allow_pickle=False)
        assert truth.shape == (SIDE, SIDE) and truth.max() > 0.5  # metres from the studio's camera
        scores = portrait["depth_scores"]
        assert set(scores) == {"abs_rel", "delta1", "flat_plane_abs_rel", "flat_plane_delta1"}
        assert all(math.isfinite(value) and value >= 0 for value in scores.values())
        # the view whose depth is predicted is another view of the reference's head
        assert portrait["target"] != portrait["image"]
    page = (out / "index.html").read_text()
    assert page.count("<figcaption>exact depth (studio)</figcaption>") == 2 and page.count("<video") == 2
    assert f"{SIDE}×{SIDE}" in page and "A model folder does not record what the model was" in page


def test_talking_clip_is_one_motion_window_of_speech(demo):
    out, _ = demo
    record = json.loads((out / "demo.json").read_text())
    clip = json.loads((out / "animation" / "astronaut" / "result.json").read_text())
    assert clip["frames"] == WINDOW and clip["num_inference_steps"] == 1
    (run,) = [run for run in record["tasks"] if run["task"] == "animation" and run["portrait"] == "astronaut"]
    assert (out / run["settings"]["audio"]).is_file()


def test_speech_clip_has_the_asked_length_and_starts_talking():
    samples = speech_clip(0.5, pitch_hz=150.0, seed=3)
    assert samples.shape == (round(0.5 * AUDIO_SAMPLE_RATE),)
    assert np.abs(samples[: AUDIO_SAMPLE_RATE // 10]).max() > 0.1  # speech within the first 0.1 s
    np.testing.assert_array_equal(samples, speech_clip(0.5, pitch_hz=150.0, seed=3))


def test_studio_test_identities_are_the_held_out_ones():
    splits = assign_splits(STUDIO.identities, seed=STUDIO.seed, val_fraction=0.1, test_fraction=0.1)
    chosen = studio_test_identities(3)
    assert chosen == sorted(chosen) and all(splits[index] == "test" for index in chosen)
    with pytest.raises(UserInputError, match="identities"):
        studio_test_identities(STUDIO.identities)


def test_without_motion_layers_or_scikit_image_the_page_says_why_and_replaces_an_earlier_demo(
    models, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now fails as if it were not installed
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / demo_run.RECORD_FILE).write_text("{}")
    pipeline = RGBDPortraitPipeline.from_pretrained(models / "image")
    page = run_demo(
        pipeline,
        earlier,
        overwrite=True,
        identities=1,
        relight_presets=("front",),
        num_inference_steps=1,
        progress=False,
    )
    text = page.read_text()
    assert "scikit-image is not installed" in text and 'id="astronaut"' not in text
    assert "This model has no motion layers" in text and "<video" not in text
    record = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert [portrait["name"] for portrait in record["portraits"]] == [
        "grace_hopper",
        f"id{studio_test_identities(1)[0]:05d}",
    ]
    assert {run["task"] for run in record["tasks"]} == {"image_to_depth", "joint", "depth_to_image", "relight_front"}
    for link in _links(page).links:
        assert link.startswith("#") or (tmp_path / "demo" / link).exists(), link


def test_missing_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "default_model_dir", lambda: tmp_path / "not-installed")
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no default model is installed" in error and "--model" in error
    assert main(["demo", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "model folder not found" in error
    assert not (tmp_path / "out").exists()


def test_destination_is_checked_before_the_model_loads_and_replaced_only_when_asked(tmp_path):
    def never_loaded():
        raise AssertionError("the model must not load")

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty"):
        run_demo(never_loaded, taken, progress=False)
    with pytest.raises(UserInputError, match="not an earlier demo"):
        run_demo(never_loaded, taken, overwrite=True, progress=False)
    with pytest.raises(UserInputError, match="relight_presets"):
        run_demo(never_loaded, tmp_path / "new", relight_presets=("sunset",), progress=False)
    assert (taken / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_a_failure_leaves_nothing_and_keeps_an_earlier_demo(models, tmp_path, monkeypatch):
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / demo_run.RECORD_FILE).write_text("{}")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_run, "run_generate", broken)
    pipeline = RGBDPortraitPipeline.from_pretrained(models / "image")
    with pytest.raises(RuntimeError, match="disk full"):
        run_demo(pipeline, earlier, identities=1, num_inference_steps=1, overwrite=True, progress=False)
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]
    assert [path.name for path in earlier.iterdir()] == [demo_run.RECORD_FILE]
