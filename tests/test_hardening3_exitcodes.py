"""Issue 20, item 5: counts and exit codes that hid failures. An atlas merge whose photos could no
longer be read printed ``error:`` lines, then "0 failed" and exit 0; a glob that matched nothing
or a missing path on stdin exited 1 but reported "0 failed". Now every ``error:`` line is counted
in the summary and makes the exit code 1.
"""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner, Result

import oddimages
from featviz.cli.main import main

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none", "--size", "8"]
ATLAS = ["--model", "tinymodels:tiny_features", "--weights", "none", "--top", "2"]


def run(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [*map(str, args)], input=stdin, catch_exceptions=False)


def failed_count(stderr: str) -> int:
    return int(re.search(r"(\d+) failed", stderr).group(1))  # type: ignore[union-attr]


def test_export_counts_a_glob_that_matches_nothing(tmp_path: Path, tests_on_path: None) -> None:
    photo = oddimages.make_rgb_png(tmp_path / "a.png", size=(24, 20))
    result = run("export", photo, str(tmp_path / "nothing*.png"), "--out", tmp_path / "out", *TINY)
    assert result.exit_code == 1
    assert result.stderr.count("error:") == failed_count(result.stderr) == 1


def test_export_counts_a_missing_path_on_stdin(tmp_path: Path, tests_on_path: None) -> None:
    photo = oddimages.make_rgb_png(tmp_path / "a.png", size=(24, 20))
    result = run("export", "-", "--out", tmp_path / "out", *TINY, stdin=f"{photo}\n{tmp_path / 'gone.png'}\n")
    assert result.exit_code == 1
    assert result.stderr.count("error:") == failed_count(result.stderr) == 1


def test_atlas_counts_a_glob_that_matches_nothing(tmp_path: Path, tests_on_path: None) -> None:
    photo = oddimages.make_rgb_png(tmp_path / "a.png", size=(24, 20))
    result = run("atlas", photo, str(tmp_path / "nothing*.png"), "--out", tmp_path / "out", *ATLAS)
    assert result.exit_code == 1
    assert result.stderr.count("error:") == failed_count(result.stderr) == 1


def test_a_merge_whose_photos_are_gone_fails(tmp_path: Path, tests_on_path: None) -> None:
    photos = [oddimages.make_rgb_png(tmp_path / "in" / f"p{i}.png", size=(24, 20), seed=i) for i in range(2)]
    for i in (1, 2):
        assert run("atlas", tmp_path / "in", "--shard", f"{i}/2", "--out", tmp_path / f"s{i}", "--quiet",
                   *ATLAS).exit_code == 0
    for photo in photos:
        photo.unlink()
    merged = run("atlas", "--merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m")
    errors = merged.stderr.count("error:")
    assert errors >= 2  # each kept photo could not be read again
    assert merged.exit_code == 1
    assert "kept photo(s) unreadable for the pictures" in merged.stderr
    assert re.search(rf"{errors} kept photo\(s\) unreadable", merged.stderr)
