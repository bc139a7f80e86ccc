"""Tensors to pictures: channel tiles, grids, colormaps and heat-map overlays. Never touches disk.

Conventions: maps come in as float tensors, tiles as uint8 numpy arrays (C, S, S), pictures go
out as RGB (or, for a grey grid, L) PIL images. Colormaps are matplotlib names sampled once into a
256-entry lookup table, so pyplot is never imported and no window can open.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from featviz.errors import UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from featviz.models import CropBox


def upsample(activations: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> float32 (C, size, size), bilinear with ``align_corners=True``: the values of
    the seed's ``nn.UpsamplingBilinear2d(size=(size, size))``."""
    import torch.nn.functional as F

    return F.interpolate(activations.float()[None], size=(size, size), mode="bilinear",
                         align_corners=True)[0]


def to_uint8(maps: torch.Tensor) -> torch.Tensor:
    """(..., H, W) float -> uint8, each map min-max scaled to 0..255 and rounded half up
    (scipy's old ``bytescale``, which the seed's ``imsave`` used); a constant map is black."""
    import torch

    from featviz.attention import minmax

    dims = (-2, -1)
    scaled = minmax(maps.float(), dims=dims) * 255.0 + 0.5
    return scaled.floor_().clamp_(0, 255).to(torch.uint8)


def channel_tiles(activations: torch.Tensor, size: int, channels: Sequence[int] | None = None) -> np.ndarray:
    """activations (C, H, W) -> uint8 (K, size, size) numpy, one tile per selected channel.

    The work is done on the activations' device; only the final bytes move to the CPU.
    """
    import torch

    selected = activations if channels is None else activations[torch.as_tensor(list(channels), dtype=torch.long, device=activations.device)]
    if selected.shape[0] == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    return to_uint8(upsample(selected, size)).cpu().numpy()


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a (256, 3) uint8 lookup table."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=4)
        raise UsageError(
            f"unknown colormap {name!r}",
            hint=("did you mean " + ", ".join(close) + "?") if close else "use a matplotlib colormap name such as gray, viridis or jet",
        ) from None
    table = cmap(np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(table * 255).astype(np.uint8)


def is_gray(cmap: str) -> bool:
    """Whether the colormap maps v to (v, v, v), so a picture can be stored as one channel."""
    lut = colormap_lut(cmap)
    return bool(np.array_equal(lut[:, 0], np.arange(256)) and (lut == lut[:, :1]).all())


def colorize(gray: np.ndarray, cmap: str) -> np.ndarray:
    """uint8 (...) -> uint8 (..., 3) through the colormap's lookup table."""
    return colormap_lut(cmap)[gray]


def grid_columns(count: int) -> int:
    """ceil(sqrt(C)) columns, as the seed lays out its subplots."""
    return max(1, math.ceil(math.sqrt(count)))


def grid_image(tiles: np.ndarray, cmap: str = "gray", padding: int = 2, pad_value: int = 255,
               labels: Sequence[str] | None = None, columns: int | None = None) -> Image.Image:
    """uint8 tiles (K, S, S) -> one PIL image: ceil(sqrt(K)) columns of full-size tiles.

    The layout is torchvision's ``make_grid`` (``padding`` pixels around every tile, filled with
    ``pad_value``); a grey colormap gives an 8-bit L image, any other an RGB one.
    """
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    count, size = tiles.shape[0], tiles.shape[-1]
    if count == 0:
        raise UsageError("no channel is selected for the grid", hint="check --channels / --top-k")
    columns = columns or grid_columns(count)
    gray = is_gray(cmap)
    pixels = tiles[:, None] if gray else np.moveaxis(colorize(tiles, cmap), -1, 1)
    grid = make_grid(torch.from_numpy(np.ascontiguousarray(pixels)), nrow=columns, padding=padding,
                     pad_value=pad_value)
    array = grid[0].numpy() if gray else grid.permute(1, 2, 0).numpy()
    picture = Image.fromarray(np.ascontiguousarray(array), mode=None)
    if labels:
        _draw_labels(picture, labels, columns, size, padding)
    return picture


def _draw_labels(picture: Image.Image, labels: Sequence[str], columns: int, size: int, padding: int) -> None:
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, size // 12))
    white = 255 if picture.mode == "L" else (255, 255, 255)
    black = 0 if picture.mode == "L" else (0, 0, 0)
    for i, text in enumerate(labels):
        x = padding + (i % columns) * (size + padding) + 2
        y = padding + (i // columns) * (size + padding) + 2
        box = draw.textbbox((x, y), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=black)
        draw.text((x, y), text, fill=white, font=font)


def heat_overlay(photo: Image.Image, heat: torch.Tensor, box: CropBox, cmap: str = "jet",
                 alpha: float = 0.5, dim: float = 0.35) -> Image.Image:
    """Blend a heat map over the original photo where the network saw it.

    ``heat``: float (h, w) in [0, 1], the map over the network's input. It is stretched
    (bilinear, ``align_corners=False``: each cell covers its own area) onto ``box``, the part of
    the photo that resize and crop kept; there the photo is blended with the colormapped heat,
    elsewhere it is dimmed by ``dim`` so the eye sees what the network did not.
    Returns an RGB image of the photo's own size.
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    width, height = photo.size
    left, top = math.floor(box.left), math.floor(box.top)
    right, bottom = math.ceil(box.right), math.ceil(box.bottom)
    box_w, box_h = max(1, right - left), max(1, bottom - top)
    # Sample the heat map at the centre of every photo pixel inside the box.
    stretched = F.interpolate(heat.float()[None, None], size=(box_h, box_w), mode="bilinear",
                              align_corners=False)[0, 0]
    heat_bytes = (stretched.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    base = np.asarray(photo.convert("RGB"), dtype=np.float32)
    out = base * dim
    # Visible part of the box, in photo and in box coordinates.
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        colour = colorize(heat_bytes[y0 - top:y1 - top, x0 - left:x1 - left], cmap).astype(np.float32)
        out[y0:y1, x0:x1] = base[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
    return Image.fromarray((out + 0.5).astype(np.uint8), mode=None)


def side_by_side_grids(left: torch.Tensor, right: torch.Tensor, size: int, gap: int = 16,
                       titles: tuple[str, str] = ("before the gate", "after the gate")) -> Image.Image:
    """Two (K, H, W) stacks as two grey grids side by side, on ONE shared scale.

    Per-channel scaling would hide exactly what a channel gate does (multiply a whole channel by
    a number), so both stacks are min-max scaled together: a channel the gate turned down is
    darker on the right.
    """
    import torch
    from PIL import Image, ImageDraw, ImageFont

    both = torch.stack([upsample(left, size), upsample(right, size)])  # (2, K, S, S)
    low, high = both.amin(), both.amax()
    scaled = ((both - low) / (high - low).clamp_min(1e-12) * (high > low) * 255 + 0.5).floor()
    tiles = scaled.clamp(0, 255).to(torch.uint8).cpu().numpy()
    grids = [grid_image(tiles[0]), grid_image(tiles[1])]
    header = max(14, size // 10)
    width = grids[0].width + gap + grids[1].width
    canvas = Image.new("L", (width, grids[0].height + header), 255)
    canvas.paste(grids[0], (0, header))
    canvas.paste(grids[1], (grids[0].width + gap, header))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, header - 4))
    draw.text((2, 1), titles[0], fill=0, font=font)
    draw.text((grids[0].width + gap + 2, 1), titles[1], fill=0, font=font)
    return canvas
