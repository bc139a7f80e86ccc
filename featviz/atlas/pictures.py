"""The atlas's pictures: a receptive-field patch of a photo with a channel's map overlaid, one
channel's top-N patches in a captioned row, and a whole layer as one patch per channel.
Never touches disk (:mod:`featviz.atlas.export` writes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from featviz.models.preprocess import CropBox
from featviz.output.render import heat_overlay

PATCH = 112  # side of a patch in channels/NNNN.png
ATLAS_PATCH = 64  # side of a patch in atlas.png
_CAPTION = 30
_PAD = 4
_BLANK = 200  # grey of an empty slot


def patch(photo: Image.Image, channel_map: torch.Tensor, crop: CropBox, box: Sequence[float], size: int = PATCH,
          cmap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """The part of ``photo`` inside ``box`` ([left, top, right, bottom], photo pixels) with the
    channel's map overlaid where the network saw the photo, fitted into a ``size`` square.

    ``channel_map``: float (H, W), the channel's activations on this photo; drawn as
    max(map, 0) / max(map) (a map with no positive value draws as 0). Returns uint8 (size, size, 3).
    """
    left, top = math.floor(box[0]), math.floor(box[1])
    right, bottom = max(left + 1, math.ceil(box[2])), max(top + 1, math.ceil(box[3]))
    region = photo.crop((left, top, right, bottom))
    peak = float(channel_map.max())
    heat = channel_map.float().clamp(min=0) / peak if peak > 0 else torch.zeros_like(channel_map, dtype=torch.float32)
    shifted = CropBox(crop.left - left, crop.top - top, crop.right - left, crop.bottom - top)
    overlaid = heat_overlay(region, heat, shifted, cmap=cmap, alpha=alpha, dim=1.0)
    return _fit(overlaid, size)


def _fit(image: Image.Image, size: int) -> np.ndarray:
    """``image`` scaled to fit a ``size`` square (aspect kept), centred on grey."""
    scale = size / max(image.width, image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), _BLANK, dtype=np.uint8)
    x, y = (size - resized.width) // 2, (size - resized.height) // 2
    canvas[y:y + resized.height, x:x + resized.width] = np.asarray(resized.convert("RGB"))
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else "\u2026" + text[-(limit - 1):]


def channel_strip(patches: Sequence[np.ndarray], captions: Sequence[tuple[str, str]], title: str,
                  slots: int) -> Image.Image:
    """One channel's top patches left to right (best first), each captioned with its score and
    source; ``slots`` places in all (empty ones stay grey when there were fewer images)."""
    size = PATCH
    width = _PAD + slots * (size + _PAD)
    height = 18 + size + _CAPTION + _PAD
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    draw.text((_PAD, 2), title, fill=(0, 0, 0), font=_font(12))
    small = _font(10)
    limit = max(8, size // 6)
    for slot in range(slots):
        x = _PAD + slot * (size + _PAD)
        if slot < len(patches):
            picture.paste(Image.fromarray(patches[slot]), (x, 18))
            score, source = captions[slot]
            draw.text((x, 18 + size + 2), _shorten(score, limit), fill=(0, 0, 0), font=small)
            draw.text((x, 18 + size + 15), _shorten(source, limit), fill=(80, 80, 80), font=small)
        else:
            draw.rectangle((x, 18, x + size - 1, 18 + size - 1), fill=(_BLANK,) * 3)
    return picture


def layer_atlas(patches: Sequence[np.ndarray | None], dead: Sequence[int], size: int = ATLAS_PATCH) -> Image.Image:
    """One patch per channel in channel order (ceil(sqrt(C)) columns), the channel number in a
    corner; a dead channel (never positive) or one without images is a grey tile, dead ones
    crossed out."""
    count = len(patches)
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    step = size + 2
    grid = np.full((rows * step + 2, columns * step + 2, 3), 255, dtype=np.uint8)
    for c, tile in enumerate(patches):
        y, x = divmod(c, columns)
        top, left = y * step + 2, x * step + 2
        grid[top:top + size, left:left + size] = _BLANK if tile is None else tile
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    font = _font(max(9, size // 6))
    dead_set = set(dead)
    for c in range(count):
        y, x = divmod(c, columns)
        top, left = y * step + 2, x * step + 2
        if c in dead_set:
            draw.line((left, top, left + size - 1, top + size - 1), fill=(180, 30, 30), width=2)
        label = draw.textbbox((left + 1, top + 1), str(c), font=font)
        draw.rectangle(label, fill=(0, 0, 0))
        draw.text((left + 1, top + 1), str(c), fill=(255, 255, 255), font=font)
    return picture
