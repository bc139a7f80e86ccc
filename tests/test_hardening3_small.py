"""Issue 20, item 11 (the smaller ones done here): every error has its hint, empty --cam and
--target values are usage errors, a folder given as --weights and a dangling symbolic link are
named for what they are. Before: no Hint line, a silent default (exit 0), "does not exist" and
"no such file"."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featviz.atlas.accumulator import merge, new_atlas
from featviz.cli.main import main
from featviz.errors import UsageError

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none", "--layer", "0", "--size", "16", "--workers", "1",
        "-q"]


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "a.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return path


def show(photo: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["show", str(photo), "--out", str(out), *TINY, *extra])


@pytest.mark.parametrize(("extra", "error", "hint"), [
    (["--resize", "0"], "Error: --resize must be a positive number of pixels, got 0", "Hint: e.g. --resize 224"),
    (["--cam", ""], "Error: --cam names no method", "Hint: e.g. --cam gradcam"),
    (["--cam", " , "], "Error: --cam names no method", "Hint: e.g. --cam gradcam"),
    (["--cam", "gradcam", "--target", ""], "Error: --target names no class", "Hint: give a class index"),
])
def test_usage_errors_with_their_hints(photo: Path, tmp_path: Path, extra: list[str], error: str, hint: str) -> None:
    result = show(photo, tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    assert error in result.output and hint in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "a").exists()  # refused before any photo


def test_a_folder_given_as_weights_is_called_a_folder(photo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    result = CliRunner().invoke(main, ["show", str(photo), "--out", str(tmp_path / "out"), "--model",
                                       "tinymodels:tiny_features", "--weights", str(folder), "-q"])
    assert result.exit_code == 2, result.output
    assert f"Error: --weights {folder} is a folder, not a weights file" in result.output
    assert "Hint: give the state-dict file inside it" in result.output


def test_a_dangling_symbolic_link_is_reported_as_such(photo: Path, tmp_path: Path) -> None:
    link = photo.parent / "gone.png"
    os.symlink(tmp_path / "moved-away.png", link)
    result = show(link, tmp_path / "out")
    assert result.exit_code == 1
    assert f"{link}: a symbolic link to {tmp_path / 'moved-away.png'}, which does not exist" in result.output


SPATIAL_HEAD = """
import torch
from torch import nn

class Spatial(nn.Module):  # a classifier whose head was left a 1x1 convolution: logits (N, C, 1, 1)
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3), keepdim=True))

def spatial():
    return Spatial()
"""


@pytest.mark.parametrize("option", [["--cam", "gradcam"], ["--cam", "scorecam"], ["--predict"]])
def test_logits_of_the_wrong_shape_come_with_a_hint(photo: Path, tmp_path: Path, user_module,
                                                    option: list[str]) -> None:
    name = user_module(SPATIAL_HEAD)
    result = CliRunner().invoke(main, ["show", str(photo), "--out", str(tmp_path / "out"), "--model", f"{name}:spatial",
                                       "--weights", "none", "--layer", "features.1", "--size", "16", "-q", *option])
    assert result.exit_code == 2, result.output
    assert "(N, classes)" in result.output and "(1, 3, 1, 1)" in result.output
    assert "Hint: make the model's forward return (N, classes): flatten (N, C, 1, 1) with torch.flatten(x, 1)" \
        in result.output


def test_a_shard_given_twice_has_a_hint() -> None:
    states = [new_atlas({"top": 2, "by": "max"}, {"l": 2}, shard=(1, 2)) for _ in range(2)]
    for state in states:
        state.complete = True
    with pytest.raises(UsageError) as caught:
        merge(states, ["s1", "again"])
    assert "given twice" in str(caught.value) and caught.value.hint == "give each shard's folder once"


def test_photos_named_like_the_run_files_get_their_own_folders(tmp_path: Path) -> None:
    from featviz.output.layout import MANIFEST
    from featviz.output.report import REPORT

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    for name in (f"{REPORT}.png", f"{MANIFEST}.png", "plain.png"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(inputs / name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(inputs), "--out", str(out), *TINY[:-1]])
    assert result.exit_code == 0, result.output
    assert "3 done, 0 skipped, 0 failed" in result.stderr
    assert (out / REPORT).is_file() and (out / MANIFEST).is_file()  # the run's own files, untouched
    for key in (f"{REPORT}~2", f"{MANIFEST}~2", "plain"):
        assert (out / key / "features.0" / "summary.json").is_file(), key


def test_the_scores_table_of_a_fully_skipped_run_covers_the_skipped_photos(photo: Path, tmp_path: Path) -> None:
    args = ["export", str(photo.parent), "--out", str(tmp_path / "out"), *TINY[:-1], "--cam", "gradcam", "--cam-score",
            "--cam-score-steps", "4"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    table = first.stderr.split("faithfulness over 1 map(s), mean AUC per method:", 1)[1]
    again = CliRunner().invoke(main, [*args, "--skip-existing"])
    assert again.exit_code == 0, again.output
    assert "0 done, 1 skipped" in again.stderr and "over 0 map(s)" not in again.stderr
    assert "faithfulness over 1 map(s) (1 from photos skipped as already done), mean AUC per method:" + table \
        in again.stderr


def test_the_timm_offline_reason_is_cut_at_a_word() -> None:
    pytest.importorskip("timm")
    from featviz.models.timm_models import _missing_weights

    words = "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in " \
            "the cached files. Check your internet connection or see how to run the library in offline mode"
    error = _missing_weights("resnet18.a1_in1k", OSError(words))
    reason = str(error).split("downloaded (", 1)[1].split("); timm looks", 1)[0]
    assert reason.endswith("\u2026") and len(reason) <= 160
    assert words.startswith(reason[:-1]) and words[len(reason) - 1] == " "  # cut before a space, not in a word
