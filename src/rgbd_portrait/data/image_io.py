"""Reading what users give and writing what they get: images, depth maps, square fitting, previews.

Arrays at this boundary are numpy, channels-last like PIL: images (H, W, 3) float32 in [0, 1], depth (H, W)
float32, masks (H, W) bool, normals (H, W, 3) unit vectors. Every writer is atomic (a temporary file in the
destination folder, then a rename), so a failed run never leaves a half-written file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from scipy import ndimage

from rgbd_portrait.data.sample_format import encode_normals
from rgbd_portrait.errors import UserInputError
from rgbd_portrait.files import write_bytes_atomically
from rgbd_portrait.geometry.camera import CameraIntrinsics

WHITE = (1.0, 1.0, 1.0)
MIN_IMAGE_SIDE = 2
UINT16_MAX = np.iinfo(np.uint16).max
# PIL opens 16-bit greyscale files in one of these modes; "I" (32-bit) also holds 16-bit PNGs.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXR_SUFFIX = ".exr"

Interpolation = Literal["bilinear", "nearest"]
# Padding past a photo's borders becomes an out-of-focus backdrop (`soften_outside`); lengths are fractions of
# the image side: the blur's sigma, the distance over which the blur sets in, the distance over which it fades
# to the border's median colour, and how deep a ring of the photo along its border gives that colour.
PADDING_BLUR = 0.04
PADDING_BLUR_RAMP = 0.02
PADDING_FADE = 0.2
PADDING_COLOUR_RING = 0.05


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file, upright per its EXIF orientation."""
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserInputError(f"{path}: cannot read image ({_first_line(error)})") from error
    if min(upright.size) < MIN_IMAGE_SIDE:
        raise UserInputError(
            f"{path}: image is {upright.width}×{upright.height} pixels, need at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}"
        )
    return upright


def image_to_rgb(image: Image.Image, *, background: Sequence[float] = WHITE) -> np.ndarray:
    """A PIL image in any mode → float32 RGB (H, W, 3) in [0, 1].

    Transparent pixels are composited over `background` (RGB in [0, 1]); greyscale is replicated to three
    channels; 16-bit greyscale keeps its precision; float images are clipped to [0, 1].
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / UINT16_MAX
    elif image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
    else:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        if not has_alpha:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + np.asarray(background, dtype=np.float32) * (1.0 - alpha)
    return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)


def load_image(path: str | os.PathLike, *, background: Sequence[float] = WHITE) -> np.ndarray:
    """Any image PIL can read → float32 RGB (H, W, 3) in [0, 1] (see `image_to_rgb`)."""
    return image_to_rgb(_open_image(Path(path)), background=background)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image → bool (H, W): pixels brighter than half are the subject."""
    return np.asarray(_open_image(Path(path)).convert("L")) > 127


def require_same_size(
    first_path: str | os.PathLike, first: np.ndarray, second_path: str | os.PathLike, second: np.ndarray
) -> None:
    """One-line error naming both files when two maps of one view differ in height or width."""
    if first.shape[:2] != second.shape[:2]:
        first_size = f"{first.shape[1]}×{first.shape[0]}"
        second_size = f"{second.shape[1]}×{second.shape[0]}"
        raise UserInputError(f"{second_path} ({second_size}) does not match the size of {first_path} ({first_size})")


def _read_raw_depth(path: Path) -> np.ndarray:
    """The depth file's values as stored: a 2-D numeric array."""
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UserInputError(f"{path}: cannot read depth ({_first_line(error)})") from error
    elif suffix == _EXR_SUFFIX:
        import imageio.v3 as iio

        try:
            raw = iio.imread(path)
        except Exception as error:  # imageio raises many types when no installed plugin reads a format
            raise UserInputError(
                f"{path}: cannot read EXR with the installed imageio plugins ({_first_line(error)}); "
                "save the depth as .npy or 16-bit PNG"
            ) from error
        if raw.ndim == 3:  # an RGB(A) EXR holding depth in every channel
            raw = raw[..., 0]
    else:
        image = _open_image(path)
        if image.mode in ("RGB", "RGBA"):
            channels = np.asarray(image.convert("RGB"))
            if not (channels == channels[..., :1]).all():
                raise UserInputError(f"{path}: depth image has colour; expected a single-channel depth map")
            image = image.convert("L")
        elif image.mode not in (*_SIXTEEN_BIT_MODES, "F", "L"):
            image = image.convert("L")
        raw = np.asarray(image)
    raw = np.squeeze(raw)
    if raw.ndim != 2 or not (np.issubdtype(raw.dtype, np.number) and not np.iscomplexobj(raw)):
        raise UserInputError(f"{path}: depth must be a 2-D numeric array, got {raw.dtype} {raw.shape}")
    if min(raw.shape) < MIN_IMAGE_SIDE:
        raise UserInputError(f"{path}: depth map is {raw.shape[1]}×{raw.shape[0]} pixels, too small")
    return raw


def load_depth(
    path: str | os.PathLike,
    *,
    mask_path: str | os.PathLike | None = None,
    scale: float | None = None,
    zero_is_background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a depth map (.npy, PNG/TIFF, EXR where imageio can) and its valid pixels.

    Values are multiplied by `scale` when given (e.g. 0.001 for millimetres in a 16-bit PNG); otherwise
    8-bit integers are divided by 255 and wider ones by 65535, so a PNG written by `write_depth_png16` reads
    back as its [0, 1] depth, and floats are used as stored. Valid pixels are the finite ones, inside the mask file when
    given, and non-zero when `zero_is_background` (the convention of metric depth with an empty background).

    Returns depth (H, W) float32, 0 outside the valid pixels, and the valid pixels (H, W) bool.
    """
    path = Path(path)
    raw = _read_raw_depth(path)
    if scale is not None:
        depth = raw.astype(np.float64) * scale
    elif np.issubdtype(raw.dtype, np.integer):
        # PIL reads 16-bit PNGs as 32-bit "I": the 16-bit range is the meaningful one for integers
        depth = raw.astype(np.float64) / (255 if raw.dtype == np.uint8 else UINT16_MAX)
    else:
        depth = raw.astype(np.float64)
    valid = np.isfinite(depth)
    if not valid.any():
        raise UserInputError(f"{path}: depth has no finite values (all NaN or inf)")
    if zero_is_background:
        valid &= depth != 0
    if mask_path is not None:
        mask = load_mask(mask_path)
        require_same_size(path, depth, mask_path, mask)
        valid &= mask
    if not valid.any():
        source = f"{path} with mask {mask_path}" if mask_path is not None else str(path)
        raise UserInputError(f"{source}: depth has no valid pixels (all background)")
    return np.where(valid, depth, 0.0).astype(np.float32), valid


# --- square fitting -----------------------------------------------------------------------------------------


def soften_outside(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """`image` (H, W, C) with its pixels outside `inside` (H, W) bool, the padding past a photo's borders, made
    an out-of-focus backdrop: blurred, then faded toward the median colour of the photo along its border, more
    the farther from the photo. Mirrored or streaked copies of the photo there would teach a generator to draw
    them (FFHQ's crops fade their padding likewise). Pixels inside are returned unchanged, in `image`'s dtype."""
    if image.ndim != 3 or inside.shape != image.shape[:2]:
        raise ValueError(f"expected an (H, W, C) image and an (H, W) mask, got {image.shape} and {inside.shape}")
    if inside.all() or not inside.any():
        return image
    side = max(inside.shape)
    to_photo = ndimage.distance_transform_edt(~inside)
    ring = inside & (ndimage.distance_transform_edt(inside) <= max(PADDING_COLOUR_RING * side, 1.0))
    pixels = image.astype(np.float32)
    colour = np.median(pixels[ring], axis=0)
    sigma = PADDING_BLUR * side
    blurred = ndimage.gaussian_filter(pixels, sigma=(sigma, sigma, 0))
    to_blur = np.clip(to_photo / (PADDING_BLUR_RAMP * side), 0.0, 1.0)[..., None]
    to_colour = np.clip(to_photo / (PADDING_FADE * side), 0.0, 1.0)[..., None]
    softened = pixels + (blurred - pixels) * to_blur
    softened += (colour - softened) * to_colour
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        softened = np.clip(np.round(softened), info.min, info.max)
    return np.where(inside[..., None], image, softened.astype(image.dtype))


def _resize(array: np.ndarray, height: int, width: int, interpolation: Interpolation) -> np.ndarray:
    """Resize (H, W) or (H, W, C) to (height, width), keeping the dtype (bool and integers are rounded back)."""
    if array.shape[:2] == (height, width):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    channels_first = (tensor[..., None] if array.ndim == 2 else tensor).permute(2, 0, 1)[None]
    if interpolation == "bilinear":
        resized = torch.nn.functional.interpolate(
            channels_first, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    elif interpolation == "nearest":
        resized = torch.nn.functional.interpolate(channels_first, size=(height, width), mode="nearest-exact")
    else:
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    result = resized[0].permute(1, 2, 0).numpy()
    result = result[..., 0] if array.ndim == 2 else result
    if array.dtype == np.bool_:
        return result > 0.5
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(np.round(result), info.min, info.max).astype(array.dtype)
    return result.astype(array.dtype)


@dataclass(frozen=True)
class SquareFit:
    """A square window on an input image (it may reach past the borders: padding), resized to `output_side`.

    Plan one with `plan_square_fit`, then `apply` it to the image, its depth and its mask alike, and map
    results back with `to_input_size`.
    """

    input_height: int
    input_width: int
    top: int
    left: int
    side: int
    output_side: int

    def apply(
        self, array: np.ndarray, *, interpolation: Interpolation = "bilinear", padding: str | float = "edge"
    ) -> np.ndarray:
        """Cut the square out of `array` (H, W[, C]) and resize it; `padding` is "edge", a constant, or "soft"
        for images: `soften_outside` of the edge padding."""
        if array.shape[:2] != (self.input_height, self.input_width):
            raise ValueError(
                f"array is {array.shape[:2]}, the fit was planned for {self.input_height, self.input_width}"
            )
        if padding == "soft":
            inside = self.apply(np.ones(array.shape[:2], dtype=bool), interpolation="nearest", padding=False)
            return soften_outside(self.apply(array, interpolation=interpolation), inside)
        before_rows, before_columns = max(0, -self.top), max(0, -self.left)
        after_rows = max(0, self.top + self.side - self.input_height)
        after_columns = max(0, self.left + self.side - self.input_width)
        widths = [(before_rows, after_rows), (before_columns, after_columns)] + [(0, 0)] * (array.ndim - 2)
        if padding == "edge":
            padded = np.pad(array, widths, mode="edge")
        else:
            padded = np.pad(array, widths, mode="constant", constant_values=padding)
        top, left = self.top + before_rows, self.left + before_columns
        window = padded[top : top + self.side, left : left + self.side]
        return _resize(window, self.output_side, self.output_side, interpolation)

    def output_intrinsics(self, intrinsics: CameraIntrinsics) -> CameraIntrinsics:
        """The camera of the fitted square, given the input's: shifted by the window, scaled by the resize."""
        scale = self.output_side / self.side
        return CameraIntrinsics(
            fx=intrinsics.fx * scale,
            fy=intrinsics.fy * scale,
            cx=(intrinsics.cx - self.left) * scale,
            cy=(intrinsics.cy - self.top) * scale,
        )

    def to_input_size(
        self, array: np.ndarray, *, interpolation: Interpolation = "bilinear", fill: float = 0.0
    ) -> np.ndarray:
        """Map an output (output_side, output_side[, C]) back onto the input's pixels.

        Input pixels that the square did not cover (crop mode) get `fill`.
        """
        if array.shape[:2] != (self.output_side, self.output_side):
            raise ValueError(f"array is {array.shape[:2]}, expected the fit's output side {self.output_side}")
        square = _resize(array, self.side, self.side, interpolation)
        canvas = np.full((self.input_height, self.input_width, *array.shape[2:]), fill, dtype=array.dtype)
        rows = slice(max(0, self.top), min(self.input_height, self.top + self.side))
        columns = slice(max(0, self.left), min(self.input_width, self.left + self.side))
        canvas[rows, columns] = square[
            rows.start - self.top : rows.stop - self.top, columns.start - self.left : columns.stop - self.left
        ]
        return canvas


def plan_square_fit(
    height: int,
    width: int,
    output_side: int,
    *,
    center: tuple[float, float] | None = None,
    mode: Literal["crop", "pad"] = "crop",
) -> SquareFit:
    """The square to cut from a (height, width) input: the largest inside it ("crop") or the smallest holding
    it ("pad"), centred on `center` (x, y in pixels, e.g. a face box's centre; default the image centre)
    as far as the input allows."""
    if mode == "crop":
        side = min(height, width)
    elif mode == "pad":
        side = max(height, width)
    else:
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    center_x, center_y = (width / 2.0, height / 2.0) if center is None else center

    def start(centre: float, extent: int) -> int:
        # the square covers the input along this axis (pad) or stays inside it (crop)
        low, high = min(0, extent - side), max(0, extent - side)
        return int(np.clip(round(centre - side / 2.0), low, high))

    return SquareFit(
        input_height=height,
        input_width=width,
        top=start(center_y, height),
        left=start(center_x, width),
        side=side,
        output_side=output_side,
    )


def fit_square(
    array: np.ndarray,
    output_side: int,
    *,
    center: tuple[float, float] | None = None,
    mode: Literal["crop", "pad"] = "crop",
    interpolation: Interpolation = "bilinear",
    padding: str | float = "edge",
) -> tuple[np.ndarray, SquareFit]:
    """Square crop or padding of one array, resized to `output_side`; returns it and the fit."""
    fit = plan_square_fit(array.shape[0], array.shape[1], output_side, center=center, mode=mode)
    return fit.apply(array, interpolation=interpolation, padding=padding), fit


# --- writers ------------------------------------------------------------------------------------------------


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] (clipped), bool or uint8, (H, W) or (H, W, 3) → uint8 (H, W, 3)."""
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.round(np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got {image.shape}")
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_rgb_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """8-bit RGB PNG of an image (see `to_uint8_rgb` for the accepted arrays)."""
    return write_bytes_atomically(path, _png_bytes(Image.fromarray(to_uint8_rgb(image))))


def write_depth_npy(path: str | os.PathLike, depth: np.ndarray) -> Path:
    """Depth (H, W) as float32 `.npy`."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(depth, dtype=np.float32), allow_pickle=False)
    return write_bytes_atomically(path, buffer.getvalue())


def write_depth_png16(path: str | os.PathLike, depth: np.ndarray) -> Path:
    """Affine-invariant depth in [0, 1] (clipped) → 16-bit greyscale PNG, 0 = near, 65535 = far."""
    depth = np.asarray(depth, dtype=np.float64)
    if not np.isfinite(depth).all():
        raise ValueError("depth for a 16-bit PNG must be finite")
    quantised = np.round(np.clip(depth, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)
    return write_bytes_atomically(path, _png_bytes(Image.fromarray(quantised)))


def colorize_depth(
    depth: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    colormap: str = "Spectral",
    value_range: tuple[float, float] | None = (0.0, 1.0),
    background: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Depth (H, W) → uint8 RGB (H, W, 3) through a matplotlib colormap.

    The colormap is sampled at the depth mapped from `value_range` (None: the mask's min and max) to [0, 1],
    so with the default Spectral near is red (warm) and far is blue; pass e.g. "inferno_r" for near = bright.
    Pixels outside `mask` get `background`.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(depth))
    if value_range is None:
        low, high = (depth[valid].min(), depth[valid].max()) if valid.any() else (0.0, 1.0)
    else:
        low, high = value_range
    unit = np.clip((np.nan_to_num(depth) - low) / max(high - low, 1e-12), 0.0, 1.0)
    try:
        colors = matplotlib.colormaps[colormap](unit)[..., :3]
    except KeyError as error:
        raise UserInputError(f"colormap {colormap!r} is not a matplotlib colormap") from error
    colors = np.where(valid[..., None], colors, np.asarray(background, dtype=np.float64))
    return to_uint8_rgb(colors)


def write_depth_colormap(path: str | os.PathLike, depth: np.ndarray, **options) -> Path:
    """Colourised depth PNG; `options` are those of `colorize_depth`."""
    return write_rgb_png(path, colorize_depth(depth, **options))


def write_normals_png(path: str | os.PathLike, normals: np.ndarray, *, mask: np.ndarray | None = None) -> Path:
    """Unit normals (H, W, 3) → RGB PNG, (n + 1) / 2 as in `normal.png`; the zero vector outside `mask`."""
    normals = np.asarray(normals, dtype=np.float32)
    if mask is not None:
        normals = normals * np.asarray(mask, dtype=np.float32)[..., None]
    return write_bytes_atomically(path, _png_bytes(Image.fromarray(encode_normals(normals))))


def make_preview(
    panels: Sequence[tuple[str, np.ndarray]], *, height: int = 256, caption_height: int = 20
) -> Image.Image:
    """A row of images with small captions underneath, each scaled to `height` pixels.

    `panels` are (caption, image) pairs; images as accepted by `to_uint8_rgb`.
    """
    if not panels:
        raise ValueError("a preview needs at least one panel")
    font = ImageFont.load_default(size=max(8, caption_height - 6))
    tiles = []
    for _caption, image in panels:
        rgb = to_uint8_rgb(np.asarray(image))
        width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
        tiles.append(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    preview = Image.new("RGB", (sum(tile.width for tile in tiles), height + caption_height), "white")
    draw = ImageDraw.Draw(preview)
    left = 0
    for (caption, _image), tile in zip(panels, tiles):
        preview.paste(tile, (left, 0))
        draw.text((left + 3, height + 2), caption, fill="black", font=font)
        left += tile.width
    return preview


def write_preview(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]], **options) -> Path:
    """Write `make_preview(panels, **options)` as a PNG."""
    return write_bytes_atomically(path, _png_bytes(make_preview(panels, **options)))
