"""Real-data evaluation (`rgbd-portrait eval --real-faces --rap3df --yaleb`) on tiny fabricated data sets whose
truth is known, and the light convention; tests at the end read `../shared/data` and skip without it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.cli.main import main
from rgbd_portrait.data.rgbd_captures import find_captures, person_pixels, read_capture
from rgbd_portrait.data.sample_format import PortraitSample, write_sample
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.evaluation.baselines import radial_depth
from rgbd_portrait.evaluation.kinect_depth import FACE_MESH, evaluate_kinect_depth, format_kinect_depth
from rgbd_portrait.evaluation.real_data import trained_people
from rgbd_portrait.evaluation.real_faces import evaluate_real_faces
from rgbd_portrait.evaluation.real_relighting import (
    LIGHT_PAIRS,
    UNRELIT,
    evaluate_real_relighting,
    face_ellipse,
    find_photos,
    light_side_agreement,
    yale_light,
)
from rgbd_portrait.evaluation.real_support import (
    RADIAL,
    landmarks_on,
    people_in_turn,
    values_at_landmarks,
)
from rgbd_portrait.evaluation.runner import EvaluationOptions
from rgbd_portrait.geometry.shading import direction_from_angles
from rgbd_portrait.models.rgbd_model import RGBDPortraitModel
from rgbd_portrait.models.testing import tiny_model_section
from rgbd_portrait.pipelines import RGBDPortraitPipeline

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 32
FAST = EvaluationOptions(batch_size=2, joint_samples=2, steps=2, depth_steps=1, ensemble_size=1)


def _grid_landmarks(centre: tuple[int, int], radius: int) -> np.ndarray:
    """Pixels of a grid symmetric about `centre` within `radius`: their mean is the centre."""
    offsets = [(dx, dy) for dx in range(-radius, radius + 1, 2) for dy in range(-radius, radius + 1, 2)]
    return np.array([(centre[0] + dx, centre[1] + dy) for dx, dy in offsets if dx * dx + dy * dy <= radius**2], float)


def _cone(shape: tuple[int, int], centre: tuple[int, int], near: float, slope: float) -> np.ndarray:
    """Depth that grows linearly with the distance from `centre`: exactly what the radial baseline predicts."""
    return (near + slope * radial_depth(shape, centre)).numpy().astype(np.float32)


def _smooth_image(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    phase = np.random.default_rng(seed).uniform(0, 6, size=3)
    return (127 + 100 * np.sin(3 * rows[..., None] + 4 * columns[..., None] + phase)).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("real-eval-model") / "tiny"
    RGBDPortraitModel.from_config(tiny_model_section()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(model_dir):
    pipe = RGBDPortraitPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def real_faces_dir(tmp_path_factory):
    """Prepared-looking crops: a disc-shaped person whose pseudo-depth is a cone about the landmarks' centre, the
    landmarks' z its depth. 3 identities in train, 3 in test (one with two photos)."""
    root = tmp_path_factory.mktemp("real-faces") / "prepared"
    people = [("train", f"trainee_{index}", 1) for index in range(3)] + [("test", "alice", 2), ("test", "bob", 1)]
    people.append(("test", "carol", 1))
    for split, name, photos in people:
        for photo in range(photos):
            centre = (15 + photo, 16)
            mask = radial_depth((SIZE, SIZE), centre).numpy() <= 12
            depth = np.where(mask, _cone((SIZE, SIZE), centre, 1.0, 0.004), 0.0).astype(np.float32)
            points = _grid_landmarks(centre, 8)
            landmarks = [[x, y, float(depth[int(y), int(x)])] for x, y in points]
            meta = {"identity": name, "split": split, "depth_source": "pseudo", "face_landmarks": landmarks}
            sample = PortraitSample(
                rgb=_smooth_image(len(name) + photo, (SIZE, SIZE)), depth=depth, mask=mask, meta=meta
            )
            write_sample(root / f"{name}_{photo}", sample)
    return root


CAPTURE_SHAPE, CAPTURE_CENTRE = (40, 32), (16, 18)


def _write_capture(folder: Path, *, near: float, wall: bool) -> None:
    """A rap3df-like capture: a cone-shaped person in raw Kinect-like units, optionally a wall behind it."""
    folder.mkdir(parents=True)
    person = radial_depth(CAPTURE_SHAPE, CAPTURE_CENTRE).numpy() <= 13
    depth = np.where(person, _cone(CAPTURE_SHAPE, CAPTURE_CENTRE, near, 2.0), 0.0)
    if wall:
        depth[:, :4] = 2.0 * near  # stray background that mask.png still holds
    Image.fromarray(_smooth_image(int(near), CAPTURE_SHAPE)).save(folder / "rgb.png")
    Image.fromarray(depth.round().astype(np.uint16)).save(folder / "depth_raw.png")
    Image.fromarray(((depth > 0) * 255).astype(np.uint8)).save(folder / "mask.png")


@pytest.fixture(scope="module")
def rap3df_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rap3df")
    _write_capture(root / "P1" / "front_0", near=1000.0, wall=True)
    _write_capture(root / "P1" / "left_0", near=1100.0, wall=False)
    _write_capture(root / "P2" / "front_0", near=900.0, wall=False)
    return root


class ExactFaceMesh:
    """A face mesh that is exactly right on the fabricated captures: grid points about the cone's tip with the
    capture's own depth as z. It knows the captures by their image; it finds no face in the one of `near=900`."""

    def __init__(self) -> None:
        points = _grid_landmarks(CAPTURE_CENTRE, 8)
        self.landmarks = {}
        for near in (1000.0, 1100.0):
            depth = _cone(CAPTURE_SHAPE, CAPTURE_CENTRE, near, 2.0).round()
            image = _smooth_image(int(near), CAPTURE_SHAPE)
            self.landmarks[image.tobytes()] = np.array([[x, y, depth[int(y), int(x)]] for x, y in points])

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        return self.landmarks.get(np.ascontiguousarray(image).tobytes())


def _yale_photo(azimuth: int, elevation: int, shape=(56, 48)) -> np.ndarray:
    """A lit hemisphere filling an ellipse, shaded as Yale B is: a positive azimuth lights the image's left."""
    height, width = shape
    rows, columns = np.mgrid[0:height, 0:width]
    x = (columns - (width - 1) / 2) / (0.48 * width)
    y = -(rows - (height - 1) / 2) / (0.48 * height)  # camera y points up
    inside = x * x + y * y < 1
    normals = np.stack([x, y, np.sqrt(np.clip(1 - x * x - y * y, 0, 1))], axis=-1)
    light = direction_from_angles(-azimuth, elevation).numpy()
    shading = np.clip(normals @ light, 0, 1) * inside
    return np.round(30 + 200 * shading).astype(np.uint8)


@pytest.fixture(scope="module")
def yaleb_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("yaleb")
    lights = {light for pair in LIGHT_PAIRS for light in pair}
    for person in ("yaleB01", "yaleB02"):
        (root / person).mkdir()
        for azimuth, elevation in lights:
            name = f"{person}_P00A{azimuth:+04d}E{elevation:+03d}.png"
            Image.fromarray(_yale_photo(azimuth, elevation)).save(root / person / name)
        Image.fromarray(_yale_photo(0, 0) // 50).save(root / person / f"{person}_P00_Ambient.png")
    return root


# --- shared pieces ----------------------------------------------------------------------------------------------


def test_values_at_landmarks_read_the_nearest_pixel_and_flag_landmarks_outside():
    maps = torch.arange(12.0).reshape(3, 4)
    values, inside = values_at_landmarks(maps, np.array([[0.4, 0.0], [2.6, 1.4], [3.0, 2.0], [4.2, 0.0], [-0.7, 1]]))
    assert values.tolist() == [0.0, 7.0, 11.0, 0.0, 0.0]
    assert inside.tolist() == [True, True, True, False, False]
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 3] = True
    assert landmarks_on(mask, np.array([[3.0, 1.0], [2.0, 1.0], [9.0, 9.0]])).tolist() == [True, False, False]


def test_people_take_turns_in_their_first_order():
    items = ["a1", "a2", "a3", "b1", "c1", "c2"]
    assert people_in_turn(items, lambda item: item[0]) == ["a1", "b1", "c1", "a2", "c2", "a3"]


# --- real faces --------------------------------------------------------------------------------------------------


def test_real_faces_radial_truth_is_recovered_exactly_by_the_radial_baseline(pipeline, real_faces_dir, tmp_path):
    results = evaluate_real_faces(
        pipeline, real_faces_dir, options=FAST, out_dir=tmp_path, baseline_pipeline=pipeline, show_progress=False
    )
    assert results["samples"] == 4 and results["identities"] == 3
    depth = results["image_to_depth"]
    assert set(depth["rows"]) == {"model", "baseline model", RADIAL, "mean-face template"}
    radial = depth["rows"][RADIAL]
    # The pseudo-depth is a cone about the landmarks' centre and the landmarks carry it: the radial map is right.
    assert radial["abs_rel"] < 1e-6 and radial["delta1"] == 1.0 and radial["landmark_spearman"] == pytest.approx(1.0)
    assert depth["landmarks_per_image"] == len(_grid_landmarks((15, 16), 8))
    for row in depth["rows"].values():
        assert row["samples"] == 4 and -1 <= row["landmark_spearman"] <= 1 and 0 <= row["normal_mean_deg"] <= 180
    # The same model twice scores the same: the baseline runs with the same settings and seeds.
    assert depth["rows"]["model"] == depth["rows"]["baseline model"]
    codec = results["codec"]["rows"]
    assert codec["model"] == codec["baseline model"] and 0 < codec["model"]["rgb_psnr"] < 60
    assert results["joint"]["consistency"]["rows"]["generated RGB vs generated depth"]["samples"] == 4 * 2
    assert set(results["depth_to_image"]) == {"geometry", "detail"}
    assert set(results["joint"]["detail"]["rows"]["generated image"]) == {"samples", "fine_detail"}
    assert (tmp_path / results["sheet"]).is_file()


def test_joint_generation_of_people_with_one_photo_each_skips_identity_with_a_note(pipeline, real_faces_dir, tmp_path):
    # Identity is scored against the person's other photos: with none in the split there is nothing to rank.
    single = shutil.copytree(real_faces_dir, tmp_path / "single", ignore=shutil.ignore_patterns("alice_*"))
    options = EvaluationOptions(tasks=("joint",), batch_size=2, joint_samples=2, steps=1, depth_steps=1)
    results = evaluate_real_faces(pipeline, single, options=options, out_dir=tmp_path, show_progress=False)
    assert results["joint"]["consistency"]["rows"]["generated RGB vs generated depth"]["samples"] == 2 * 2
    assert "identity" not in results["joint"]
    assert any("identity consistency skipped" in note for note in results["notes"])


def test_real_faces_without_stored_landmarks_are_left_out_with_a_note(pipeline, real_faces_dir, tmp_path):
    bare = tmp_path / "bare"
    for folder in real_faces_dir.iterdir():
        meta = json.loads((folder / "meta.json").read_text())
        meta.pop("face_landmarks")
        target = bare / folder.name
        target.mkdir(parents=True)
        for path in folder.iterdir():
            target.joinpath(path.name).write_bytes(path.read_bytes())
        (target / "meta.json").write_text(json.dumps(meta))
    options = EvaluationOptions(tasks=("image_to_depth",), batch_size=2, depth_steps=1, ensemble_size=1)
    results = evaluate_real_faces(pipeline, bare, options=options, out_dir=tmp_path, show_progress=False)
    assert "image_to_depth" not in results and "4 samples without" in results["notes"][0]
    assert results["codec"]["rows"]["model"]["samples"] == 4


# --- rap3df ------------------------------------------------------------------------------------------------------


def test_person_pixels_drop_a_wall_behind_the_person(rap3df_dir):
    capture = read_capture(rap3df_dir / "P1" / "front_0")
    person = person_pixels(capture.depth, ExactFaceMesh()(capture.rgb))
    assert bool((capture.depth[:, :4] > 0).any()) and not bool(person[:, :4].any())
    assert torch.equal(person[:, 4:], capture.depth[:, 4:] > 0)


def test_kinect_depth_face_mesh_and_radial_rows_on_an_exact_cone(pipeline, rap3df_dir, tmp_path):
    results = evaluate_kinect_depth(
        pipeline, rap3df_dir, options=FAST, out_dir=tmp_path, find_landmarks=ExactFaceMesh(), show_progress=False
    )
    assert results["captures"] == 3 and results["scored"] == 2 and results["without_face"] == ["P2/front_0"]
    rows = results["rows"]
    # The landmarks' z is the Kinect depth: the face mesh ranks them perfectly.
    assert rows[FACE_MESH] == {"samples": 2, "landmark_spearman": pytest.approx(1.0)}
    # The person is a cone about the landmarks' centre (the wall left out): the radial map fits it, up to the
    # rounding of the raw units.
    assert rows[RADIAL]["abs_rel"] < 1e-3 and rows[RADIAL]["landmark_spearman"] > 0.99
    assert -1 <= rows["model"]["landmark_spearman"] <= 1 and rows["model"]["abs_rel"] >= 0
    assert (tmp_path / results["sheet"]).is_file()


def test_people_trained_on_are_left_out(pipeline, rap3df_dir, tmp_path):
    def scored_without(people: set[str]) -> dict:
        return evaluate_kinect_depth(
            pipeline,
            rap3df_dir,
            options=FAST,
            out_dir=tmp_path,
            find_landmarks=ExactFaceMesh(),
            exclude_people=people,
            show_progress=False,
        )

    results = scored_without({"P2", "someone else"})
    assert results["captures"] == 2 and results["scored"] == 2 and results["people_left_out"] == 1
    assert results["without_face"] == [] and "1 people trained on left out" in format_kinect_depth(results)
    with pytest.raises(UserInputError, match="every person's captures are left out"):
        scored_without({"P1", "P2"})


def test_trained_people_are_the_train_and_val_identities_of_a_prepared_set(real_faces_dir):
    assert trained_people(real_faces_dir) == {f"trainee_{index}" for index in range(3)}


def test_rap3df_folder_without_captures_is_a_one_line_error(tmp_path, model_dir, capsys):
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    assert main(["eval", "--model", str(model_dir), "--rap3df", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no rap3df capture" in capsys.readouterr().err
    with pytest.raises(Exception, match="no rap3df capture"):
        find_captures(tmp_path / "empty")


# --- Yale B ------------------------------------------------------------------------------------------------------


def test_yale_azimuth_is_the_mirror_of_ours_and_elevation_the_same():
    # Ours: positive azimuth = from the image's right (camera x), positive elevation = from above (camera y).
    assert direction_from_angles(50, 0)[0] > 0 and direction_from_angles(0, 45)[1] > 0
    # Yale B's positive azimuth lights the image's left.
    lamp = yale_light(50, 0).lamps[0]
    assert lamp.direction[0] < 0 and abs(lamp.direction[1]) < 1e-9
    assert yale_light(0, 45).lamps[0].direction[1] > 0
    torch.testing.assert_close(torch.tensor(yale_light(-30, 20).lamps[0].direction), direction_from_angles(30, 20))


def test_light_side_agreement_reads_the_side_a_light_brightens():
    photos = {light: _yale_photo(*light) for pair in LIGHT_PAIRS for light in pair}
    assert light_side_agreement(photos) == {
        "azimuth_pairs": 3,
        "positive_azimuth_lights_image_left": 3,
        "elevation_pairs": 1,
        "positive_elevation_lights_top": 1,
    }
    mirrored = {light: photo[:, ::-1] for light, photo in photos.items()}
    assert light_side_agreement(mirrored)["positive_azimuth_lights_image_left"] == 0


def test_face_ellipse_of_a_yale_crop_stays_inside_the_pipelines_square():
    ellipse = face_ellipse((192, 168))
    rows = ellipse.any(dim=1).nonzero().flatten()
    # A 168 × 192 photo is cropped to its central 168 rows, 12 to 179.
    assert rows.min() >= 12 and rows.max() <= 179 and ellipse.sum() > 0.5 * 168 * 168


def test_yaleb_relighting_rows_convention_and_sheet(pipeline, yaleb_dir, tmp_path):
    results = evaluate_real_relighting(pipeline, yaleb_dir, options=FAST, out_dir=tmp_path, show_progress=False)
    assert results["people"] == 2 and results["pairs"] == 2 * len(LIGHT_PAIRS)
    assert results["convention_check"]["positive_azimuth_lights_image_left"] == 2 * 3
    assert results["convention_check"]["positive_elevation_lights_top"] == 2
    names = {UNRELIT, "model, light estimated", "model, light known"}
    assert set(results["rows"]) == names
    for group in results["by_direction"].values():
        assert set(group["rows"]) == names
    assert all(row["samples"] == results["pairs"] and 0 < row["psnr"] < 80 for row in results["rows"].values())
    assert (tmp_path / results["sheet"]).is_file()
    assert set(find_photos(yaleb_dir)) == {("yaleB01", "00"), ("yaleB02", "00")}  # the ambient photo has no light


# --- the command -------------------------------------------------------------------------------------------------


def test_eval_command_on_every_real_data_set_with_a_baseline_model(
    model_dir, real_faces_dir, rap3df_dir, yaleb_dir, tmp_path, capsys
):
    pytest.importorskip("mediapipe")  # the command finds rap3df landmarks with MediaPipe's face mesh
    out = tmp_path / "results"
    arguments = ["eval", "--model", str(model_dir), "--baseline-model", str(model_dir), "--out", str(out)]
    arguments += ["--real-faces", str(real_faces_dir), "--rap3df", str(rap3df_dir), "--yaleb", str(yaleb_dir)]
    # No rap3df person is among the prepared faces' identities: none is left out.
    arguments += ["--rap3df-trained", str(real_faces_dir)]
    arguments += ["--limit", "3", "--generation-limit", "2", "--steps", "2", "--depth-steps", "1", "--ensemble", "1"]
    # Depth→image is left to the section's own test; joint generation is enough to see --generation-limit work.
    arguments += ["--tasks", "image_to_depth,joint,relighting", "--seeds", "1"]
    assert main([*arguments, "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    real = results["real_data"]
    assert real["baseline_model"] == str(model_dir) and "image_to_depth" not in results  # no --data
    assert real["real_faces"]["samples"] == 3 and real["real_faces"]["generation_samples"] == 2
    assert "baseline model" in real["real_faces"]["image_to_depth"]["rows"]
    assert real["rap3df"]["captures"] == 3 and real["rap3df"]["people_left_out"] == 0 and real["yaleb"]["pairs"] == 3
    assert (
        "--rap3df-trained" in results["command"]
        and "--real-faces" in results["command"]
        and "--generation-limit 2" in results["command"]
    )
    markdown = (out / "results.md").read_text()
    for heading in ("## Real faces", "## Real depth (Kinect v2)", "## Real relighting (Extended Yale B)"):
        assert heading in markdown
    assert "| baseline model |" in markdown and "Spearman at landmarks ↑" in markdown
    assert (out / "real_faces_sheet.png").is_file()
    assert "## Real faces" in capsys.readouterr().out


def test_eval_command_needs_some_data_and_existing_folders(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--yaleb", str(tmp_path / "missing")]) == 2
    assert f"--yaleb {tmp_path / 'missing'}: folder not found" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--yaleb", str(tmp_path), "--rap3df-trained", str(tmp_path)]) == 2
    assert "--rap3df-trained needs --rap3df" in capsys.readouterr().err


# --- the shared data sets, when present -------------------------------------------------------------------------

needs_yaleb = pytest.mark.skipif(not (SHARED_DATA / "relight" / "yaleb").is_dir(), reason="../shared/data absent")
needs_rap3df = pytest.mark.skipif(not (SHARED_DATA / "depth" / "rap3df").is_dir(), reason="../shared/data absent")


@needs_yaleb
def test_yale_b_photos_light_the_image_left_for_a_positive_azimuth():
    photos = find_photos(SHARED_DATA / "relight" / "yaleb")
    totals = {"azimuth_pairs": 0, "positive_azimuth_lights_image_left": 0}
    totals |= {"elevation_pairs": 0, "positive_elevation_lights_top": 0}
    for lights in photos.values():
        readable = {light: np.asarray(Image.open(path).convert("L")) for light, path in lights.items()}
        counts = light_side_agreement(readable)
        totals = {name: totals[name] + counts[name] for name in totals}
    assert totals["azimuth_pairs"] >= 3 * 10
    assert totals["positive_azimuth_lights_image_left"] == totals["azimuth_pairs"]
    assert totals["positive_elevation_lights_top"] == totals["elevation_pairs"]


@needs_rap3df
def test_rap3df_captures_read_and_the_face_mesh_ranks_kinect_depth():
    pytest.importorskip("mediapipe")
    from rgbd_portrait.evaluation.metrics import rank_correlation
    from rgbd_portrait.evaluation.real_support import FaceMeshLandmarks

    folders = find_captures(SHARED_DATA / "depth" / "rap3df")
    assert len(folders) >= 200
    find_landmarks = FaceMeshLandmarks()
    fronts = [folder for folder in folders if folder.name == "front_0"][:3]
    for folder in fronts:
        capture = read_capture(folder)
        landmarks = find_landmarks(capture.rgb)
        assert landmarks is not None and landmarks.shape == (478, 3)
        person = person_pixels(capture.depth, landmarks)
        on_person = landmarks_on(person, landmarks)
        kinect, _ = values_at_landmarks(capture.depth, landmarks)
        correlation = rank_correlation(torch.as_tensor(landmarks[:, 2], dtype=torch.float64), kinect, on_person)
        # The issue measured 0.80 on average: a real face mesh orders real depth well.
        assert correlation > 0.5
