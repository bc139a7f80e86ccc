"""featviz optimize --atlas: each channel's optimised image on the atlas page with
r = activation(optimised) / activation(best photo), measured here independently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import tinymodels
from featviz.cli.main import main
from featviz.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_optimised_images_join_the_atlas_with_r(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    out = tmp_path / "atlas"
    made = CliRunner().invoke(main, ["atlas", str(folder), *TINY, "--resize", "32", "--crop", "32", "--layer", "3",
                                     "--top", "2", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(main, ["optimize", *TINY, "--layer", "features.3", "--channels", "0-2", "--steps", "5",
                                       "--size", "32", "--atlas", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "features.3" / "atlas.json").read_text())
    torch.manual_seed(0)
    model = tinymodels.tiny_features().eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for c in range(3):
        entry = document["optimized"][str(c)]
        with Image.open(out / "features.3" / entry["file"]) as picture:
            pixels = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            peak = float(model.features[:4]((pixels - mean) / std)[0, c].max())
        best = document["channels"][c][0]["score"]
        assert entry["r"] == pytest.approx(peak / best, rel=0.05)  # the PNG rounds pixels to 1/255
    page = (out / "index.html").read_text()
    assert "optimized/0001.png" in page
    missing = CliRunner().invoke(main, ["optimize", *TINY, "--layer", "features.3", "--channels", "0", "--steps", "2",
                                        "--atlas", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "does not exist" in missing.output and "Hint:" in missing.output
