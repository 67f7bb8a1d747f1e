"""Pure-geometry parts of real-portrait preparation: rasteriser, harmonic fill, alignment, depth conversion."""

import numpy as np
import pytest

from rgbd_portrait.data.prepare.alignment import Alignment, align_face, smooth_alignments
from rgbd_portrait.data.prepare.harmonic_fill import harmonic_fill
from rgbd_portrait.data.prepare.inputs import find_inputs, split_for
from rgbd_portrait.data.prepare.nominal_scale import LEFT_EYE_CORNERS, MOUTH_CORNERS, RIGHT_EYE_CORNERS
from rgbd_portrait.data.prepare.transformers_depth import disparity_to_depth
from rgbd_portrait.errors import UserInputError

pytest.importorskip("cv2")


def test_rasterizer_interpolates_a_plane_and_keeps_the_nearest_surface():
    from rgbd_portrait.data.prepare.face_mesh import rasterize_depth

    # Two triangles covering [2, 12]² on the plane depth = 1 + 0.1 x + 0.2 y, and one in front of part of it.
    vertices = np.array(
        [[2, 2, 0], [12, 2, 0], [12, 12, 0], [2, 12, 0], [4, 4, 0], [8, 4, 0], [4, 8, 0]], dtype=np.float64
    )
    vertices[:4, 2] = 1 + 0.1 * vertices[:4, 0] + 0.2 * vertices[:4, 1]
    vertices[4:, 2] = 0.5
    triangles = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    depth = rasterize_depth(vertices, triangles, 16)
    ys, xs = np.mgrid[0:16, 0:16]
    plane = 1 + 0.1 * xs + 0.2 * ys
    square = (xs >= 2) & (xs <= 12) & (ys >= 2) & (ys <= 12)
    front = (xs >= 4) & (ys >= 4) & (xs + ys <= 12)
    assert np.all(np.isinf(depth[~square]))
    np.testing.assert_allclose(depth[square & ~front], plane[square & ~front], rtol=1e-6)
    np.testing.assert_allclose(depth[front], 0.5)


def test_harmonic_fill_between_two_known_columns_is_a_linear_ramp():
    values = np.zeros((5, 9), dtype=np.float32)
    values[:, -1] = 1.0
    known = np.zeros(values.shape, dtype=bool)
    known[:, [0, -1]] = True
    region = np.ones(values.shape, dtype=bool)
    # Top and bottom rows are the image border: free, so the solution does not depend on the row.
    filled = harmonic_fill(values, known=known, region=region, outside_value=99.0)
    np.testing.assert_allclose(filled, np.tile(np.linspace(0, 1, 9), (5, 1)), atol=1e-5)


def test_harmonic_fill_takes_outside_value_from_pixels_outside_the_region():
    values = np.zeros((7, 7), dtype=np.float32)
    known = np.zeros(values.shape, dtype=bool)
    known[3, 3] = True
    region = np.zeros(values.shape, dtype=bool)
    region[1:6, 1:6] = True
    filled = harmonic_fill(values, known=known, region=region, outside_value=2.0)
    assert filled[3, 3] == 0.0
    inner = filled[1:6, 1:6]
    assert 0.0 < inner[2, 1] < inner[0, 0] < 2.0  # rises from the known centre towards the outline
    np.testing.assert_allclose(inner, inner.T, atol=1e-6)


def _face_like_landmarks(center, eye_distance, angle):
    """478 landmarks with eyes and mouth placed for a face rotated by `angle` (radians) in the image."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = np.zeros((478, 3), dtype=np.float32)
    placements = {
        RIGHT_EYE_CORNERS: (-eye_distance / 2, 0.0),
        LEFT_EYE_CORNERS: (eye_distance / 2, 0.0),
        MOUTH_CORNERS: (0.0, eye_distance),
    }
    for indices, offset in placements.items():
        landmarks[list(indices), :2] = center + rotation @ np.array(offset)
    return landmarks


def test_alignment_levels_the_eyes_and_inverts_exactly():
    landmarks = _face_like_landmarks(np.array([300.0, 200.0]), eye_distance=60.0, angle=0.3)
    alignment = align_face(landmarks, 128)
    crop = alignment.landmarks_to_crop(landmarks)
    right_eye, left_eye = crop[RIGHT_EYE_CORNERS[0]], crop[LEFT_EYE_CORNERS[0]]
    assert abs(right_eye[1] - left_eye[1]) < 1e-3 and right_eye[0] < left_eye[0]
    placed = list(RIGHT_EYE_CORNERS + LEFT_EYE_CORNERS + MOUTH_CORNERS)
    assert np.all((crop[placed, :2] > 32) & (crop[placed, :2] < 96))
    affine = alignment.crop_to_image()
    back = crop[:, :2] @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(back, landmarks[:, :2], atol=1e-3)


def test_smoothing_reduces_crop_jitter_and_keeps_a_still_crop():
    generator = np.random.default_rng(0)
    still = [Alignment(center=np.array([50.0, 60.0]), half_axis=np.array([30.0, 0.0]), size=64)] * 20
    times = np.arange(20) / 25
    for before, after in zip(still, smooth_alignments(still, times, sigma_s=0.1)):
        np.testing.assert_allclose(after.center, before.center)
    jittery = [
        Alignment(center=np.array([50.0, 60.0]) + generator.normal(0, 2, 2), half_axis=np.array([30.0, 0.0]), size=64)
        for _ in range(20)
    ]
    smoothed = smooth_alignments(jittery, times, sigma_s=0.1)
    spread = lambda alignments: np.std([alignment.center for alignment in alignments], axis=0).sum()
    assert spread(smoothed) < 0.6 * spread(jittery)


def test_disparity_becomes_depth_in_the_nominal_range_nearer_where_disparity_is_larger():
    disparity = np.linspace(0, 10, 100, dtype=np.float32).reshape(10, 10)
    depth = disparity_to_depth(disparity, np.ones((10, 10), dtype=bool), near=0.9, far=1.2)
    assert np.all(np.diff(depth.ravel()) <= 0)
    assert depth.min() == pytest.approx(0.9, rel=1e-5) and depth.max() == pytest.approx(1.2, rel=1e-5)


def test_find_inputs_names_outputs_and_reports_unsupported_files(tmp_path):
    (tmp_path / "person_a").mkdir()
    for name in ("person_a/one.jpg", "person_a/one.png", "clip.mp4", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rgb.png").write_bytes(b"")
    items, unsupported = find_inputs([tmp_path], identity_from="folder", exclude=tmp_path / "out")
    assert {item.name: item.identity for item in items} == {
        "clip": tmp_path.name,
        "person_a__one_jpg": "person_a",
        "person_a__one_png": "person_a",
    }
    assert [item.is_video for item in items] == [True, False, False]
    assert len(unsupported) == 1 and unsupported[0][0].endswith("notes.txt") and ".txt" in unsupported[0][1]
    with pytest.raises(UserInputError, match="no such file"):
        find_inputs([tmp_path / "missing"])


def test_split_is_fixed_per_identity():
    identities = [f"person{index}" for index in range(400)]
    splits = [split_for(identity, 0.25) for identity in identities]
    assert splits == [split_for(identity, 0.25) for identity in identities]
    assert 0.15 < splits.count("val") / len(splits) < 0.35
    assert {split_for(identity, 0.0) for identity in identities} == {"train"}
