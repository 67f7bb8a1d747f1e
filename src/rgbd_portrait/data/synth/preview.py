"""A contact sheet of samples for a glance: one row per sample, one column per kind of output."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rgbd_portrait.data.image_io import colorize_depth, to_uint8_rgb
from rgbd_portrait.data.sample_format import PortraitSample, encode_normals
from rgbd_portrait.files import write_bytes_atomically

HEADER_HEIGHT = 18


def contact_sheet(samples: Sequence[PortraitSample], *, tile: int = 128) -> Image.Image:
    """Rows of RGB | depth (near = warm) | normals | albedo | relit images, each `tile` pixels high."""
    if not samples:
        raise ValueError("a contact sheet needs at least one sample")
    relit = max(len(sample.relit) for sample in samples)
    captions = ["rgb", "depth", "normals", "albedo", *(f"relit {index}" for index in range(relit))]
    rows = []
    for sample in samples:
        blank = np.zeros_like(sample.rgb)
        normal = encode_normals(sample.normal) if sample.normal is not None else blank
        panels = [
            sample.rgb,
            colorize_depth(sample.depth, mask=sample.mask, value_range=None),
            np.where(sample.mask[..., None], normal, 0).astype(np.uint8),
            sample.albedo if sample.albedo is not None else blank,
            *(sample.relit[index] if index < len(sample.relit) else blank for index in range(relit)),
        ]
        rows.append(np.concatenate([_resize(to_uint8_rgb(panel), tile) for panel in panels], axis=1))
    grid = np.concatenate(rows, axis=0)
    sheet = Image.new("RGB", (grid.shape[1], grid.shape[0] + HEADER_HEIGHT), "white")
    sheet.paste(Image.fromarray(grid), (0, HEADER_HEIGHT))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=HEADER_HEIGHT - 6)
    for column, caption in enumerate(captions):
        draw.text((column * tile + 4, 2), caption, fill="black", font=font)
    return sheet


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def write_contact_sheet(path: str | os.PathLike, samples: Sequence[PortraitSample], *, tile: int = 128) -> Path:
    buffer = io.BytesIO()
    contact_sheet(samples, tile=tile).save(buffer, format="PNG")
    return write_bytes_atomically(path, buffer.getvalue())
