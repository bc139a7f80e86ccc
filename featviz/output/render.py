"""Tensors to pictures: channel tiles, grids, colormaps and heat-map overlays. Never touches disk.

Conventions: maps come in as float tensors, tiles as uint8 numpy arrays (C, S, S), pictures go
out as RGB (or, for a grey grid, L) PIL images. Colormaps are matplotlib names sampled once into a
256-entry lookup table, so pyplot is never imported and no window can open.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from featviz.errors import UsageError

if TYPE_CHECKING:

    from featviz.models.preprocess import CropBox


def upsample(activations: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> float32 (C, size, size), bilinear with ``align_corners=True``: the values of
    the seed's ``nn.UpsamplingBilinear2d(size=(size, size))``."""
    return F.interpolate(activations.float()[None], size=(size, size), mode="bilinear",
                         align_corners=True)[0]


def to_uint8(maps: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
             black: torch.Tensor | None = None) -> torch.Tensor:
    """float32 (..., H, W) -> uint8, rounded half up (scipy's old ``bytescale``, which the seed's
    ``imsave`` used). Works IN PLACE on ``maps`` (pass a tensor you own, such as a fresh
    upsampling): for 256 channels at 256x256 that saves several 64 MB temporaries per image.

    Without ``bounds`` each map is min-max scaled on its own (a constant map is black, and so is
    every map where the boolean ``black`` (...) is set). With ``bounds`` = (low, high),
    broadcastable to ``maps``, values are clipped to [low, high] and scaled from there: one scale
    for a whole layer or image.
    """
    if bounds is None:
        low = maps.amin(dim=(-2, -1), keepdim=True)
        span = maps.amax(dim=(-2, -1), keepdim=True) - low
        maps.sub_(low).div_(torch.where(span > 0, span, torch.ones_like(span)))  # only 0 is guarded: 1e-14 spans 0..255
        blank = span <= 0
        if black is not None:
            blank = blank | black[..., None, None]
        if bool(blank.any()):  # rare; filling every map anyway cost a pass over all the pixels
            maps.masked_fill_(blank, 0.0)
    else:
        low, high = (b.to(maps.device, torch.float32) for b in bounds)
        span = high - low
        maps.clamp_(min=low, max=high).sub_(low).div_(torch.where(span > 0, span, torch.ones_like(span))).mul_(span > 0)
    return maps.mul_(255.0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def percentile_bounds(values: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) = the (100 - P)-th and P-th percentiles of ``values`` over its last dimension,
    so one hot pixel cannot set the scale. ``values``: float (..., M).

    A rank, not an interpolation: high is the k-th smallest value with k = round(P/100 * M)
    clamped to 1..M (rounded, where the textbook nearest-rank method takes the ceiling), low the
    (M + 1 - k)-th smallest, so the two are symmetric."""
    count = values.shape[-1]
    high_rank = max(1, min(count, round(percentile / 100 * count)))
    low_rank = max(1, min(count, count + 1 - high_rank))
    low = values.float().kthvalue(low_rank, dim=-1).values
    high = values.float().kthvalue(high_rank, dim=-1).values
    return low, high


def channel_tiles(activations: torch.Tensor, size: int, channels: Sequence[int] | None = None,
                  bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """activations (C, H, W) -> uint8 (K, size, size) numpy, one tile per selected channel.

    ``bounds``: see :func:`to_uint8`; per-channel bounds are (C,) and follow the selection.
    The work is done on the activations' device; only the final bytes move to the CPU.
    """
    index = None if channels is None else torch.as_tensor(list(channels), dtype=torch.long, device=activations.device)
    selected = activations if index is None else activations[index]
    if selected.shape[0] == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    if bounds is not None:
        low, high = bounds
        if low.dim() == 1:  # one pair per channel
            if index is not None:
                low, high = low.to(index.device)[index], high.to(index.device)[index]
            low, high = low[:, None, None], high[:, None, None]
        bounds = (low, high)
    # constant before upsampling: black (interpolation adds ulp-sized noise)
    flat = selected.flatten(1).amax(dim=1) == selected.flatten(1).amin(dim=1)
    return to_uint8(upsample(selected, size), bounds, black=flat).cpu().numpy()


#: Where a colour grid marks NaN and infinite activations (magenta: in no common colormap).
NONFINITE_COLOUR = (255, 0, 255)


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a (256, 3) uint8 lookup table."""
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=4)
        raise UsageError(
            f"unknown colormap {name!r}",
            hint=("did you mean " + ", ".join(close) + "?") if close
            else "use a matplotlib colormap name such as gray, viridis or jet",
        ) from None
    table = cmap(np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(table * 255).astype(np.uint8)


def is_gray(cmap: str) -> bool:
    """Whether the colormap maps v to (v, v, v), so a picture can be stored as one channel."""
    lut = colormap_lut(cmap)
    return bool(np.array_equal(lut[:, 0], np.arange(256)) and (lut == lut[:, :1]).all())


def colorize(gray: np.ndarray, cmap: str) -> np.ndarray:
    """uint8 (...) -> uint8 (..., 3) through the colormap's lookup table. ``np.take`` along the
    table's rows gives the same array as ``lut[gray]`` about 3x faster (measured 7 ms against
    26 ms for a 1411x1411 map): every heat overlay and colour grid goes through here."""
    coloured: np.ndarray = np.take(colormap_lut(cmap), gray, axis=0)
    return coloured


def grid_columns(count: int) -> int:
    """ceil(sqrt(C)) columns, as the seed lays out its subplots."""
    return max(1, math.ceil(math.sqrt(count)))


def grid_pixels(tiles: np.ndarray, cmap: str = "gray", padding: int = 2, pad_value: int = 255,
                columns: int | None = None) -> np.ndarray:
    """uint8 tiles (K, S, S) -> the grid's pixels: ceil(sqrt(K)) columns of full-size tiles.

    The layout is torchvision's ``make_grid`` (``padding`` pixels around every tile, filled with
    ``pad_value``); a grey colormap gives (H, W) grey pixels, any other (H, W, 3) RGB.
    """
    count, size = tiles.shape[0], tiles.shape[-1]
    if count == 0:
        raise UsageError("no channel is selected for the grid", hint="check --channels / --top-k")
    columns = min(columns or grid_columns(count), count)
    rows = math.ceil(count / columns)
    step = size + padding
    pixels = tiles if is_gray(cmap) else colorize(tiles, cmap)  # (K, S, S) or (K, S, S, 3)
    # make_grid's layout written straight into one uint8 array: no float copies, no 3x expansion
    # of grey tiles (the grid is the largest picture featviz encodes).
    grid = np.full((rows * step + padding, columns * step + padding, *pixels.shape[3:]), pad_value, dtype=np.uint8)
    for i in range(count):
        y, x = divmod(i, columns)
        grid[y * step + padding:y * step + padding + size, x * step + padding:x * step + padding + size] = pixels[i]
    return grid


def grid_image(tiles: np.ndarray, cmap: str = "gray", padding: int = 2, pad_value: int = 255,
               labels: Sequence[str] | None = None, columns: int | None = None) -> Image.Image:
    """:func:`grid_pixels` as a PIL image (8-bit L when grey, else RGB), channel numbers drawn in
    the tiles' corners when ``labels`` are given."""
    picture = Image.fromarray(grid_pixels(tiles, cmap, padding, pad_value, columns))
    if labels:
        columns = min(columns or grid_columns(tiles.shape[0]), tiles.shape[0])
        _draw_labels(picture, labels, columns, tiles.shape[-1], padding)
    return picture


def _draw_labels(picture: Image.Image, labels: Sequence[str], columns: int, size: int, padding: int) -> None:
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


class OverlayBase:
    """What every heat overlay of one photo starts from: the photo's pixels (uint8 (H, W, 3))
    and the photo dimmed by ``dim`` (the same shape; what shows outside the crop box). A result
    draws two or three overlays of its photo (spatial, channel, each ``--cam`` map); building
    this once and passing it to :func:`heat_overlay` saves a full-photo table look-up per
    overlay (14 ms for a 1411x1411 photo), with the same pixels."""

    def __init__(self, photo: Image.Image, dim: float = 0.35) -> None:
        self.size = photo.size
        self.dim = dim
        self.base: np.ndarray = np.asarray(photo if photo.mode == "RGB" else photo.convert("RGB"))
        self.dimmed: np.ndarray = _blend_tables(0.5, dim)[0][self.base]


def heat_overlay(photo: Image.Image, heat: torch.Tensor, box: CropBox, cmap: str = "jet",
                 alpha: float = 0.5, dim: float = 0.35, mode: str = "bilinear",
                 prepared: OverlayBase | None = None) -> Image.Image:
    """Blend a heat map over the original photo where the network saw it.

    ``heat``: float (h, w) in [0, 1], the map over the network's input. It is stretched
    (bilinear, ``align_corners=False``: each cell covers its own area) onto ``box``, the part of
    the photo that resize and crop kept; there the photo is blended with the colormapped heat,
    elsewhere it is dimmed by ``dim`` so the eye sees what the network did not. ``mode``
    ``"nearest"`` keeps each cell a flat block instead (a vision transformer's patches).
    ``prepared``: :class:`OverlayBase` of this photo and ``dim``, shared by the overlays of one
    photo (the same pixels as without it). Returns an RGB image of the photo's own size.
    """
    width, height = photo.size
    left, top = math.floor(box.left), math.floor(box.top)
    right, bottom = math.ceil(box.right), math.ceil(box.bottom)
    box_w, box_h = max(1, right - left), max(1, bottom - top)
    # Sample the heat map at the centre of every photo pixel inside the box.
    # Visible part of the box, in photo and in box coordinates.
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(right, width), min(bottom, height)
    outside, inside = _blend_tables(alpha, dim)
    if prepared is not None and prepared.size == photo.size and prepared.dim == dim:
        base, out = prepared.base, prepared.dimmed.copy()  # dimmed everywhere; the box is drawn over
        if not (x1 > x0 and y1 > y0):
            return Image.fromarray(out)
    else:
        base = np.asarray(photo if photo.mode == "RGB" else photo.convert("RGB"))
        if not (x1 > x0 and y1 > y0):
            return Image.fromarray(outside[base])
        out = np.empty_like(base)
        out[:y0] = outside[base[:y0]]  # dimmed around the box (these strips may be empty)
        out[y1:] = outside[base[y1:]]
        out[y0:y1, :x0] = outside[base[y0:y1, :x0]]
        out[y0:y1, x1:] = outside[base[y0:y1, x1:]]
    if mode == "nearest":
        stretched = F.interpolate(heat.float()[None, None], size=(box_h, box_w), mode="nearest-exact")
    else:
        stretched = F.interpolate(heat.float()[None, None], size=(box_h, box_w), mode="bilinear", align_corners=False)
    stretched = stretched[0, 0, y0 - top:y1 - top, x0 - left:x1 - left]
    heat_bytes = (stretched.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    out[y0:y1, x0:x1] = _blend(base[y0:y1, x0:x1], colorize(heat_bytes, cmap), alpha, inside)
    return Image.fromarray(out)


def _blend(photo: np.ndarray, colour: np.ndarray, alpha: float, inside: np.ndarray) -> np.ndarray:
    """round(photo * (1 - alpha) + colour * alpha) in uint8. For the default alpha 0.5 that is
    exactly (photo + colour + 1) >> 1, which runs several times faster than the table look-up
    with two index arrays (an overlay is blended twice per result)."""
    if alpha != 0.5:
        blended: np.ndarray = inside[photo, colour]
        return blended
    mixed = photo.astype(np.uint16)
    mixed += colour
    mixed += 1
    mixed >>= 1
    return mixed


@lru_cache(maxsize=8)
def _blend_tables(alpha: float, dim: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 lookup tables for the overlay: outside[a] = round(a * dim) and
    inside[a, c] = round(a * (1 - alpha) + c * alpha), computed once in float32, so blending a
    photo costs two table look-ups per byte instead of float arithmetic on the whole photo."""
    a = np.arange(256, dtype=np.float32)
    outside = (a * np.float32(dim) + np.float32(0.5)).astype(np.uint8)
    inside = (a[:, None] * np.float32(1 - alpha) + a[None, :] * np.float32(alpha) + np.float32(0.5)).astype(np.uint8)
    return outside, inside


def side_by_side_grids(left: torch.Tensor, right: torch.Tensor, size: int, gap: int = 16,
                       titles: tuple[str, str] = ("before the gate", "after the gate")) -> Image.Image:
    """Two (K, H, W) stacks as two grey grids side by side, on ONE shared scale.

    Per-channel scaling would hide exactly what a channel gate does (multiply a whole channel by
    a number), so both stacks are min-max scaled together: a channel the gate turned down is
    darker on the right.

    The titles are sized to the whole picture (a 40th of its width, at least 12 px), so they
    stay readable when a wide picture (8,000 px for 256 channels) is scaled to fit a screen.
    """
    both = torch.stack([upsample(left, size), upsample(right, size)])  # (2, K, S, S)
    tiles = to_uint8(both, (both.amin(), both.amax())).cpu().numpy()
    grids = [grid_image(tiles[0]), grid_image(tiles[1])]
    width = grids[0].width + gap + grids[1].width
    font_size = max(12, width // 40)
    header = font_size + font_size // 2
    canvas = Image.new("L", (width, grids[0].height + header), 255)
    canvas.paste(grids[0], (0, header))
    canvas.paste(grids[1], (grids[0].width + gap, header))
    draw = ImageDraw.Draw(canvas)
    for x, title, room in ((2, titles[0], grids[0].width), (grids[0].width + gap + 2, titles[1], grids[1].width)):
        font = _fitting_font(draw, title, font_size, room - 4)
        draw.text((x, font_size // 4), title, fill=0, font=font)
    return canvas


def _fitting_font(draw: Any, text: str, size: int, room: float, smallest: int = 9) -> Any:
    """PIL's default font at ``size`` px, or smaller until ``text`` fits in ``room`` px."""
    font = ImageFont.load_default(size=size)
    while size > smallest and draw.textlength(text, font=font) > room:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def bar_chart(values: Sequence[float], highlight: Sequence[int], title: str = "channel weights",
              width: int = 640, height: int = 240) -> Image.Image:
    """A bar per channel (values in [0, 1]), the ``highlight`` channels in orange with their
    numbers above them. Drawn with PIL: fast enough to make one per image in a batch.

    The text is sized to the picture (a 32nd of its width: 20 px at the default 640), so the
    chart stays readable where the report shows it, about 430 px wide: a 900 px chart with
    11 px text was unreadable there."""
    count = max(1, len(values))
    size = max(11, round(width / 32))
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=size)
    small = ImageFont.load_default(size=max(10, round(size * 0.8)))
    margin_left = round(draw.textlength("0.5", font=font)) + size // 2 + 6
    margin_right, margin_top, margin_bottom = size // 2, round(size * 2.6), round(size * 1.5)
    plot_w, plot_h = width - margin_left - margin_right, height - margin_top - margin_bottom
    draw.text((margin_left, size // 4), title, fill=(0, 0, 0),
              font=_fitting_font(draw, title, size, width - margin_left - 4))
    base_y = margin_top + plot_h
    for tick in (0.0, 0.5, 1.0):
        y = base_y - tick * plot_h
        draw.line((margin_left - 4, y, margin_left + plot_w, y), fill=(225, 225, 225))
        draw.text((4, y - size * 0.6), f"{tick:.1f}", fill=(90, 90, 90), font=font)
    step = plot_w / count
    marked = set(highlight)
    for channel, value in enumerate(values):
        x0 = margin_left + channel * step
        x1 = max(x0 + 1, x0 + step * 0.8)
        top = base_y - max(0.0, min(1.0, float(value))) * plot_h
        draw.rectangle((x0, top, x1, base_y), fill=(230, 120, 20) if channel in marked else (70, 110, 170))
    for channel in highlight:
        if 0 <= channel < len(values):
            x = margin_left + (channel + 0.4) * step
            y = base_y - max(0.0, min(1.0, float(values[channel]))) * plot_h
            label = str(channel)
            box = draw.textbbox((0, 0), label, font=small)
            lift = (box[3] - box[1]) + 4
            draw.text((x - (box[2] - box[0]) / 2, max(margin_top - lift, y - lift)), label, fill=(160, 60, 0),
                      font=small)
    draw.line((margin_left, base_y, margin_left + plot_w, base_y), fill=(0, 0, 0))
    draw.text((margin_left, base_y + 4), f"channel 0 .. {count - 1}", fill=(90, 90, 90), font=small)
    return picture


def sweep_picture(panels: Sequence[tuple[Image.Image, str]], height: int = 224, per_row: int = 8,
                  title: str | None = None) -> Image.Image:
    """Panels (picture, caption) side by side, ``per_row`` to a row, each scaled to ``height``
    pixels high with its caption underneath."""
    font = ImageFont.load_default(size=13)
    caption_h, gap, header = 36, 8, 24 if title else 0
    scaled = [p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.BILINEAR)
              for p, _ in panels]
    rows = [scaled[i:i + per_row] for i in range(0, len(scaled), per_row)]
    width = max(sum(p.width for p in row) + gap * (len(row) + 1) for row in rows)
    total_h = header + len(rows) * (height + caption_h + gap) + gap
    canvas = Image.new("RGB", (width, total_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 6), title, fill=(0, 0, 0), font=font)
    index = 0
    for r, row in enumerate(rows):
        x, y = gap, header + gap + r * (height + caption_h + gap)
        for picture in row:
            canvas.paste(picture, (x, y))
            for line_no, line in enumerate(panels[index][1].split("\n")[:2]):
                draw.text((x, y + height + 3 + 15 * line_no), line, fill=(0, 0, 0), font=font)
            x += picture.width + gap
            index += 1
    return canvas
