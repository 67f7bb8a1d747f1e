"""The demo at a glance: one PNG with a row per portrait and a column per task result (`overview.png`).

Made from the demo record and the files the tasks wrote, so it shows exactly what the page links to; the
README's picture is this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

OVERVIEW_FILE = "overview.png"
CAPTION_HEIGHT = 18
GAP = 4
BACKGROUND = (255, 255, 255)
TEXT = (30, 30, 30)


def _columns(relight_preset: str | None) -> list[tuple[str, str, str]]:
    """(caption, task, file in the task's result folder); task "" means a file named by the portrait record."""
    columns = [
        ("input", "", "target"),
        ("image to depth", "image_to_depth", "depth_color.png"),
        ("joint: image", "joint", "rgb.png"),
        ("joint: depth", "joint", "depth_color.png"),
        ("depth to image", "depth_to_image", "rgb.png"),
    ]
    if relight_preset is not None:
        columns.append((f"relit: {relight_preset}", f"relight_{relight_preset}", "rgb.png"))
    return columns


def render_overview(record: dict[str, Any], root: Path) -> Image.Image:
    """The overview sheet of the demo whose record is `record` and whose files are under `root`."""
    presets = record["relight_presets"]
    columns = _columns(presets[0] if presets else None)
    folders = {(run["portrait"], run["task"]): run["folders"][0] for run in record["tasks"]}
    rows = []
    for portrait in record["portraits"]:
        paths = [
            root / (portrait[file] if not task else f"{folders[portrait['name'], task]}/{file}")
            for _, task, file in columns
        ]
        rows.append([Image.open(path).convert("RGB") for path in paths])
    side = max(tile.width for row in rows for tile in row)
    width = len(columns) * side + (len(columns) - 1) * GAP
    height = CAPTION_HEIGHT + len(rows) * side + (len(rows) - 1) * GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for column, (caption, _, _) in enumerate(columns):
        left = column * (side + GAP)
        draw.text((left + side / 2, CAPTION_HEIGHT / 2), caption, fill=TEXT, font=font, anchor="mm")
        for row, tiles in enumerate(rows):
            tile = tiles[column]
            if tile.width != side:
                tile = tile.resize((side, side), Image.Resampling.LANCZOS)
            sheet.paste(tile, (left, CAPTION_HEIGHT + row * (side + GAP)))
    return sheet


def write_overview(record: dict[str, Any], root: Path) -> Path:
    path = root / OVERVIEW_FILE
    render_overview(record, root).save(path)
    return path
