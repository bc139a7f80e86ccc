"""``export --skip-existing`` skips a photo only when its summary records the settings this run
would use (model, weights, layer, preprocessing, drawing options); otherwise it is redone and the
manifest line and the final stderr line say why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.output.settings import changed_settings

BASE = ["--model", "tinymodels:tiny_features", "--layer", "0", "--size", "16", "--workers", "1"]


def export(inputs: Path, out: Path, *extra: str):
    result = CliRunner().invoke(main, ["export", str(inputs), *BASE, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def photos(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def manifest_tail(out: Path, count: int) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[-count:]]


def grid(out: Path, name: str) -> np.ndarray:
    with Image.open(out / name / "features.0" / "grid.png") as picture:
        return np.asarray(picture.convert("RGB"))


def test_a_changed_colormap_is_redone_and_the_same_options_are_skipped(tmp_path: Path) -> None:
    inputs, out = photos(tmp_path / "in"), tmp_path / "out"
    export(inputs, out)
    grey = grid(out, "p0")
    assert (grey[..., 0] == grey[..., 1]).all()  # grey pictures

    changed = export(inputs, out, "--cmap", "viridis", "--skip-existing")
    assert "3 done (3 redone: --cmap changed (gray -> viridis)), 0 skipped, 0 failed" in changed.stderr
    records = manifest_tail(out, 3)
    assert {r["status"] for r in records} == {"ok"}
    assert {r["reason"] for r in records} == {"redone: --cmap changed (gray -> viridis)"}
    coloured = grid(out, "p0")
    assert not (coloured[..., 0] == coloured[..., 1]).all()  # the pictures changed
    summary = json.loads((out / "p0" / "features.0" / "summary.json").read_text(encoding="utf-8"))
    assert summary["options"]["drawing"]["cmap"] == "viridis" and summary["options"]["layer"] == "features.0"

    same = export(inputs, out, "--cmap", "viridis", "--skip-existing")
    assert "0 done, 3 skipped, 0 failed" in same.stderr
    assert {r["status"] for r in manifest_tail(out, 3)} == {"skipped"}
    assert (grid(out, "p0") == coloured).all()


def test_weights_and_preprocessing_count_too(tmp_path: Path) -> None:
    inputs, out = photos(tmp_path / "in", 1), tmp_path / "out"
    export(inputs, out, "--weights", "none", "--seed", "1")
    assert "--weights changed (as built (seed 1) -> as built (seed 2))" in \
        export(inputs, out, "--weights", "none", "--seed", "2", "--skip-existing").stderr
    assert "1 redone: --crop changed (224 -> 200)" in \
        export(inputs, out, "--weights", "none", "--seed", "2", "--crop", "200", "--skip-existing").stderr


def test_a_summary_without_options_is_redone(tmp_path: Path) -> None:
    inputs, out = photos(tmp_path / "in", 1), tmp_path / "out"
    export(inputs, out)
    path = out / "p0" / "features.0" / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    del summary["options"]
    path.write_text(json.dumps(summary), encoding="utf-8")
    result = export(inputs, out, "--skip-existing")
    assert "1 redone: its summary records no options (written by an older featviz)" in result.stderr


def test_several_changes_are_named_together() -> None:
    old = {"model": "m", "drawing": {"cmap": "gray", "size": 16}}
    assert changed_settings(old, {"model": "m", "drawing": {"cmap": "jet", "size": 8}}) == "--cmap, --size changed"
    assert changed_settings(old, old) is None
