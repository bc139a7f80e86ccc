"""Issue 20, item 4: an output folder inside the input folder. ``featviz export . --recursive
--out featviz-out`` run three times took its own earlier PNGs as photos (9 -> 44 -> 219 files).
Now nothing inside this run's --out, nor inside any folder holding a featviz manifest or atlas
state, is read as input, and stderr says so once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import oddimages
from featviz.cli.main import main
from featviz.inputs.discover import OUTPUT_MARKERS, find_images

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none", "--size", "8", "--quiet"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def test_three_runs_into_an_output_folder_inside_the_inputs_stay_the_same(
        tmp_path: Path, tests_on_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(2):
        oddimages.make_rgb_png(tmp_path / f"img{i}.png", size=(24, 20), seed=i)
    monkeypatch.chdir(tmp_path)
    counts, notes = [], []
    for _ in range(3):
        result = CliRunner().invoke(main, ["export", ".", "--recursive", "--out", "featviz-out",
                                           *TINY[:-1]], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        counts.append(sum(1 for p in tmp_path.rglob("*") if p.is_file()))
        notes.append(result.stderr.count("skipped featviz output folder(s)"))
        inputs = {json.loads(line)["input"] for line in Path("featviz-out/manifest.jsonl").read_text().splitlines()}
        assert inputs == {"img0.png", "img1.png"}
    assert counts[0] == counts[1] == counts[2]
    assert notes == [0, 1, 1]  # the first run had no output folder yet; then said once per run


def test_a_folder_holding_a_manifest_or_atlas_state_is_never_an_input(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    oddimages.make_rgb_png(photos / "keep.png", size=(16, 16), seed=0)
    for i, marker in enumerate(OUTPUT_MARKERS):  # an older run with another --out, and an atlas
        old = photos / f"old{i}"
        oddimages.make_rgb_png(old / "key" / "features.0" / "grid.png", size=(16, 16), seed=1)
        (old / marker).write_text("{}\n")
    found = find_images([str(photos)], recursive=True)
    assert [image.path.name for image in found.images] == ["keep.png"]
    assert sorted(Path(f).name for f in found.output_folders) == ["old0", "old1"]
    glob = find_images([str(photos / "**" / "*.png"), str(photos / "old0" / "key" / "features.0" / "grid.png")])
    assert [image.path.name for image in glob.images] == ["keep.png"] and glob.skipped_output == 3


def test_the_marker_names_are_the_writers_names() -> None:
    from featviz.atlas.export import STATE
    from featviz.output.layout import MANIFEST

    assert set(OUTPUT_MARKERS) == {MANIFEST, STATE}


def test_the_output_folder_itself_named_as_input_gives_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    oddimages.make_rgb_png(out / "a" / "grid.png", size=(16, 16), seed=0)
    found = find_images([str(out)], recursive=True, out=out)
    assert found.images == [] and found.output_folders == [str(out)]
