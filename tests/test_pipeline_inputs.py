"""Reading the pipeline's inputs and fitting them to the model's square."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from rgbd_portrait.errors import UserInputError
from rgbd_portrait.pipelines.inputs import FaceCentres, plan_fit, read_depths, read_images, read_masks


def test_images_from_paths_pil_arrays_and_tensors(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 128, np.uint8)).save(path)
    batch = torch.rand(2, 3, 6, 7)
    loaded = read_images([str(path), Image.new("RGBA", (3, 2)), np.zeros((3, 3), np.uint8), *batch], argument="image")
    assert [image.source for image in loaded] == [str(path), "image[1]", "image[2]", "image[3]", "image[4]"]
    assert [image.pixels.shape for image in loaded] == [(4, 5, 3), (2, 3, 3), (3, 3, 3), (6, 7, 3), (6, 7, 3)]
    np.testing.assert_allclose(loaded[3].pixels, batch[0].permute(1, 2, 0).numpy())
    assert len(read_images(batch, argument="image")) == 2  # a batched tensor is several images


def test_bad_images_and_masks_are_named():
    with pytest.raises(UserInputError, match=r"image\[0\]: image has NaN"):
        read_images(np.full((4, 4, 3), np.nan, np.float32), argument="image")
    with pytest.raises(UserInputError, match=r"image\[0\]: expected an image"):
        read_images(np.zeros((4, 4, 2)), argument="image")
    with pytest.raises(UserInputError, match="mask: 2 masks for 3 inputs"):
        read_masks([np.ones((2, 2))] * 2, argument="mask", count=3)


def test_depth_keeps_finite_pixels_on_the_mask():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    depth[0, 0] = np.inf
    mask = np.ones((3, 4), bool)
    mask[2, 3] = False
    (loaded,) = read_depths(depth, argument="depth", masks=mask)
    assert not loaded.valid[0, 0] and not loaded.valid[2, 3] and loaded.valid.sum() == 10
    assert loaded.depth[0, 0] == 0 and np.isfinite(loaded.depth).all()


def test_crop_follows_the_largest_face_when_mediapipe_is_installed():
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("MediaPipe is not installed (the prepare extra)")
    from skimage.data import astronaut

    canvas = np.ones((512, 1024, 3), np.float32)
    canvas[:, 512:] = astronaut().astype(np.float32) / 255  # the face is near x = 740
    fit = plan_fit(canvas, 16, mode="crop", face_centres=FaceCentres())
    assert 440 <= fit.left <= 512 and fit.side == 512
    assert plan_fit(canvas, 16, mode="crop", face_centres=None).left == 256


def test_without_mediapipe_the_fit_is_centred(monkeypatch):
    from rgbd_portrait.data.prepare import faces

    def missing():
        raise UserInputError("preparing portraits needs MediaPipe (No module named 'mediapipe')")

    monkeypatch.setattr(faces, "import_mediapipe", missing)
    centres = FaceCentres()
    image = np.zeros((8, 12, 3), np.float32)
    assert centres(image) is None and centres(image) is None
    assert centres.has_face(image) is None  # cannot tell
    assert plan_fit(image, 4, mode="crop", face_centres=centres).left == 2


def test_face_fit_frames_the_face_as_the_training_crops():
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("MediaPipe is not installed (the prepare extra)")
    from skimage.data import astronaut

    from rgbd_portrait.data.prepare.alignment import align_face, warp_to_crop
    from rgbd_portrait.data.prepare.faces import FaceFinder

    photo = astronaut()
    centres = FaceCentres()
    fit = plan_fit(photo.astype(np.float32) / 255, 64, mode="face", face_centres=centres)
    crop_fit = plan_fit(photo.astype(np.float32) / 255, 64, mode="crop", face_centres=centres)
    assert fit.side < crop_fit.side / 2  # the face, not the whole picture
    assert centres.has_face(photo) is True and centres.has_face(np.zeros((64, 64, 3), np.uint8)) is False
    face = FaceFinder().find(photo)[0]
    center_x, center_y = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
    assert fit.left < center_x < fit.left + fit.side and fit.top < center_y < fit.top + fit.side
    # A photo already cropped as `prepare` crops it is framed as a whole (the crop is upright, so nearly).
    prepared, _ = warp_to_crop(photo, align_face(face.landmarks, 192))
    refit = plan_fit(prepared.astype(np.float32) / 255, 64, mode="face", face_centres=centres)
    assert abs(refit.side - 192) <= 12 and abs(refit.left) <= 8 and abs(refit.top) <= 8


def test_face_fit_pads_past_the_borders_and_maps_back():
    from rgbd_portrait.pipelines.inputs import face_square_fit

    fit = face_square_fit(10, 20, 8, (2.0, 5.0, 8.0))  # centre near the left edge
    assert (fit.top, fit.left, fit.side) == (1, -2, 8)
    image = np.arange(200, dtype=np.float32).reshape(10, 20)
    square = fit.apply(image, interpolation="nearest")
    np.testing.assert_array_equal(square[:, 2:], image[1:9, 0:6])  # columns past the border repeat the edge
    back = fit.to_input_size(np.ones((8, 8), bool), interpolation="nearest")
    assert back[1:9, 0:6].all() and back.sum() == 48


def test_face_fit_without_a_face_is_the_crop(monkeypatch):
    from rgbd_portrait.data.prepare import faces

    def missing():
        raise UserInputError("preparing portraits needs MediaPipe (No module named 'mediapipe')")

    monkeypatch.setattr(faces, "import_mediapipe", missing)
    image = np.zeros((8, 12, 3), np.float32)
    assert plan_fit(image, 4, mode="face", face_centres=FaceCentres()) == plan_fit(
        image, 4, mode="crop", face_centres=None
    )
    with pytest.raises(UserInputError, match="fit: 'tight' is not one of crop, pad, face"):
        plan_fit(image, 4, mode="tight", face_centres=None)
