"""The atlas page (``OUT/index.html`` of ``featviz atlas``) in a real browser, as the report's
page is tested (tests/test_report.py): headless Chromium opens the file with ``#selftest``, the
page waits for every card's picture, clicks a channel, waits for its full photos, types a filter,
and writes what it saw into ``#fv-selftest``. Without Chromium this skips, unless
``FEATVIZ_REQUIRE_BROWSER=1`` makes it fail.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import test_report
from featviz.atlas.page import render_page
from featviz.cli.main import main

browser = test_report.browser  # the fixture that drives Chromium

pytestmark = pytest.mark.filterwarnings("error")

ODD = "ünï code #1 <script>&"


@pytest.fixture
def atlas_out(tmp_path: Path, tests_on_path: None) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i, name in enumerate(["a", "b", ODD]):
        Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 60, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    out = tmp_path / "atlas out"
    result = CliRunner().invoke(main,
                                ["atlas", str(photos), "--out", str(out), "--model", "tinymodels:tiny_dead_channel",
                                 "--weights", "none", "--resize", "40", "--crop", "32", "--layer", "4", "--top", "2",
                                 "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def selftest(run: Any, page: Path, hash_value: str) -> dict[str, Any]:
    dom, console = run(page.resolve().as_uri() + "#selftest=" + quote(hash_value), "--dump-dom")
    match = re.search(r'<pre id="fv-selftest"[^>]*>(.*?)</pre>', dom, re.S)
    assert match and match.group(1), f"the page did not finish its self-test:\n{dom[-2000:]}"
    assert console == [], console
    return json.loads(html.unescape(match.group(1)))


def test_page_shows_every_channel_and_a_channel_with_its_photos(browser: Any, atlas_out: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"  # photos and atlas moved together: relative links still work
    shutil.copytree(atlas_out.parent, moved)
    document = json.loads((moved / "atlas out" / "features.4" / "atlas.json").read_text(encoding="utf-8"))
    result = selftest(browser, moved / "atlas out" / "index.html", "5;dead")
    assert result["problems"] == []
    assert result["channels"] == 12 and result["cards"]["images"] == 12 and result["cards"]["broken"] == []
    assert result["dead_cards"] == len(document["statistics"]["dead"]) >= 1
    detail = result["detail"]
    assert detail["channel"] == 5 and detail["broken"] == [] and detail["photos"] == 2
    assert detail["images"] == 3  # the strip and two full photos
    assert "dead" in detail["text"]
    for left, _top, width, height in detail["boxes"]:  # the receptive field drawn over each photo
        assert left.endswith("%") and float(width[:-1]) > 0 and float(height[:-1]) > 0
    assert result["filtered"]["shown"] == document["statistics"]["dead"]


def test_range_filter_and_odd_names(browser: Any, atlas_out: Path) -> None:
    text = (atlas_out / "index.html").read_text(encoding="utf-8")
    assert "<script>&" not in text.split('id="fv-data">')[1].split("</script>")[0]
    result = selftest(browser, atlas_out / "index.html", "0;2-4, 9")
    assert result["problems"] == [] and result["filtered"]["shown"] == [2, 3, 4, 9]
    assert result["filtered"]["status"] == "4 of 12 channels"


def test_page_is_deterministic(atlas_out: Path) -> None:
    from featviz.atlas.page import page_data

    document = json.loads((atlas_out / "features.4" / "atlas.json").read_text(encoding="utf-8"))
    page = render_page(page_data(atlas_out, [("features.4", document)]))
    assert page == (atlas_out / "index.html").read_bytes()
    assert "connect-src" not in page.decode() and "default-src 'none'" in page.decode()


def test_optimised_images_load_beside_the_cards(browser: Any, atlas_out: Path) -> None:
    """``featviz optimize --atlas``: every card gets its optimised image (and r), and each loads."""
    added = CliRunner().invoke(main, ["optimize", "--atlas", str(atlas_out), "--model", "tinymodels:tiny_dead_channel",
                                      "--weights", "none", "--layer", "4", "--channels", "0-11", "--steps", "3",
                                      "--size", "32", "--out", str(atlas_out.parent / "opt")], catch_exceptions=False)
    assert added.exit_code == 0, added.output
    result = selftest(browser, atlas_out / "index.html", "0")
    assert result["problems"] == []
    cards = result["cards"]
    assert cards["broken"] == [] and cards["images"] == 12 + 12  # a channel strip and an optimised image each
