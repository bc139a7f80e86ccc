"""Pictures of a vision transformer's token statistics; pure producers (PIL images, no files).

* :func:`statistics_chart`: the ViT paper's Fig. 7 layout for each statistic of
  ``featviz/maps/tokenstats.py``: blocks on x, one dot per head (a head's colour is the same in
  every panel), the mean over heads as a line;
* :func:`artifact_picture`: the photo with the high-norm patches of ``featviz/maps/artifacts.py``
  outlined;
* :func:`pca_picture`: the PCA colours of ``featviz/maps/tokenpca.py`` on the patch grid, each
  patch a block of pixels, the background black where a foreground mask is given.

The chart draws with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``, no
pyplot: no global state, no GUI backend, thread-safe).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from featviz.capture.tokens import TokenLayout
from featviz.errors import FeatvizError

LABELS: dict[str, str] = {
    "mean_distance_px": "mean attention distance (px)",
    "entropy_nats": "attention entropy (nats)",
    "prefix_mass": "attention on prefix tokens",
}


def statistics_chart(values: Mapping[str, torch.Tensor | Sequence[Sequence[float]]], title: str = "",
                     dpi: int = 100) -> Image.Image:
    """One chart, a panel per statistic: values maps a statistic name to float (blocks, heads)
    (a photo's values or a run's means, e.g. ``StatisticsAverage.means()``). Returns RGB."""
    if not values:
        raise FeatvizError("no statistics to draw", hint="measure at least one statistic")
    arrays = {name: np.asarray(torch.as_tensor(v, dtype=torch.float64)) for name, v in values.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise FeatvizError(f"every statistic must be (blocks, heads), got shapes {sorted(shapes)}",
                           hint="pass the statistics of one model")
    blocks, heads = next(iter(shapes))
    figure = Figure(figsize=(3.2 * len(arrays), 2.8), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    colours = [f"C{h % 10}" for h in range(heads)]  # a head keeps its colour in every panel
    x = np.arange(blocks)
    for index, (name, array) in enumerate(arrays.items()):
        axes = figure.add_subplot(1, len(arrays), index + 1)
        for head in range(heads):
            axes.scatter(x, array[:, head], s=14, color=colours[head], label=f"head {head}" if index == 0 else None,
                         zorder=3)
        axes.plot(x, array.mean(1), color="0.4", linewidth=1, zorder=2)
        axes.set_xlabel("block")
        axes.set_ylabel(LABELS.get(name, name))
        axes.set_xticks(x)
        axes.grid(alpha=0.3)
    if heads <= 16:
        figure.legend(loc="outside right center", fontsize="small", frameon=False)
    if title:
        figure.suptitle(title)
    canvas.draw()  # type: ignore[no-untyped-call]  # matplotlib's Agg canvas is not annotated
    rgba = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    return Image.fromarray(np.asarray(rgba)[..., :3].copy())


def _patch_boxes(layout: TokenLayout, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Size of one patch in photo pixels (width, height) when the network input covers ``box``."""
    left, top, right, bottom = box
    rows, cols = layout.grid
    return (right - left) / cols, (bottom - top) / rows


def artifact_picture(photo: Image.Image, layout: TokenLayout, flags: torch.Tensor,
                     box: tuple[float, float, float, float] | None = None, colour: str = "#ff00ff",
                     width: int = 2) -> Image.Image:
    """The photo (RGB) with each flagged patch outlined.

    flags: bool (rows, cols) on the layout's grid; box: (left, top, right, bottom), the part of
    the photo in photo pixels that the network input covers (the crop; the whole photo if None).
    """
    if flags.shape != layout.grid or flags.dtype != torch.bool:
        raise FeatvizError(f"expected bool flags of shape {layout.grid}, got {tuple(flags.shape)} {flags.dtype}",
                           hint="pass one photo's ArtifactTokens.flags")
    picture = photo.convert("RGB")
    left, top = (box or (0.0, 0.0))[:2]
    step_x, step_y = _patch_boxes(layout, box or (0.0, 0.0, float(picture.width), float(picture.height)))
    draw = ImageDraw.Draw(picture)
    for row, col in torch.nonzero(flags).tolist():
        x0, y0 = left + col * step_x, top + row * step_y
        draw.rectangle((round(x0), round(y0), round(x0 + step_x) - 1, round(y0 + step_y) - 1), outline=colour,
                       width=width)
    return picture


def pca_picture(rgb: torch.Tensor, scale: int = 16, mask: torch.Tensor | None = None) -> Image.Image:
    """The PCA colours as a picture: rgb float (rows, cols, 3) in [0, 1] (``PcaBasis.to_rgb`` of
    one photo's patch tokens, reshaped to the grid); each patch becomes ``scale``×``scale`` pixels
    (nearest, so patch borders stay visible); patches where mask (bool (rows, cols)) is False are
    black."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FeatvizError(f"expected colours (rows, cols, 3), got {tuple(rgb.shape)}",
                           hint="reshape the patch colours to the patch grid")
    pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
    if mask is not None:
        pixels = pixels * mask[..., None].to(torch.uint8)
    image = Image.fromarray(pixels.numpy(), "RGB")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
