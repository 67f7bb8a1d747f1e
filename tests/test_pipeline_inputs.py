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
    assert plan_fit(image, 4, mode="crop", face_centres=centres).left == 2
