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

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none"]


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
    # Lucid's set, as when this test was written: with the 32 px default (jitter only) and 5 steps
    # the tiny random model's r is about 0.035, where the PNG's 1/255 rounding moves it by 5.5 %
    result = CliRunner().invoke(main, ["optimize", *TINY, "--layer", "features.3", "--channels", "0-2", "--steps", "5",
                                       "--transforms", "standard",
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


def photos(folder: Path, count: int = 4) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def independent_r(out: Path, channel: int) -> tuple[float, float]:
    """(r recorded, r measured here from the PNG and the atlas's best score, by the atlas's max)."""
    document = json.loads((out / "features.3" / "atlas.json").read_text())
    entry = document["optimized"][str(channel)]
    with Image.open(out / "features.3" / entry["file"]) as picture:
        pixels = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    model = tinymodels.tiny_features().eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        peak = float(model.features[:4]((pixels - mean) / std)[0, channel].max())
    return entry["r"], peak / document["channels"][channel][0]["score"]


ATLAS = [*TINY, "--resize", "32", "--crop", "32", "--layer", "3", "--top", "2", "--quiet"]


def test_atlas_optimize_puts_the_images_on_the_page_in_one_command(tmp_path: Path) -> None:
    folder = photos(tmp_path / "in")
    out = tmp_path / "atlas"
    result = CliRunner().invoke(main, ["atlas", str(folder), *ATLAS, "--out", str(out), "--optimize",
                                       "--optimize-channels", "0-2", "--optimize-steps", "5", "--optimize-transforms",
                                       "jitter"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "features.3" / "atlas.json").read_text())
    assert sorted(document["optimized"]) == ["0", "1", "2"]
    with Image.open(out / "features.3" / "optimized" / "0000.png") as picture:
        assert picture.size == (32, 32)  # the atlas's crop is the default size
    for c in range(3):
        recorded, measured = independent_r(out, c)
        assert recorded == pytest.approx(measured, rel=0.05, abs=0.005)  # the PNG rounds pixels to 1/255
    assert "optimized/0002.png" in (out / "index.html").read_text()
    settings = json.loads((out / "features.3" / "optimize.json").read_text())["settings"]
    assert settings["steps"] == 5 and settings["size"] == 32 and settings["seed"] == 0
    assert settings["transforms"] and settings["jitter_only"]


def test_atlas_optimize_defaults_to_every_channel_and_survives_resume(tmp_path: Path) -> None:
    folder = photos(tmp_path / "in")
    out = tmp_path / "atlas"
    args = ["atlas", str(folder), *ATLAS, "--out", str(out), "--optimize", "--optimize-steps", "2"]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    channels = len(json.loads((out / "features.3" / "atlas.json").read_text())["channels"])
    pictures = sorted(p.name for p in (out / "features.3" / "optimized").glob("0*.png"))
    assert pictures == [f"{c:04d}.png" for c in range(channels)]
    again = CliRunner().invoke(main, [*args, "--resume"], catch_exceptions=False)  # a finished run: write again
    assert again.exit_code == 0, again.output
    assert len(json.loads((out / "features.3" / "atlas.json").read_text())["optimized"]) == channels


def test_atlas_optimize_on_merged_shards_and_refused_on_a_shard(tmp_path: Path) -> None:
    folder = photos(tmp_path / "in")
    shards = []
    for i in (1, 2):
        shard = tmp_path / f"shard{i}"
        refused = CliRunner().invoke(main, ["atlas", str(folder), *ATLAS, "--out", str(shard), "--shard", f"{i}/2",
                                            "--optimize"])
        assert refused.exit_code == 2 and "--merge" in refused.output and "Hint:" in refused.output
        assert not shard.exists()
        made = CliRunner().invoke(main, ["atlas", str(folder), *ATLAS, "--out", str(shard), "--shard", f"{i}/2"])
        assert made.exit_code == 0, made.output
        shards.append(str(shard))
    out = tmp_path / "merged"
    refused = CliRunner().invoke(main, ["atlas", "--merge", *shards, "--out", str(out), "--optimize",
                                        "--optimize-steps", "0"])
    assert refused.exit_code == 2 and "at least one step" in refused.output and not out.exists()
    merged = CliRunner().invoke(main, ["atlas", "--merge", *shards, "--out", str(out), "--optimize",
                                       "--optimize-channels", "1", "--optimize-steps", "3", "--quiet"],
                                catch_exceptions=False)
    assert merged.exit_code == 0, merged.output
    recorded, measured = independent_r(out, 1)
    assert recorded == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize(("extra", "words"), [
    (["--optimize-steps", "0"], "at least one step"),
    (["--optimize-channels", "0,99"], "channel 99 is out of range"),
    (["--optimize-size", "4"], "at least 8 pixels"),
])
def test_bad_optimize_options_are_refused_before_any_photo_is_read(tmp_path: Path, extra: list[str],
                                                                     words: str) -> None:
    folder = photos(tmp_path / "in")
    out = tmp_path / "atlas"
    result = CliRunner().invoke(main, ["atlas", str(folder), *ATLAS, "--out", str(out), "--optimize", *extra])
    assert result.exit_code == 2 and words in result.output and "Hint:" in result.output, result.output
    assert not out.exists()
