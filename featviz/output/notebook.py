"""How results show themselves in Jupyter: small inline pictures, never files.

``featviz.visualize(...)[0]`` as the last line of a cell shows the grid and both overlays;
``featviz.visualize(...)`` (a :class:`Results` list) shows every result. The pictures are
downscaled thumbnails (the grid at most :data:`GRID_SIDE` pixels, overlays at most
:data:`OVERLAY_SIDE`) embedded as base64 PNG, so a notebook stays a few hundred kB per result
however large the full-resolution grid is (an 8276-pixel grid would be megabytes).
The full pictures are a method call away: ``result.grid()``, ``result.spatial_overlay()``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from PIL import Image

from featviz.output.layout import png_bytes

if TYPE_CHECKING:
    from featviz.output.result import LayerResult

GRID_SIDE = 512
OVERLAY_SIDE = 320
MAX_SHOWN = 24  # results drawn by a list's display; the rest are counted


def thumbnail(picture: Image.Image, side: int) -> Image.Image:
    """``picture`` scaled down (never up) to fit a ``side`` x ``side`` box, aspect kept; area
    averaging (Pillow's BOX filter), so thin features fade rather than alias."""
    copy = picture.copy()
    copy.thumbnail((side, side), Image.Resampling.BOX)
    return copy


def png_data_uri(picture: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture, 6)).decode("ascii")


def grid_png(result: LayerResult) -> bytes:
    """The grid, at most :data:`GRID_SIDE` pixels on its longer side, as PNG bytes."""
    return png_bytes(thumbnail(result.grid(), GRID_SIDE), 6)


def result_html(result: LayerResult) -> str:
    """One result: a line of facts, then the grid and both overlays side by side."""
    shape = "x".join(str(n) for n in result.activations.shape)
    facts = (f"<b>{html.escape(result.key)}</b> &middot; layer <code>{html.escape(result.layer.path)}</code> "
             f"({html.escape(result.layer.type_name)}, {shape}) &middot; {html.escape(result.model_name)}, "
             f"{html.escape(result.weights)} &middot; top channels {result.ranking[:5]}")
    figures = [(thumbnail(result.grid(), GRID_SIDE), f"grid ({len(result.grid_channels)} channels)"),
               (thumbnail(result.spatial_overlay(), OVERLAY_SIDE),
                f"spatial attention ({result.options.spatial_mode})"),
               (thumbnail(result.channel_overlay(), OVERLAY_SIDE),
                f"channel attention ({result.options.channel_mode})")]
    cells = "".join(
        f'<figure style="margin:0 12px 0 0"><img src="{png_data_uri(picture)}" width="{picture.width}" '
        f'height="{picture.height}" alt="{html.escape(caption)}"><figcaption style="font-size:12px">'
        f"{html.escape(caption)}</figcaption></figure>"
        for picture, caption in figures)
    return (f'<div class="featviz-result" style="margin-bottom:14px"><div style="margin-bottom:4px">{facts}</div>'
            f'<div style="display:flex;align-items:flex-start;flex-wrap:wrap">{cells}</div></div>')


def results_html(results: Iterable[LayerResult]) -> str:
    """Every result of a list (at most :data:`MAX_SHOWN`; the rest are counted)."""
    items = list(results)
    shown = "".join(result_html(r) for r in items[:MAX_SHOWN])
    more = len(items) - MAX_SHOWN
    note = f"<p>&hellip; and {more} more (index the list to show one)</p>" if more > 0 else ""
    return f"<div>{shown}{note}</div>" if items else "<p>no results</p>"


class Results(list["LayerResult"]):
    """A plain list of :class:`~featviz.output.result.LayerResult` that Jupyter displays as pictures.

    A built-in ``list`` cannot be given display hooks, so :func:`featviz.visualize` and
    :meth:`featviz.Visualizer.run` return this subclass; everything else is a list's.
    """

    def _repr_html_(self) -> str:
        return results_html(self)

    def __repr__(self) -> str:
        return f"Results({list.__repr__(self)})"


def short_repr(result: Any) -> str:
    """``LayerResult(key='chelsea', layer='features.0', activations=64x55x55, ...)``: the
    dataclass's own repr would print every tensor."""
    shape = "x".join(str(n) for n in result.activations.shape)
    return (f"LayerResult(key={result.key!r}, layer={result.layer.path!r}, activations={shape}, "
            f"model={result.model_name!r}, weights={result.weights!r})")
