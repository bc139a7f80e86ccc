"""Issue 20, item 12 (rest): the cost of ``--cam gradcam`` in an export.

What a class map adds to an export is one more heat overlay of the photo (at the photo's own
resolution) and its PNG; the gradient pass replaces the capture pass (docs/hardening-notes.md,
item 12, has the measurements). Every overlay of one photo used to dim the whole photo again
and colour its heat map through a slow fancy-index look-up; now the dimmed photo is built once
per result (:class:`featviz.output.render.OverlayBase`) and shared by the spatial, channel and
class-map overlays, and the colormap look-up uses ``np.take``. These tests hold the pixels: the
shared path gives exactly the pictures of the unshared one, and both equal a blend written out
here from the formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featviz.models.preprocess import CropBox
from featviz.output.render import OverlayBase, colorize, colormap_lut, heat_overlay

pytestmark = pytest.mark.filterwarnings("error")


def _photo(width: int = 37, height: int = 23) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("cmap", ["jet", "viridis", "gray"])
def test_colorize_is_the_lookup_table(cmap: str) -> None:
    gray = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    lut = colormap_lut(cmap)
    expected = np.array([[lut[v] for v in row] for row in gray.tolist()], dtype=np.uint8)
    assert np.array_equal(colorize(gray, cmap), expected)


@pytest.mark.parametrize("box", [CropBox(3.2, 2.0, 30.7, 20.5),  # inside the photo
                                 CropBox(-4.0, -3.0, 41.0, 26.0),  # larger than the photo (padding)
                                 CropBox(40.0, 30.0, 50.0, 40.0)])  # not on the photo at all
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_shared_base_gives_the_same_pixels(box: CropBox, mode: str) -> None:
    photo = _photo()
    heat = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    prepared = OverlayBase(photo)
    plain = np.asarray(heat_overlay(photo, heat, box, mode=mode))
    shared = np.asarray(heat_overlay(photo, heat, box, mode=mode, prepared=prepared))
    assert np.array_equal(plain, shared)
    again = np.asarray(heat_overlay(photo, heat.flip(0), box, mode=mode, prepared=prepared))
    assert np.array_equal(again, np.asarray(heat_overlay(photo, heat.flip(0), box, mode=mode)))
    assert np.array_equal(prepared.dimmed, np.floor(np.asarray(photo) * np.float32(0.35) + 0.5).astype(np.uint8))


def test_overlay_matches_the_formula_written_out() -> None:
    """Inside the box: round((photo + jet(heat)) / 2) (alpha 0.5); outside: round(photo * 0.35)."""
    photo = _photo(8, 6)
    box = CropBox(2.0, 1.0, 6.0, 5.0)  # whole pixels: the 4x4 heat lands one value per pixel
    heat = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 15
    out = np.asarray(heat_overlay(photo, heat, box, prepared=OverlayBase(photo))).astype(int)
    base = np.asarray(photo).astype(int)
    lut = colormap_lut("jet").astype(int)
    heat_bytes = np.floor(heat.numpy() * 255 + 0.5).astype(int)
    inside = (base[1:5, 2:6] + lut[heat_bytes] + 1) // 2
    assert np.array_equal(out[1:5, 2:6], inside)
    outside = np.floor(base * 0.35 + 0.5).astype(int)
    mask = np.ones((6, 8), bool)
    mask[1:5, 2:6] = False
    assert np.array_equal(out[mask], outside[mask])


def test_a_base_for_another_photo_or_dim_is_not_used() -> None:
    photo, other = _photo(), _photo(20, 20)
    heat = torch.rand(3, 3, generator=torch.Generator().manual_seed(2))
    box = CropBox(1.0, 1.0, 15.0, 15.0)
    assert np.array_equal(np.asarray(heat_overlay(photo, heat, box, prepared=OverlayBase(other))),
                          np.asarray(heat_overlay(photo, heat, box)))
    assert np.array_equal(np.asarray(heat_overlay(photo, heat, box, dim=0.5, prepared=OverlayBase(photo))),
                          np.asarray(heat_overlay(photo, heat, box, dim=0.5)))
