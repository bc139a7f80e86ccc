"""Issue 20, item 9: what a resumed run leaves behind.

* A ``--skip-existing`` resume used to append ``skipped`` lines with ``shape`` and
  ``top_channels`` null; the last line per (key, layer) wins, so those photos' final records
  became stubs. Now the skipped line repeats the finished record.
* A photo replaced under the same name was skipped with stale results: the summary records the
  photo's size and modification time, and a changed photo is redone, saying why.
* A merged atlas folder had no ``atlas-state.json`` although the manual lists it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.output.resume import changed_photo, photo_fingerprint

BASE = ["--model", "tinymodels:tiny_features", "--weights", "none", "--layer", "0,3", "--size", "16", "--workers", "1"]
REPORT_FIELDS = ("shape", "top_channels", "model", "weights", "layer_index", "layer_type", "files",
                 "top_channel_files", "output", "input")


def export(inputs: Path, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["export", str(inputs), *BASE, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result.stderr


def photos(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(9)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def final_records(out: Path) -> dict[tuple[str, str], dict]:
    """The manifest as its readers see it: the last line per (key, layer)."""
    records = {}
    for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records[(record["key"], record["layer"])] = record
    return records


def test_a_skipped_photo_keeps_its_finished_record(tmp_path: Path) -> None:
    inputs, out = photos(tmp_path / "in"), tmp_path / "out"
    export(inputs, out, "--cam", "gradcam")
    first = final_records(out)
    assert len(first) == 6 and {r["status"] for r in first.values()} == {"ok"}
    assert "0 done, 3 skipped, 0 failed" in export(inputs, out, "--cam", "gradcam", "--skip-existing")
    last = final_records(out)
    assert {r["status"] for r in last.values()} == {"skipped"}
    for key, record in last.items():
        ok = first[key]
        assert record["shape"] is not None and record["top_channels"]  # not a stub
        for name in REPORT_FIELDS:
            assert record[name] == ok[name], (key, name)
        assert [{k: c[k] for k in ("method", "target", "rank", "label", "file")} for c in record["cams"]] == \
               [{k: c[k] for k in ("method", "target", "rank", "label", "file")} for c in ok["cams"]]
        assert record["cams"][0]["logit"] == ok["cams"][0]["logit"]
    # the report built from the manifest still lists every result
    assert (out / "index.html").read_text(encoding="utf-8").count("features.3") >= 3


def test_a_photo_replaced_under_the_same_name_is_redone(tmp_path: Path) -> None:
    inputs, out = photos(tmp_path / "in"), tmp_path / "out"
    export(inputs, out)
    summary_before = json.loads((out / "p1" / "features.0" / "summary.json").read_text(encoding="utf-8"))
    stat = os.stat(inputs / "p1.png")
    assert summary_before["source"] == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    # other pixels, another size: redone for its size
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (26, 24, 3), dtype=np.uint8)).save(inputs / "p1.png")
    assert (inputs / "p1.png").stat().st_size != stat.st_size
    stderr = export(inputs, out, "--skip-existing")
    assert "1 done (1 redone: the photo changed (size)), 2 skipped, 0 failed" in stderr
    record = final_records(out)[("p1", "features.0")]
    assert record["status"] == "ok" and record["reason"] == "redone: the photo changed (size)"
    summary_after = json.loads((out / "p1" / "features.0" / "summary.json").read_text(encoding="utf-8"))
    assert summary_after["image_size"] == [24, 26] and summary_after["channel_mean"] != summary_before["channel_mean"]
    assert "0 done, 3 skipped" in export(inputs, out, "--skip-existing")

    # the same bytes, a later modification time (a copy over it): redone for its time
    later = (inputs / "p2.png").stat()
    os.utime(inputs / "p2.png", ns=(later.st_atime_ns, later.st_mtime_ns + 5_000_000_000))
    stderr = export(inputs, out, "--skip-existing")
    assert "1 done (1 redone: the photo changed (modification time)), 2 skipped, 0 failed" in stderr


def test_fingerprint_comparison() -> None:
    now = {"size": 10, "mtime_ns": 5}
    assert changed_photo({"size": 10, "mtime_ns": 5}, now) is None
    assert changed_photo({"size": 11, "mtime_ns": 5}, now) == "the photo changed (size)"
    assert changed_photo({"size": 10, "mtime_ns": 6}, now) == "the photo changed (modification time)"
    assert "older featviz" in str(changed_photo(None, now))
    assert changed_photo({"size": 10, "mtime_ns": 5}, None) is None  # unreadable now: the read reports it
    assert photo_fingerprint("/nonexistent/featviz/photo.png") is None


def test_a_merged_atlas_folder_has_its_state(tmp_path: Path) -> None:
    inputs = photos(tmp_path / "in", 4)
    runner = CliRunner()
    args = ["--model", "tinymodels:tiny_features", "--weights", "none", "--resize", "20", "--crop", "16",
            "--layer", "0", "--top", "2", "-q"]
    shards = [tmp_path / f"shard{i}" for i in (1, 2)]
    for i, folder in enumerate(shards, 1):
        result = runner.invoke(main, ["atlas", str(inputs), "--out", str(folder), "--shard", f"{i}/2", *args])
        assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    result = runner.invoke(main, ["atlas", "--merge", *map(str, shards), "--out", str(merged), "-q"])
    assert result.exit_code == 0, result.output
    state = json.loads((merged / "atlas-state.json").read_text(encoding="utf-8"))
    parts = [json.loads((folder / "atlas-state.json").read_text(encoding="utf-8")) for folder in shards]
    assert state["complete"] is True and state["shard"] == [1, 1]
    assert state["done"] == sum(p["done"] for p in parts) == 4
    # the merged state merges again on its own, to the same atlas
    again = tmp_path / "again"
    result = runner.invoke(main, ["atlas", "--merge", str(merged), "--out", str(again), "-q"])
    assert result.exit_code == 0, result.output
    assert (again / "features.0" / "atlas.json").read_bytes() == (merged / "features.0" / "atlas.json").read_bytes()
