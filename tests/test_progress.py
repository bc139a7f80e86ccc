"""The progress bar (tqdm) stays on stderr: silent when stderr is not a terminal unless
--progress, one line per update in logs, nothing with --quiet, never in --json's stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import featviz.cli.progress
from featviz.cli.main import main

BASE = ["--model", "tinymodels:tiny_features", "--layer", "0", "--size", "8", "--workers", "1"]


def photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((24, 32, 3), 40 * i, dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def export(tmp_path: Path, *extra: str):
    result = CliRunner().invoke(main,
                                ["export", str(photos(tmp_path / "in", 4)), *BASE, "--out", str(tmp_path / "o"),
                                 *extra])
    assert result.exit_code == 0, result.output
    return result


def test_forced_progress_in_a_log_is_whole_lines(tmp_path: Path) -> None:
    result = export(tmp_path, "--progress", "--json")
    assert "\r" not in result.stderr
    bars = [line for line in result.stderr.splitlines() if line.startswith("featviz:")]
    assert bars and bars[-1].startswith("featviz: 100%") and "4/4" in bars[-1] and "image/s" in bars[-1]
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == ["ok"] * 4


def test_no_terminal_no_bar_and_quiet_wins(tmp_path: Path) -> None:
    result = export(tmp_path)
    assert "featviz:" not in result.stderr and result.stderr.startswith("4 done")
    (tmp_path / "q").mkdir()
    assert export(tmp_path / "q", "--quiet", "--progress").stderr == ""


def test_on_a_terminal_the_bar_redraws_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = featviz.cli.progress.progress_bar(3, enabled=True)
    for _ in range(3):
        bar.update()
    bar.close()
    text = terminal.getvalue()
    assert "\r" in text and "3/3" in text and text.endswith("\n")
