"""Issue 20, item 1: a file name that is not valid UTF-8 (``b"A\\xffbad.png"``) among good photos.

On main, export, show and atlas stopped the whole batch with ``UnicodeEncodeError: surrogates not
allowed`` while writing JSON. Now the photo is processed; its name is kept escaped (``\\xff``) in
every JSON text field, reversibly in ``input_b64`` (the raw bytes), and its folder is ``A%FFbad``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import oddimages
from featviz.cli.main import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores raw bytes")

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none", "--size", "8", "--quiet"]
BAD = b"A\xffbad.png"


def run(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [*map(str, args)], input=stdin, catch_exceptions=False)


def collection(folder: Path, extra: tuple[bytes, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate((b"good1.png", BAD, b"good2.png", *extra)):
        made = oddimages.make_rgb_png(folder / f"tmp{i}.png", size=(24, 20), seed=i)
        os.rename(os.fsencode(made), os.fsencode(folder) + b"/" + name)
    return folder


def strict_json(data: bytes) -> Any:
    """Valid UTF-8 (decoding raises otherwise), and JSON without bare NaN."""
    return json.loads(data.decode("utf-8"))


def manifest(out: Path) -> list[dict[str, Any]]:
    return [strict_json(line) for line in (out / "manifest.jsonl").read_bytes().splitlines()]


def test_export_processes_the_photo_and_keeps_its_name(tmp_path: Path, tests_on_path: None) -> None:
    photos, out = collection(tmp_path / "in"), tmp_path / "out"
    result = run("export", photos, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert [r["status"] for r in records] == ["ok"] * 3
    bad = next(r for r in records if "input_b64" in r)
    assert base64.b64decode(bad["input_b64"]) == os.fsencode(photos) + b"/" + BAD  # exact bytes back
    assert bad["input"] == str(photos) + "/A\\xffbad.png"  # readable, valid UTF-8
    assert bad["key"] == "A%FFbad" and (out / "A%FFbad" / "features.0" / "summary.json").is_file()
    assert sum("input_b64" in r for r in records) == 1  # good names are written as before
    summary = strict_json((out / "A%FFbad" / "features.0" / "summary.json").read_bytes())
    assert base64.b64decode(summary["image_b64"]).endswith(BAD)
    for path in out.rglob("*"):  # every name under OUT is valid UTF-8
        os.fsencode(path).decode("utf-8")
    again = run("export", photos, "--out", out, "--skip-existing", *TINY)
    assert again.exit_code == 0, again.output
    assert [r["status"] for r in manifest(out)[3:]] == ["skipped"] * 3


def test_a_real_percent_name_keeps_its_own_folder(tmp_path: Path, tests_on_path: None) -> None:
    photos, out = collection(tmp_path / "in", extra=(b"A%FFbad.png",)), tmp_path / "out"
    assert run("export", photos, "--out", out, *TINY).exit_code == 0
    keys = sorted(r["key"] for r in manifest(out))
    assert keys == ["A%FFbad", "A%FFbad~2", "good1", "good2"]


def test_a_broken_photo_with_a_bad_name_fails_alone(tmp_path: Path, tests_on_path: None) -> None:
    photos = collection(tmp_path / "in", extra=(b"Z\xfebroken.png",))
    (photos / os.fsdecode(b"Z\xfebroken.png")).write_bytes(b"not a png")
    out = tmp_path / "out"
    result = run("export", photos, "--out", out, *TINY)
    assert result.exit_code == 1
    records = manifest(out)
    assert sorted(r["status"] for r in records) == ["error", "ok", "ok", "ok"]
    error = next(r for r in records if r["status"] == "error")
    assert "Z\\xfebroken.png" in error["error"]


def test_show_json_on_stdout_is_valid(tmp_path: Path, tests_on_path: None) -> None:
    photos, out = collection(tmp_path / "in"), tmp_path / "out"
    result = CliRunner().invoke(main, ["show", *sorted(map(str, photos.iterdir())), "--out", str(out), "--json", *TINY],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout_bytes.decode("utf-8"))
    assert document["ok"] == 3 and {r["key"] for r in document["results"]} == {"A%FFbad", "good1", "good2"}


def test_atlas_shards_and_merge_reopen_the_photo(tmp_path: Path, tests_on_path: None) -> None:
    photos = collection(tmp_path / "in")
    model = ["--model", "tinymodels:tiny_features", "--weights", "none", "--quiet", "--top", "3"]
    for i in (1, 2):
        shard = run("atlas", photos, "--shard", f"{i}/2", "--out", tmp_path / f"s{i}", *model)
        assert shard.exit_code == 0, shard.output
        strict_json((tmp_path / f"s{i}" / "atlas-state.json").read_bytes())
    merged = run("atlas", "--merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m", "--quiet")
    assert merged.exit_code == 0, merged.output  # the photo was opened again through input_b64
    assert "error" not in merged.output
    document = strict_json((tmp_path / "m" / "features.0" / "atlas.json").read_bytes())
    entries = [e for channel in document["channels"] for e in channel if "input_b64" in e]
    assert entries and all(base64.b64decode(e["input_b64"]).endswith(BAD) for e in entries)
    page = (tmp_path / "m" / "index.html").read_bytes().decode("utf-8")
    assert "in/A%FFbad.png" in page  # the link points at the real bytes
