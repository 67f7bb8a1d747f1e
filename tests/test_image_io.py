import struct

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from rgbd_portrait.data.image_io import (
    colorize_depth,
    fit_square,
    image_to_rgb,
    load_depth,
    load_image,
    load_mask,
    make_preview,
    plan_square_fit,
    require_same_size,
    soften_outside,
    to_uint8_rgb,
    write_depth_colormap,
    write_depth_npy,
    write_depth_png16,
    write_normals_png,
    write_preview,
    write_rgb_png,
)
from rgbd_portrait.data.sample_format import decode_normals
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.geometry.camera import CameraIntrinsics, unproject_depth


def _gradient(height=6, width=8):
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([columns / (width - 1), rows / (height - 1), np.full((height, width), 0.25)], -1)


def _save(path, array, mode=None, **options):
    Image.fromarray(array, mode=mode).save(path, **options) if mode else Image.fromarray(array).save(path, **options)
    return path


# --- load_image -----------------------------------------------------------------------------------------------


def test_rgb_png_round_trip(tmp_path):
    image = _gradient()
    written = write_rgb_png(tmp_path / "sub" / "rgb.png", image)
    loaded = load_image(written)
    assert loaded.dtype == np.float32 and loaded.shape == (6, 8, 3)
    np.testing.assert_allclose(loaded, image, atol=0.5 / 255 + 1e-6)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["rgb.png"]  # no temporary left behind


def test_rgba_is_composited_over_the_background(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    rgba[2:, :, 3] = 0
    path = _save(tmp_path / "rgba.png", rgba)
    on_white = load_image(path)
    np.testing.assert_allclose(on_white[0, 0], [1, 0, 0])
    np.testing.assert_allclose(on_white[3, 0], [1, 1, 1])
    np.testing.assert_allclose(load_image(path, background=(0.0, 0.5, 0.0))[3, 0], [0, 0.5, 0])


def test_palette_with_transparency_and_greyscale(tmp_path):
    palette = Image.new("P", (3, 3), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_allclose(load_image(tmp_path / "p.png")[1, 1], [1, 1, 1])  # the only colour is transparent
    grey = _save(tmp_path / "grey.png", np.full((3, 5), 51, np.uint8))
    loaded = load_image(grey)
    assert loaded.shape == (3, 5, 3)
    np.testing.assert_allclose(loaded, 0.2, atol=1e-6)


def test_sixteen_bit_greyscale_keeps_its_precision(tmp_path):
    values = np.array([[0, 1, 2, 65535], [300, 301, 302, 303]], np.uint16)
    loaded = load_image(_save(tmp_path / "sixteen.png", values))
    np.testing.assert_allclose(loaded[..., 0], values / 65535, atol=1e-7)
    assert loaded[1, 1, 0] > loaded[1, 0, 0]  # 8 bits would merge neighbouring values
    as_int32 = image_to_rgb(Image.fromarray(values.astype(np.int32)))  # PIL mode "I"
    np.testing.assert_allclose(as_int32[..., 1], values / 65535, atol=1e-7)
    floats = image_to_rgb(Image.fromarray(np.array([[-1.0, 0.5], [2.0, 0.25]], np.float32)))  # mode "F"
    np.testing.assert_allclose(floats[..., 2], [[0.0, 0.5], [1.0, 0.25]])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = 255  # white top-left corner of a landscape image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display after rotating 90° clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (4, 2, 3)
    assert loaded[0, 1].mean() > 0.8  # the white corner is now top-right
    assert loaded[0, 0].mean() < 0.3


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(UserInputError, match="broken.png: cannot read image") as error:
        load_image(path)
    assert "\n" not in str(error.value)


def test_missing_and_one_pixel_images(tmp_path):
    with pytest.raises(UserInputError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")
    one = _save(tmp_path / "one.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(UserInputError, match=r"one.png: image is 1×1 pixels"):
        load_image(one)
    line = _save(tmp_path / "line.png", np.zeros((1, 9, 3), np.uint8))
    with pytest.raises(UserInputError, match="line.png"):
        load_image(line)


# --- depth ----------------------------------------------------------------------------------------------------


def _write_exr(path, depth):
    """A minimal single-channel ("Z") float32 scanline OpenEXR file without compression, per the file layout
    spec; the OpenEXR library reads it back."""
    height, width = depth.shape

    def attribute(name, kind, value):
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = b"".join(
        [
            struct.pack("<ii", 20000630, 2),  # magic number, version 2 (scanline, short names)
            attribute("channels", "chlist", b"Z\0" + struct.pack("<iB3xii", 2, 0, 1, 1) + b"\0"),  # 2 = FLOAT
            attribute("compression", "compression", b"\0"),
            attribute("dataWindow", "box2i", window),
            attribute("displayWindow", "box2i", window),
            attribute("lineOrder", "lineOrder", b"\0"),
            attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
            attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
            attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
            b"\0",
        ]
    )
    line_bytes = width * 4
    first_line = len(header) + 8 * height
    offsets = struct.pack(f"<{height}Q", *[first_line + row * (8 + line_bytes) for row in range(height)])
    lines = b"".join(struct.pack("<ii", row, line_bytes) + depth[row].astype("<f4").tobytes() for row in range(height))
    path.write_bytes(header + offsets + lines)
    return path


def test_npy_depth_with_invalid_values(tmp_path):
    depth = np.linspace(1.0, 2.0, 12, dtype=np.float32).reshape(3, 4)
    depth[0, 0] = np.nan
    depth[1, 1] = np.inf
    depth[2, 3] = 0.0
    np.save(tmp_path / "d.npy", depth)
    loaded, valid = load_depth(tmp_path / "d.npy")
    assert loaded.dtype == np.float32 and valid.dtype == bool
    assert not valid[0, 0] and not valid[1, 1] and valid[2, 3] and valid.sum() == 10
    assert loaded[0, 0] == 0 and loaded[1, 1] == 0
    np.testing.assert_array_equal(loaded[valid], depth[valid])
    _, valid_without_zero = load_depth(tmp_path / "d.npy", zero_is_background=True)
    assert valid_without_zero.sum() == 9
    np.save(tmp_path / "d3.npy", depth[None])  # a leading singleton axis is accepted
    assert load_depth(tmp_path / "d3.npy")[0].shape == (3, 4)


def test_png16_depth_round_trip_and_scale(tmp_path):
    depth = np.linspace(0.0, 1.0, 20).reshape(4, 5)
    write_depth_png16(tmp_path / "d.png", depth)
    with Image.open(tmp_path / "d.png") as image:
        assert image.mode.startswith("I")
    loaded, valid = load_depth(tmp_path / "d.png")
    assert valid.all()
    np.testing.assert_allclose(loaded, depth, atol=0.5 / 65535 + 1e-7)
    millimetres = _save(tmp_path / "mm.png", np.full((3, 3), 1500, np.uint16))
    np.testing.assert_allclose(load_depth(millimetres, scale=0.001)[0], 1.5)
    with pytest.raises(ValueError, match="finite"):
        write_depth_png16(tmp_path / "nan.png", np.full((2, 2), np.nan))


def test_depth_mask_file_and_size_mismatch(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((4, 6), np.float32))
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 255
    _save(tmp_path / "mask.png", mask)
    depth, valid = load_depth(tmp_path / "d.npy", mask_path=tmp_path / "mask.png")
    np.testing.assert_array_equal(valid, mask > 0)
    assert depth[0, 0] == 0 and depth[1, 2] == 1
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.png"), mask > 0)
    _save(tmp_path / "small_mask.png", mask[:3])
    with pytest.raises(UserInputError, match=r"small_mask.png \(6×3\) does not match the size of .*d.npy \(6×4\)"):
        load_depth(tmp_path / "d.npy", mask_path=tmp_path / "small_mask.png")
    with pytest.raises(UserInputError, match=r"rgb.png \(5×4\) does not match the size of .*d.npy \(6×4\)"):
        require_same_size(tmp_path / "d.npy", depth, tmp_path / "rgb.png", np.zeros((4, 5, 3)))
    require_same_size("a", np.zeros((4, 6)), "b", np.zeros((4, 6, 3)))  # channels do not matter


def test_bad_depth_inputs_raise_one_line_errors(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan, np.float32))
    np.save(tmp_path / "inf.npy", np.array([[np.inf, -np.inf], [np.nan, np.inf]]))
    np.save(tmp_path / "zeros.npy", np.zeros((3, 3)))
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _save(tmp_path / "black.png", np.zeros((3, 3), np.uint8))
    _save(tmp_path / "colour.png", np.stack([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], -1).astype(np.uint8))
    cases = {
        "nan.npy": ({}, "no finite values"),
        "inf.npy": ({}, "no finite values"),
        "zeros.npy": ({"zero_is_background": True}, "no valid pixels"),
        "cube.npy": ({}, "2-D numeric"),
        "text.npy": ({}, "2-D numeric"),
        "objects.npy": ({}, "cannot read depth"),
        "colour.png": ({}, "has colour"),
        "missing.npy": ({}, "no such file"),
    }
    for name, (options, message) in cases.items():
        with pytest.raises(UserInputError, match=f"{name}.*{message}") as error:
            load_depth(tmp_path / name, **options)
        assert "\n" not in str(error.value)
    with pytest.raises(UserInputError, match="black.png: depth has no valid pixels"):
        load_depth(tmp_path / "black.png", mask_path=tmp_path / "black.png")


def test_greyscale_saved_as_rgb_is_accepted_as_depth(tmp_path):
    grey = np.repeat(np.array([[0, 51], [102, 255]], np.uint8)[..., None], 3, axis=-1)
    depth, _ = load_depth(_save(tmp_path / "grey_rgb.png", grey))
    np.testing.assert_allclose(depth, [[0, 0.2], [0.4, 1.0]], atol=1e-6)


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")  # imageio's plugin search
def test_exr_depth_is_read_when_imageio_can_and_explained_when_not(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    path = _write_exr(tmp_path / "depth.exr", depth)
    try:
        loaded, valid = load_depth(path)
    except UserInputError as error:
        # this environment's imageio has no OpenEXR plugin: the message says so and what to use instead
        assert "depth.exr: cannot read EXR" in str(error) and ".npy or 16-bit PNG" in str(error)
        pytest.skip("imageio cannot read OpenEXR here")
    np.testing.assert_allclose(loaded, depth)
    assert valid.all()


# --- square fitting -------------------------------------------------------------------------------------------


def test_centre_crop_and_back(tmp_path):
    image = np.random.default_rng(0).random((40, 60, 3)).astype(np.float32)
    square, fit = fit_square(image, 40)
    assert square.shape == (40, 40, 3) and square.dtype == np.float32
    np.testing.assert_array_equal(square, image[:, 10:50])  # same size: a pure crop
    back = fit.to_input_size(square, fill=-1.0)
    assert back.shape == image.shape
    np.testing.assert_array_equal(back[:, 10:50], image[:, 10:50])
    assert (back[:, :10] == -1).all() and (back[:, 50:] == -1).all()


def test_crop_around_a_given_centre_stays_inside():
    fit = plan_square_fit(40, 100, 20, center=(15.0, 20.0))
    assert (fit.top, fit.left, fit.side) == (0, 0, 40)  # pushed right by the left border
    fit = plan_square_fit(40, 100, 20, center=(70.0, 0.0))
    assert (fit.top, fit.left) == (0, 50)
    fit = plan_square_fit(100, 40, 20, center=(20.0, 99.0))
    assert (fit.top, fit.left) == (60, 0)


def test_pad_mode_keeps_the_whole_image_and_maps_back_exactly():
    image = np.random.default_rng(1).random((30, 50)).astype(np.float32)
    padded, fit = fit_square(image, 50, mode="pad", padding=0.0)
    assert padded.shape == (50, 50)
    assert (fit.top, fit.left, fit.side) == (-10, 0, 50)
    assert (padded[:10] == 0).all() and (padded[40:] == 0).all()
    np.testing.assert_array_equal(padded[10:40], image)
    np.testing.assert_array_equal(fit.to_input_size(padded), image)
    edge, _ = fit_square(image, 50, mode="pad")
    np.testing.assert_array_equal(edge[0], image[0])  # edge padding replicates the border row


def _photo_with_padding(side=96, photo_columns=40):
    """A photo (left `photo_columns` columns: a dark backdrop with a bright stripe near its right border) padded
    to `side` by mirroring it, as `prepare` warps a tight crop; returns the image and where the photo is."""
    photo = np.full((side, photo_columns, 3), (40, 60, 80), np.uint8)
    photo[:, photo_columns - 6 : photo_columns - 3] = 250
    image = np.pad(photo, ((0, 0), (0, side - photo_columns), (0, 0)), mode="reflect")
    inside = np.zeros((side, side), bool)
    inside[:, :photo_columns] = True
    return image, inside


def test_padding_becomes_an_out_of_focus_backdrop_of_the_border_colour():
    image, inside = _photo_with_padding()
    softened = soften_outside(image, inside)
    assert softened.dtype == np.uint8
    np.testing.assert_array_equal(softened[inside], image[inside])
    # The mirrored stripe (columns 42-44) is blurred away, and far from the photo only the border's colour is left.
    assert image[:, 42:45].min() == 250 and softened[:, 42:45].max() < 150
    np.testing.assert_array_equal(softened[:, 70:], np.broadcast_to([40, 60, 80], softened[:, 70:].shape))
    floats = soften_outside(image.astype(np.float32) / 255, inside)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats * 255, softened, atol=1.0)


def test_soften_outside_leaves_whole_photos_and_rejects_a_mismatched_mask():
    image, _ = _photo_with_padding()
    assert soften_outside(image, np.ones(image.shape[:2], bool)) is image
    with pytest.raises(ValueError, match="an \\(H, W\\) mask"):
        soften_outside(image, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="an \\(H, W, C\\) image"):
        soften_outside(image[..., 0], np.ones(image.shape[:2], bool))


def test_soft_padding_of_a_square_fit_keeps_the_photo_and_fades_the_rest():
    image = np.random.default_rng(2).random((30, 50, 3)).astype(np.float32)
    padded, fit = fit_square(image, 50, mode="pad", padding="soft")
    np.testing.assert_array_equal(padded[10:40], image)
    # Edge padding streaks the border rows' noise across the padding; soft padding fades it to one colour.
    edge, _ = fit_square(image, 50, mode="pad")
    assert np.abs(np.diff(edge[:10], axis=1)).mean() > 0.2
    assert np.abs(np.diff(padded[:10], axis=1)).mean() < 0.05
    np.testing.assert_allclose(padded[0], padded[0, :1].repeat(50, axis=0), atol=1e-6)


def test_resizing_images_depth_and_masks():
    rng = np.random.default_rng(2)
    image = rng.random((64, 96, 3)).astype(np.float32)
    mask = np.zeros((64, 96), bool)
    mask[16:48, 40:70] = True
    depth = np.where(mask, 1.0 + rng.random((64, 96)), 0.0).astype(np.float32)
    fit = plan_square_fit(64, 96, 32, center=(55.0, 32.0))
    small_image = fit.apply(image)
    small_depth = fit.apply(depth, interpolation="nearest", padding=0.0)
    small_mask = fit.apply(mask, interpolation="nearest", padding=False)
    assert small_image.shape == (32, 32, 3) and small_mask.dtype == bool and small_depth.dtype == np.float32
    # nearest keeps depth values that exist in the input (no blend of subject and background)
    assert np.isin(small_depth, depth).all()
    np.testing.assert_array_equal(small_depth > 0, small_mask)
    # bilinear downscaling averages: the mean of the window is preserved
    window = image[:, fit.left : fit.left + 64]
    np.testing.assert_allclose(small_image.mean(axis=(0, 1)), window.mean(axis=(0, 1)), atol=2e-3)
    back_mask = fit.to_input_size(small_mask, interpolation="nearest")
    assert back_mask.shape == (64, 96) and back_mask.dtype == bool
    # a factor-2 round trip moves the mask's edges by at most a pixel
    assert (back_mask <= binary_dilation(mask)).all() and (binary_erosion(mask) <= back_mask).all()
    back_uint8 = fit.to_input_size(to_uint8_rgb(small_image))
    assert back_uint8.dtype == np.uint8 and back_uint8.shape == (64, 96, 3)


def test_output_intrinsics_follow_the_crop_and_resize():
    intrinsics = CameraIntrinsics(fx=80.0, fy=80.0, cx=45.0, cy=30.0)
    fit = plan_square_fit(60, 100, 30, center=(40.0, 30.0))  # the window starts at column 10, halved
    cropped = fit.output_intrinsics(intrinsics)
    assert (cropped.fx, cropped.fy, cropped.cx, cropped.cy) == (40.0, 40.0, 17.5, 15.0)
    # output pixel (0, 0) covers input pixels (0–1, 10–11): its centre is half an input pixel right of and
    # below that of input pixel (0, 10), and the two cameras must agree on where it looks
    depth = np.full((60, 100), 2.0, np.float32)
    points = unproject_depth(torch.from_numpy(fit.apply(depth, interpolation="nearest")), cropped)
    input_points = unproject_depth(torch.from_numpy(depth), intrinsics)
    np.testing.assert_allclose(points[:, 0, 0], input_points[:, 0, 10] + torch.tensor([0.5 / 80 * 2, -0.5 / 80 * 2, 0]))


def test_square_fit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        plan_square_fit(10, 10, 8, mode="stretch")
    fit = plan_square_fit(10, 12, 8)
    with pytest.raises(ValueError, match="planned"):
        fit.apply(np.zeros((12, 10)))
    with pytest.raises(ValueError, match="output side"):
        fit.to_input_size(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="interpolation"):
        fit.apply(np.zeros((10, 12)), interpolation="cubic")


# --- writers --------------------------------------------------------------------------------------------------


def test_depth_npy_writer(tmp_path):
    depth = np.random.default_rng(3).random((5, 7))
    write_depth_npy(tmp_path / "d.npy", depth)
    loaded = np.load(tmp_path / "d.npy", allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, depth, rtol=1e-6)


def test_colourised_depth_near_is_warm(tmp_path):
    depth = np.array([[0.0, 0.5, 1.0, 0.3]])
    mask = np.array([[True, True, True, False]])
    colours = colorize_depth(depth, mask=mask)
    near, far = colours[0, 0].astype(int), colours[0, 2].astype(int)
    assert near[0] > near[2] and far[2] > far[0]  # near red, far blue
    assert (colours[0, 3] == 0).all()
    stretched = colorize_depth(np.array([[2.0, 3.0]]), value_range=None)
    np.testing.assert_array_equal(stretched, colorize_depth(np.array([[0.0, 1.0]])))
    bright_near = colorize_depth(depth, colormap="inferno_r")
    assert bright_near[0, 0].sum() > bright_near[0, 2].sum()
    with pytest.raises(UserInputError, match="colormap 'nope'"):
        colorize_depth(depth, colormap="nope")
    write_depth_colormap(tmp_path / "c.png", depth, mask=mask)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), colours)


def test_normals_png_round_trip(tmp_path):
    normals = np.zeros((2, 3, 3), np.float32)
    normals[..., 2] = 1.0
    normals[0, 0] = [0.6, 0.0, 0.8]
    mask = np.ones((2, 3), bool)
    mask[1, 2] = False
    write_normals_png(tmp_path / "n.png", normals, mask=mask)
    decoded = decode_normals(np.asarray(Image.open(tmp_path / "n.png")))
    np.testing.assert_allclose(decoded[mask], normals[mask], atol=0.01)
    assert (decoded[1, 2] == 0).all()


def test_preview_row_with_captions(tmp_path):
    panels = [
        ("input", np.ones((40, 40, 3), np.float32)),
        ("depth", colorize_depth(np.tile(np.linspace(0, 1, 20), (40, 1)))),
        ("mask", np.ones((20, 40), bool)),
    ]
    preview = make_preview(panels, height=32, caption_height=16)
    assert preview.size == (32 + 16 + 64, 48)  # each panel keeps its aspect ratio
    pixels = np.asarray(preview)
    assert (pixels[32:, :32] < 128).any()  # caption text is drawn in black under the first panel
    assert (pixels[:32, :32] == 255).all()
    write_preview(tmp_path / "preview.png", panels, height=32, caption_height=16)
    assert Image.open(tmp_path / "preview.png").size == preview.size
    with pytest.raises(ValueError, match="panel"):
        make_preview([])


def test_to_uint8_rgb_conversions():
    np.testing.assert_array_equal(to_uint8_rgb(np.array([[-0.5, 0.5, 2.0]]))[0, :, 0], [0, 128, 255])
    assert to_uint8_rgb(np.array([[True, False]])).tolist() == [[[255] * 3, [0] * 3]]
    with pytest.raises(ValueError, match="image"):
        to_uint8_rgb(np.zeros((2, 2, 4)))


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_rgb_png(tmp_path / "x.png", np.zeros((2, 2, 5)))
    with pytest.raises(ValueError):
        write_depth_png16(tmp_path / "d.png", np.array([[np.inf]]))
    assert list(tmp_path.iterdir()) == []
