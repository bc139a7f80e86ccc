"""Text in the pictures stays readable where it is looked at: the channel-weight chart at the
size the report shows it (about 430 px wide), se_reweight.png scaled to fit a 1000 px screen."""

from __future__ import annotations

import numpy as np
import torch

from featviz.output.render import bar_chart, side_by_side_grids

REPORT_WIDTH = 432  # report.html: a "wide" figure spans two 210 px columns and their 12 px gap
SCREEN_WIDTH = 1000


def ink_rows(pixels: np.ndarray, top: int, bottom: int, dark: int = 60) -> int:
    """Height in pixels of the dark (text) rows between ``top`` and ``bottom``: from the first
    row with dark pixels to the last. ``pixels``: uint8 (H, W) or (H, W, 3)."""
    grey = pixels if pixels.ndim == 2 else pixels.max(axis=2)  # black text: every channel dark
    rows = np.flatnonzero((grey[top:bottom] < dark).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def test_chart_title_is_readable_in_the_report() -> None:
    values = np.random.default_rng(0).random(64).tolist()
    chart = bar_chart(values, [int(c) for c in np.argsort(values)[::-1][:10]], "channel weights w (se) at features.0")
    pixels = np.asarray(chart)
    title = ink_rows(pixels, 0, chart.height // 5)
    assert title * REPORT_WIDTH / chart.width >= 9  # 9 px tall text after the report scales the chart


def test_se_reweight_captions_are_readable_when_scaled_to_fit() -> None:
    torch.manual_seed(0)
    before = torch.rand(64, 7, 7)
    picture = side_by_side_grids(before, before * 0.5, 128)  # two 8x8 grids of 128 px tiles: 2100 px wide
    assert picture.width > 2 * SCREEN_WIDTH
    pixels = np.asarray(picture)
    header = pixels.shape[0] - (8 * 130 + 2)  # the grids' height below the caption strip
    caption = ink_rows(pixels, 0, header)
    assert caption * SCREEN_WIDTH / picture.width >= 12
