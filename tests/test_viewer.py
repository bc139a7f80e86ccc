"""Where to look: ``show`` ends with the report's path, ``export`` names it in its last line, and
``--open`` opens the report, or says in one line why it could not (no display, a failing opener)
without the opener's own noise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import featviz.cli.viewer
from featviz.cli.main import main

TINY = ["--model", "tinymodels:tiny_features", "--layer", "0", "--size", "8", "-q"]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def fake_opener(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int) -> Path:
    """An opener that records what it was asked to open, chatters on both streams, exits ``code``."""
    log = tmp_path / "opened.txt"
    script = (f"import sys; open({str(log)!r}, 'a').write(sys.argv[1] + '\\n'); "
              f"print('opener chatter'); sys.stderr.write('gio: no method available\\n'); sys.exit({code})")
    monkeypatch.setattr(featviz.cli.viewer, "viewer_command", lambda: [sys.executable, "-c", script])
    monkeypatch.setenv("DISPLAY", ":0")
    return log


def test_show_prints_the_report_last_and_a_grid_first(tmp_path: Path, cat_photo: Path) -> None:
    out = tmp_path / "out"
    result = invoke("show", cat_photo, *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == str(out / "chelsea" / "features.0" / "grid.png")
    assert lines[-1] == str(out / "index.html") and (out / "index.html").is_file()
    assert lines.count(str(out / "index.html")) == 1


def test_show_json_names_the_report(tmp_path: Path, cat_photo: Path) -> None:
    out = tmp_path / "out"
    result = invoke("show", cat_photo, *TINY, "--out", out, "--json")
    assert json.loads(result.stdout)["report"] == str(out / "index.html")


def test_export_names_the_report_on_stderr_and_keeps_json_pure(tmp_path: Path, cat_photo: Path) -> None:
    out = tmp_path / "out"
    result = invoke("export", cat_photo, *TINY[:-1], "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == f"1 done, 0 skipped, 0 failed -> {out}; report: {out / 'index.html'}"
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == ["ok"]


def test_open_hands_the_report_to_the_viewer(tmp_path: Path, cat_photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_opener(monkeypatch, tmp_path, 0)
    out = tmp_path / "out"
    assert invoke("show", cat_photo, *TINY, "--out", out).exit_code == 0
    assert not log.exists()  # only when asked
    result = invoke("show", cat_photo, *TINY, "--out", out, "--open")
    assert result.exit_code == 0, result.output
    assert log.read_text().splitlines() == [str(out / "index.html")]
    assert "chatter" not in result.output and "gio" not in result.output and result.stderr == ""


def test_open_without_a_display_says_so_in_one_line(tmp_path: Path, cat_photo: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_opener(monkeypatch, tmp_path, 0)
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    out = tmp_path / "out"
    result = invoke("show", cat_photo, *TINY, "--out", out, "--open")
    assert result.exit_code == 0
    assert not log.exists()
    assert result.stderr.splitlines() == [
        f"could not open the report: no display (neither DISPLAY nor WAYLAND_DISPLAY is set); "
        f"it is {(out / 'index.html').resolve()}"]


def test_open_with_a_failing_opener_hides_its_noise(tmp_path: Path, cat_photo: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_opener(monkeypatch, tmp_path, 4)
    out = tmp_path / "out"
    result = invoke("show", cat_photo, *TINY, "--out", out, "--open")
    assert result.exit_code == 0
    assert log.read_text().splitlines() == [str(out / "index.html")]
    assert "chatter" not in result.output and "gio" not in result.output
    assert len(result.stderr.splitlines()) == 1
    assert "could not open the report:" in result.stderr and "failed (exit status 4)" in result.stderr


def test_open_with_no_opener_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(featviz.cli.viewer, "viewer_command", lambda: [str(tmp_path / "no-such-opener")])
    monkeypatch.setenv("DISPLAY", ":0")
    assert featviz.cli.viewer.open_file(tmp_path / "x.html").startswith("no-such-opener could not be run")
