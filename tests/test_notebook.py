"""In Jupyter, a result (and the list visualize returns) shows its pictures: checked through
IPython's own display formatter, which is what a notebook calls on a cell's last value."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from IPython.core.formatters import DisplayFormatter
from PIL import Image

import featviz
import featviz.output.notebook
from featviz.output.notebook import GRID_SIDE, MAX_SHOWN, OVERLAY_SIDE, Results

TINY = "tinymodels:tiny_features"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    photo = Path(__file__).resolve().parent.parent / "sample_images" / "chelsea.jpg"
    return featviz.visualize(photo, model=TINY, layers=[0, 3], size=200)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.float64)


def inline_images(markup: str) -> list[np.ndarray]:
    return [decode(base64.b64decode(b)) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', markup)]


def area_downscale(picture: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An independent small version: numpy block means over the picture, for comparison."""
    pixels = np.asarray(picture.convert("RGB")).astype(np.float64)
    h, w = pixels.shape[:2]
    rows = np.linspace(0, h, size[1] + 1).astype(int)
    cols = np.linspace(0, w, size[0] + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(pixels, rows[:-1], axis=0), cols[:-1], axis=1)
    return sums / (np.diff(rows)[:, None, None] * np.diff(cols)[None, :, None])


def test_a_result_shows_its_grid_and_overlays(results: Results) -> None:
    result = results[0]
    data, _ = DisplayFormatter().format(result)
    assert {"text/plain", "text/html", "image/png"} <= data.keys()
    grid = result.grid()
    assert max(grid.size) > GRID_SIDE  # 3x3 tiles of 200 px: the thumbnail is a real reduction
    png = decode(data["image/png"])
    assert max(png.shape[:2]) == GRID_SIDE
    assert abs(png.shape[1] / png.shape[0] - grid.width / grid.height) < 0.02
    assert np.abs(png - area_downscale(grid, (png.shape[1], png.shape[0]))).mean() < 6  # it is the grid
    pictures = inline_images(data["text/html"])
    assert len(pictures) == 3
    overlay = result.spatial_overlay()
    assert max(pictures[1].shape[:2]) <= OVERLAY_SIDE
    assert np.abs(pictures[1] - area_downscale(overlay, (pictures[1].shape[1], pictures[1].shape[0]))).mean() < 6
    assert np.abs(pictures[2] - area_downscale(result.channel_overlay(),
                                               (pictures[2].shape[1], pictures[2].shape[0]))).mean() < 6
    assert "features.0" in data["text/html"] and "spatial attention" in data["text/html"]
    assert len(data["text/plain"]) < 200 and "features.0" in data["text/plain"]  # no tensor dump


def test_the_list_visualize_returns_shows_every_result(results: Results) -> None:
    assert isinstance(results, Results) and isinstance(results, list) and len(results) == 2
    data, _ = DisplayFormatter().format(results)
    assert data["text/html"].count('class="featviz-result"') == 2
    assert len(inline_images(data["text/html"])) == 6
    assert "features.0" in data["text/html"] and "features.3" in data["text/html"]


def test_a_long_list_shows_the_first_results_and_counts_the_rest(results: Results,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_SHOWN == 24
    monkeypatch.setattr(featviz.output.notebook, "MAX_SHOWN", 3)
    many = Results([results[0]] * 5)
    markup = DisplayFormatter().format(many)[0]["text/html"]
    assert markup.count('class="featviz-result"') == 3 and "and 2 more" in markup
