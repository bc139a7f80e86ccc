"""A run that would write very many files per photo says so first, with how to narrow it; the
count is the number of files the run then writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import featviz.output.estimate
from featviz.cli.main import main
from featviz.output.estimate import estimate_output
from featviz.output.options import RenderOptions

TINY = ["--model", "tinymodels:tiny_features", "--size", "8", "--workers", "1"]


def show(cat_photo: Path, out: Path, *extra: str):
    result = CliRunner().invoke(main, ["show", str(cat_photo), *TINY, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def written(out: Path) -> int:
    return sum(1 for p in (out / "chelsea").rglob("*") if p.is_file())


@pytest.mark.parametrize("extra", [["--layer", "all"], ["--layer", "all", "--top-k", "3", "--save-raw"],
                                   ["--layer", "0,3", "--channels", "0-4", "--max-channels", "2"]])
def test_the_estimate_is_the_number_of_files_written(cat_photo: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    monkeypatch.setattr(featviz.output.estimate, "WARN_FILES_PER_IMAGE", 10)
    out = tmp_path / "out"
    result = show(cat_photo, out, *extra)
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    files = written(out)
    assert f"about {files:,} files" in warning
    assert "--top-k" in warning and "--channels" in warning and "fewer layers" in warning


def test_no_warning_below_the_threshold_or_when_quiet(cat_photo: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert "warning:" not in show(cat_photo, tmp_path / "a", "--layer", "all").stderr  # 5 layers, 52 files
    monkeypatch.setattr(featviz.output.estimate, "WARN_FILES_PER_IMAGE", 10)
    assert show(cat_photo, tmp_path / "b", "--layer", "all", "--quiet").stderr == ""


def test_vgg16_all_layers_is_what_issue_14_counted() -> None:
    """VGG-16's feature stack: 31 layers with these channel counts wrote 10,106 files, 377 MB."""
    channels = [64] * 5 + [128] * 5 + [256] * 7 + [512] * 7 + [512] * 7
    estimate = estimate_output(channels, RenderOptions())
    assert estimate.files == 10_106 and estimate.too_many
    assert abs(estimate.bytes / 1e6 - 377) < 2
