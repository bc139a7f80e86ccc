"""Tests for ``featviz export`` and :mod:`featviz.output.export`: whole folders of good, odd and bad
images, the output layout, resume after an interruption, sharding, stdin, ``--json``, exit
codes, path safety, flat memory and determinism (issue 3, "Done means").

All runs use the tiny seeded model from ``tinymodels`` so that the file stays fast and offline.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

import oddimages
from featviz.cli import main as cli  # the module featviz.cli.main
from featviz.cli.main import main
from featviz.errors import UsageError
from featviz.inputs.discover import InputImage, find_images
from featviz.output.export import MANIFEST, SUMMARY, TMP_MARK, Exporter, is_complete, layer_dir, shard
from featviz.output.pipeline import RenderOptions, Visualizer

pytestmark = pytest.mark.filterwarnings("error")

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none"]
CHANNELS = {"features.0": 8, "features.3": 12}  # TinyFeatures: conv(3->8) ... conv(8->12)
RECORD_FIELDS = {"input", "output", "status", "error", "shape", "top_channels", "seconds"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def export(*args: str | Path, input: str | None = None) -> Result:
    """``featviz export ARGS --model tinymodels:tiny_features --weights none`` in-process."""
    argv = ["export", *map(str, args), *TINY]
    return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)


def read_manifest(out: Path) -> list[dict[str, Any]]:
    path = out / MANIFEST
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def files_of(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative POSIX path -> its content), the manifest excluded.

    A PNG's content is its decoded pixels (mode, size, bytes): featviz promises the same pixels,
    not the same deflate stream (docs/batch-export.md, "Bad input and interruptions"); every other file is
    compared byte for byte."""
    return {p.relative_to(out).as_posix(): _content(p)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _content(path: Path) -> bytes:
    if path.suffix != ".png":
        return path.read_bytes()
    with Image.open(path) as image:
        return f"{image.mode} {image.size}".encode() + image.tobytes()


def stamps_of(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TMP_MARK)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def summary_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob(SUMMARY))


def check_complete(directory: Path, layer: str = "features.0") -> dict[str, Any]:
    """A finished result: a summary whose files all exist, one channel PNG per channel."""
    assert is_complete(directory), f"{directory} is not complete"
    summary = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
    for name in summary["files"]:
        path = directory / name
        assert path.is_file() and path.stat().st_size > 0, path
        if name.endswith(".png"):
            with Image.open(path) as image:
                image.load()  # a whole PNG, not a half-written one
    channels = CHANNELS[layer]
    assert summary["layer"]["path"] == layer
    assert summary["activation_shape"][0] == channels
    assert sorted(p.name for p in (directory / "channels").iterdir()) == [f"{c:04d}.png" for c in range(channels)]
    assert {"grid.png", "spatial_attention.png", "channel_attention.png"} <= set(summary["files"])
    return summary


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[int, int] | None]:
    """Files (path -> size, mtime) and folders (path -> None) under ``root``, outside ``exclude``."""
    found: dict[str, tuple[int, int] | None] = {}
    for path in root.rglob("*"):
        if path == exclude or exclude in path.parents:
            continue
        info = path.lstat()
        found[path.relative_to(root).as_posix()] = None if path.is_dir() else (info.st_size, info.st_mtime_ns)
    return found


def make_pngs(folder: Path, count: int, size: tuple[int, int] = (24, 20)) -> list[Path]:
    return [oddimages.make_rgb_png(folder / f"img{i:02d}.png", size=size, seed=i) for i in range(count)]


def featviz_command() -> list[str]:
    """The real command line: the installed script next to this Python, else ``-m featviz``."""
    script = Path(sys.executable).with_name("featviz")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "featviz"]


# --------------------------------------------------------------------------------------------
# 1. a folder mixing good, odd-but-valid and bad images
# --------------------------------------------------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path: Path) -> oddimages.PhotoFolder:
    return oddimages.make_photo_folder(tmp_path / "data")


def test_mixed_folder(photo_folder: oddimages.PhotoFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # relative paths, if anything used them, would land here
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)

    result = export(photo_folder.root, *photo_folder.loose, "--recursive", "--size", "64", "--out", out)

    assert result.exit_code == 1, result.output
    records = read_manifest(out)

    # every good image: complete outputs, one ok line
    for key, path in photo_folder.good.items():
        summary = check_complete(out / key / "features.0")
        assert summary["image"] == str(path)
        ok = [r for r in records if r["key"] == key]
        assert len(ok) == 1 and ok[0]["status"] == "ok" and ok[0]["error"] is None, ok
        assert ok[0]["output"] == f"{key}/features.0"
        assert ok[0]["input"] == str(path)

    # the odd images were read as what they are
    def image_size(key: str) -> list[int]:
        return json.loads((out / key / "features.0" / SUMMARY).read_text(encoding="utf-8"))["image_size"]

    assert image_size("odd/rotated") == [30, 60]  # stored 60x30, EXIF orientation 6
    assert image_size("odd/long") == [3000, 8]
    assert image_size("odd/one") == [1, 1]
    assert (out / "odd" / "katze groß" / "features.0" / "grid.png").is_file()

    # every bad file: exactly one error line in the manifest and one on stderr, no outputs
    assert len(photo_folder.all_bad) == 5
    for path in photo_folder.all_bad:
        errors = [r for r in records if r["input"] == str(path)]
        assert len(errors) == 1, (path, errors)
        assert errors[0]["status"] == "error" and errors[0]["layer"] is None
        assert errors[0]["error"].startswith(str(path))
        assert len([line for line in error_lines(result.stderr) if str(path) in line]) == 1, result.stderr
    assert len(error_lines(result.stderr)) == len(photo_folder.all_bad)
    assert "decompression bomb" in next(r["error"] for r in records if r["input"].endswith("bomb.png"))
    assert "truncated" in next(r["error"] for r in records if r["input"].endswith("truncated.jpg"))
    assert "empty" in next(r["error"] for r in records if r["input"].endswith("empty.jpg"))
    assert not (out / "bad").exists()

    # nothing else in the manifest; results only for the good images
    assert len(records) == len(photo_folder.good) + len(photo_folder.all_bad)
    assert sorted(summary_dirs(out)) == sorted(out / key / "features.0" for key in photo_folder.good)

    # hidden files and non-images in the folder: skipped, counted on stderr, not errors
    assert "skipped 2 hidden and 1 non-image file(s)" in result.stderr
    assert not any(p.name.startswith(".") for p in out.rglob("*"))
    assert not (out / "good" / "notes").exists()
    assert f"{len(photo_folder.good)} done, 0 skipped, {len(photo_folder.all_bad)} failed" in result.stderr

    # no temporaries, nothing written outside OUT
    assert temporaries(out) == []
    assert snapshot(tmp_path, out) == before
    assert list(cwd.iterdir()) == []


def test_mixed_folder_with_two_layers_and_raw(photo_folder: oddimages.PhotoFolder, tmp_path: Path) -> None:
    """The odd images also survive the deeper layer and --save-raw."""
    out = tmp_path / "out"
    result = export(photo_folder.root, "-r", "--layer", "0,3", "--save-raw", "--size", "16", "--out", out)
    assert result.exit_code == 1, result.output
    for key in photo_folder.good:
        for layer in CHANNELS:
            summary = check_complete(out / key / layer, layer)
            assert {"activations.npy", "attention.npz"} <= set(summary["files"])
    assert len(error_lines(result.stderr)) == len(photo_folder.bad)
    assert temporaries(out) == []


# --------------------------------------------------------------------------------------------
# 2. layout: outputs mirror relative paths, nothing is overwritten
# --------------------------------------------------------------------------------------------


def test_outputs_mirror_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "in"
    a = oddimages.make_rgb_png(root / "a" / "cat.png", seed=1)
    b = oddimages.make_rgb_png(root / "b" / "cat.png", seed=2)
    deep = oddimages.make_rgb_png(root / "b" / "c" / "d" / "dog.jpeg", seed=3)
    out = tmp_path / "out"

    result = export(root, "--recursive", "--out", out)

    assert result.exit_code == 0, result.output
    expected = {"a/cat": a, "b/cat": b, "b/c/d/dog": deep}
    for key, path in expected.items():
        summary = check_complete(out / key / "features.0")
        assert summary["image"] == str(path)
    assert summary_dirs(out) == sorted(out / key / "features.0" for key in expected)
    grids = {key: (out / key / "features.0" / "grid.png").read_bytes() for key in expected}
    assert grids["a/cat"] != grids["b/cat"]  # two different pictures, neither overwrote the other


def test_same_key_twice_is_never_overwritten(tmp_path: Path) -> None:
    """``cat.png`` and ``cat.jpg`` side by side, and ``cat.png`` in two folders given as inputs."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    paths = [
        oddimages.make_rgb_png(one / "cat.png", seed=1),
        oddimages.make_rgb_png(one / "cat.jpg", seed=2),
        oddimages.make_rgb_png(two / "cat.png", seed=3),
    ]
    out = tmp_path / "out"

    result = export(one, two, "--out", out)

    assert result.exit_code == 0, result.output
    dirs = summary_dirs(out)
    assert len(dirs) == 3
    images = sorted(json.loads((d / SUMMARY).read_text(encoding="utf-8"))["image"] for d in dirs)
    assert images == sorted(map(str, paths))
    assert len({(d / "grid.png").read_bytes() for d in dirs}) == 3


# --------------------------------------------------------------------------------------------
# 3. --skip-existing
# --------------------------------------------------------------------------------------------


def test_skip_existing_second_run_does_no_work(photo_folder: oddimages.PhotoFolder, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = export(photo_folder.root, "-r", "--layer", "0,3", "--size", "32", "--out", out)
    assert first.exit_code == 1
    before = stamps_of(out)
    lines_before = len(read_manifest(out))
    time.sleep(0.02)  # a rewrite would now show in the modification times

    second = export(photo_folder.root, "-r", "--layer", "0,3", "--size", "32", "--out", out, "--skip-existing")

    new = read_manifest(out)[lines_before:]
    skipped = [r for r in new if r["status"] == "skipped"]
    assert len(skipped) == 2 * len(photo_folder.good)  # one per image and layer
    assert {r["key"] for r in skipped} == set(photo_folder.good)
    # the bad images are tried again (and fail again); nothing else happens
    assert sorted(r["input"] for r in new if r["status"] != "skipped") == sorted(map(str, photo_folder.bad))
    assert all(r["status"] == "error" for r in new if r["status"] != "skipped")
    assert second.exit_code == 1
    assert f"0 done, {len(photo_folder.good)} skipped, {len(photo_folder.bad)} failed" in second.stderr
    assert stamps_of(out) == before  # same files, same bytes, not rewritten
    assert temporaries(out) == []


def _counting_exporter(out: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[Exporter, dict[str, int]]:
    visualizer = Visualizer("tinymodels:tiny_features", "none", [0, 3], options=RenderOptions(size=16))
    calls = {"forward": 0, "prepare": 0, "images": 0}
    forward, prepare = visualizer.forward, visualizer.prepare

    def counting_forward(batch: Sequence[Any]) -> Any:
        calls["forward"] += 1
        calls["images"] += len(batch)
        return forward(batch)

    def counting_prepare(*args: Any, **kw: Any) -> Any:
        calls["prepare"] += 1
        return prepare(*args, **kw)

    monkeypatch.setattr(visualizer, "forward", counting_forward)
    monkeypatch.setattr(visualizer, "prepare", counting_prepare)
    return Exporter(visualizer, out, **kwargs), calls


def test_skip_existing_python_api_calls_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "in", 5)
    images = find_images([str(tmp_path / "in")]).images
    out = tmp_path / "out"
    exporter, calls = _counting_exporter(out, monkeypatch, batch_size=2, workers=1)
    assert exporter.run(images).ok == 5
    assert calls["images"] == 5
    before = stamps_of(out)

    again, calls = _counting_exporter(out, monkeypatch, batch_size=2, workers=1, skip_existing=True)
    report = again.run(images)

    assert calls == {"forward": 0, "prepare": 0, "images": 0}
    assert (report.ok, report.skipped, report.failed) == (0, 5, 0)
    assert stamps_of(out) == before

    # one result made incomplete (its summary gone): exactly that image is done again
    victim = out / "img03" / "features.3" / SUMMARY
    victim.unlink()
    third, calls = _counting_exporter(out, monkeypatch, batch_size=2, workers=1, skip_existing=True)
    report = third.run(images)
    assert (report.ok, report.skipped, report.failed) == (1, 4, 0)
    assert calls["images"] == 1 and calls["prepare"] == 1
    assert stamps_of(out).keys() == before.keys()
    assert {k: v[1] for k, v in stamps_of(out).items()} == {k: v[1] for k, v in before.items()}
    assert len(paths) == 5


# --------------------------------------------------------------------------------------------
# 4. interrupted (SIGKILL, SIGINT) and resumed == uninterrupted
# --------------------------------------------------------------------------------------------

KILL_ARGS = ["--batch-size", "2", "--workers", "1", "--layer", "0,3", "--size", "128"]


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Twenty-four photos and the files of one uninterrupted export of them (enough work that a
    signal sent when the first result appears finds the export still running)."""
    base = tmp_path_factory.mktemp("kill")
    folder = base / "in"
    folder.mkdir()
    samples = sorted(oddimages.SAMPLES.glob("*.jpg"))
    for i in range(24):
        shutil.copyfile(samples[i % len(samples)], folder / f"photo{i:02d}.jpg")
    out = base / "reference"
    result = export(folder, "--out", out, *KILL_ARGS)
    assert result.exit_code == 0, result.output
    reference = files_of(out)
    assert len(summary_dirs(out)) == 48
    return folder, reference


def _complete_images(out: Path, folder: Path) -> int:
    return sum(all(is_complete(out / p.stem / layer) for layer in CHANNELS) for p in folder.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_then_resumed_equals_uninterrupted(
    sig: signal.Signals, kill_inputs: tuple[Path, dict[str, bytes]], tmp_path: Path, tests_on_path: None
) -> None:
    folder, reference = kill_inputs
    out = tmp_path / "out"
    command = featviz_command()
    if sig == signal.SIGINT:
        # Python turns SIGINT into KeyboardInterrupt only if the parent did not ignore it (a
        # background job in a non-interactive shell does): install the handler explicitly.
        command = [sys.executable, "-c", "import runpy, signal; "
                   "signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "runpy.run_module('featviz', run_name='__main__')"]
    argv = [*command, "export", str(folder), "--out", str(out), *TINY, *KILL_ARGS]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            while not any(out.rglob(SUMMARY)):
                assert process.poll() is None, f"{shlex.join(argv)} ended early:\n{log.read_text()}"
                assert time.monotonic() < deadline, "no result appeared in 120 s"
                time.sleep(0.005)
            assert process.poll() is None, "the export finished before it could be interrupted"
            process.send_signal(sig)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code != 0, log.read_text()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130  # the shell's convention for Ctrl-C

    # part-way: some images done, not all; whatever is there is whole
    done = _complete_images(out, folder)
    assert summary_dirs(out) and done < 24, done
    for path in out.rglob("*.png"):
        if not path.name.endswith(TMP_MARK):
            with Image.open(path) as image:
                image.load()
    if sig == signal.SIGINT:
        assert "Traceback" not in log.read_text()

    result = export(folder, "--out", out, *KILL_ARGS, "--skip-existing")

    assert result.exit_code == 0, result.output
    resumed = [r for r in read_manifest(out) if r["status"] == "skipped"]
    assert len(resumed) == 2 * done  # complete images were not done again
    assert temporaries(out) == []
    produced = files_of(out)
    assert sorted(produced.keys() ^ reference.keys()) == []
    assert [name for name in produced if produced[name] != reference[name]] == []


# --------------------------------------------------------------------------------------------
# 5. --shard
# --------------------------------------------------------------------------------------------


def test_shard_slices_are_disjoint_and_cover_everything(tmp_path: Path) -> None:
    make_pngs(tmp_path / "in" / "x", 4, size=(12, 12))
    make_pngs(tmp_path / "in" / "y", 4, size=(12, 12))
    everything = find_images([str(tmp_path / "in")], recursive=True).images
    assert len(everything) == 8

    seen: list[str] = []
    for index in (1, 2, 3):
        out = tmp_path / f"out{index}"
        result = export(tmp_path / "in", "-r", "--shard", f"{index}/3", "--out", out, "--size", "8")
        assert result.exit_code == 0, result.output
        inputs = [r["input"] for r in read_manifest(out) if r["status"] == "ok"]  # in finishing order
        assert sorted(inputs) == sorted(str(i.path) for i in shard(everything, index, 3))
        assert len(inputs) in (2, 3)
        seen.extend(inputs)
    assert len(seen) == len(set(seen))  # disjoint
    assert sorted(seen) == sorted(str(i.path) for i in everything)  # covering


@pytest.mark.parametrize("count", [1, 2, 3, 5, 10])
def test_shard_function_partitions(count: int) -> None:
    images = [InputImage(Path(f"{i}.png"), PurePosixPath(str(i))) for i in range(10)]
    slices = [shard(images, index, count) for index in range(1, count + 1)]
    flat = [image for part in slices for image in part]
    assert sorted(flat, key=lambda i: int(str(i.key))) == images
    assert len(set(flat)) == len(flat)
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert slices == [shard(images, index, count) for index in range(1, count + 1)]  # deterministic


@pytest.mark.parametrize("bad", ["4/3", "0/3", "1/0", "x", "1", "1/x", "-1/3", "2/3/4", ""])
def test_bad_shard_is_a_usage_error(bad: str, tmp_path: Path) -> None:
    image = oddimages.make_rgb_png(tmp_path / "in.png")
    out = tmp_path / "out"
    result = export(image, "--shard", bad, "--out", out)
    assert result.exit_code == 2, result.output
    assert "--shard" in result.stderr
    assert not out.exists()


def test_shard_function_rejects_bad_slices() -> None:
    with pytest.raises(UsageError):
        shard([], 4, 3)
    with pytest.raises(UsageError):
        shard([], 1, 0)


# --------------------------------------------------------------------------------------------
# 6. - reads paths from stdin
# --------------------------------------------------------------------------------------------


def test_paths_from_stdin(tmp_path: Path) -> None:
    spaced = oddimages.make_rgb_png(tmp_path / "my photos" / "a cat.png", seed=1)
    plain = oddimages.make_rgb_png(tmp_path / "plain" / "dog.png", seed=2)
    out = tmp_path / "out"

    result = export("-", "--out", out, input=f"{spaced}\n\n{plain}\n")

    assert result.exit_code == 0, result.output
    inputs = sorted(r["input"] for r in read_manifest(out))
    assert inputs == sorted([str(spaced), str(plain)])
    for record in read_manifest(out):
        check_complete(out / record["output"])


def test_find_piped_into_export(tmp_path: Path, tests_on_path: None) -> None:
    """The manual's recipe (docs/batch-export.md), for real: ``find … | featviz export - --out d``."""
    find = shutil.which("find")
    if find is None:
        pytest.skip("no find command")
    folder = tmp_path / "in"
    oddimages.make_rgb_png(folder / "with space.png", seed=1)
    oddimages.make_rgb_png(folder / "sub" / "b.png", seed=2)
    (folder / "notes.txt").write_text("no image")
    out = tmp_path / "out"
    listing = subprocess.run([find, str(folder), "-name", "*.png"], capture_output=True, text=True, check=True)
    result = subprocess.run([*featviz_command(), "export", "-", "--out", str(out), *TINY],
                            input=listing.stdout, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(r["input"] for r in read_manifest(out)) == sorted(listing.stdout.split("\n")[:-1])
    assert len(summary_dirs(out)) == 2


# --------------------------------------------------------------------------------------------
# 7. --json, --quiet, progress
# --------------------------------------------------------------------------------------------


def test_json_streams_one_line_per_image_and_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # explicit files are keyed by their path relative to here
    paths = make_pngs(tmp_path / "in", 3)
    bad = oddimages.make_text_as_png(tmp_path / "in" / "zz-bad.png")
    out = tmp_path / "out"

    result = export(*paths, bad, "--layer", "0,3", "--json", "--progress", "--out", out)

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON, nothing else
    assert len(records) == 3 * 2 + 1
    for record in records:
        assert RECORD_FIELDS <= record.keys()
        assert isinstance(record["seconds"], (int, float)) and record["seconds"] >= 0
    ok = [r for r in records if r["status"] == "ok"]
    assert sorted((r["input"], r["output"]) for r in ok) == sorted(
        (str(p), f"in/{p.stem}/{layer}") for p in paths for layer in CHANNELS)
    for record in ok:
        assert record["error"] is None
        assert record["shape"][0] == CHANNELS[record["output"].rsplit("/", 1)[1]]
        assert len(record["shape"]) == 3 and record["top_channels"]
    [failed] = [r for r in records if r["status"] == "error"]
    assert failed["input"] == str(bad) and failed["error"] and failed["output"] is None
    assert records == read_manifest(out)  # the same lines as the manifest
    # everything human goes to stderr
    assert "featviz" in result.stderr  # the progress bar's label
    assert "3 done" in result.stderr and "error:" in result.stderr
    assert "{" not in result.stderr


def test_quiet_clean_run_prints_nothing_on_stderr(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make_pngs(folder, 2)
    (folder / "notes.txt").write_text("skipped, but quietly")
    oddimages.make_rgb_png(folder / ".hidden.png")
    out = tmp_path / "out"

    result = export(folder, "--quiet", "--out", out)

    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout == ""
    assert len(summary_dirs(out)) == 2


def test_default_run_is_silent_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = export(*make_pngs(tmp_path / "in", 2), "--out", out)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "2 done, 0 skipped, 0 failed" in result.stderr


# --------------------------------------------------------------------------------------------
# 8. exit codes
# --------------------------------------------------------------------------------------------


def test_exit_0_when_all_good(tmp_path: Path) -> None:
    result = export(*make_pngs(tmp_path / "in", 2), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert error_lines(result.stderr) == []


def test_exit_1_when_some_fail_and_the_rest_are_done(tmp_path: Path) -> None:
    good = make_pngs(tmp_path / "in", 2)
    bad = oddimages.make_truncated_jpeg(tmp_path / "in" / "half.jpg")
    out = tmp_path / "out"
    result = export(good[0], bad, good[1], "--out", out, "--batch-size", "3")
    assert result.exit_code == 1
    assert len(summary_dirs(out)) == 2
    assert list(error_lines(result.stderr)) == [
        next(f"error: {r['error']}" for r in read_manifest(out) if r["status"] == "error")]


def test_exit_1_when_an_input_is_missing(tmp_path: Path) -> None:
    good = make_pngs(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = export(good[0], tmp_path / "nope.png", "--out", out)
    assert result.exit_code == 1
    assert "nope.png" in result.stderr
    assert len(summary_dirs(out)) == 1


def _other_weights(tmp_path: Path) -> Path:
    import torch

    import tinymodels

    path = tmp_path / "residual.pth"
    torch.save(tinymodels.tiny_residual().state_dict(), path)
    return path


@pytest.mark.parametrize("case", ["unknown model", "layer 99", "layer path", "missing weights",
                                  "wrong weights", "bad option", "no inputs"])
def test_usage_errors_exit_2_before_any_image(case: str, tmp_path: Path) -> None:
    images = make_pngs(tmp_path / "in", 2)
    out = tmp_path / "out"
    tail = ["--out", str(out)]
    argv: list[str] = {
        "unknown model": ["--model", "no_such_model_xyz", "--weights", "none"],
        "layer 99": [*TINY, "--layer", "99"],
        "layer path": [*TINY, "--layer", "features.nope"],
        "missing weights": ["--model", "tinymodels:tiny_features", "--weights", str(tmp_path / "missing.pth")],
        "wrong weights": ["--model", "tinymodels:tiny_features", "--weights", str(_other_weights(tmp_path))],
        "bad option": [*TINY, "--batch-size", "0"],
        "no inputs": [*TINY],
    }[case]
    inputs = [] if case == "no inputs" else [str(p) for p in images]
    # the model options come last so that they override TINY's
    result = CliRunner().invoke(main, ["export", *inputs, *tail, *argv], catch_exceptions=False)

    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert read_manifest(out) == []
    assert not out.exists() or list(out.rglob("*")) == []


def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    for code in ("0", "1", "2"):
        assert re.search(rf"^\s*{code}\s+\S", result.stdout, re.MULTILINE), result.stdout


# --------------------------------------------------------------------------------------------
# 9. several layers in one pass
# --------------------------------------------------------------------------------------------


def test_several_layers_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featviz.output import pipeline as pipeline_module
    passes = []
    original = pipeline_module.capture

    def counting_capture(module: Any, layers: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        passes.append(batch.shape[0])
        return original(module, layers, batch, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "capture", counting_capture)  # the name the pipeline calls
    paths = make_pngs(tmp_path / "in", 3)
    out = tmp_path / "out"

    result = export(tmp_path / "in", "--layer", "0,3", "--batch-size", "8", "--out", out)

    assert result.exit_code == 0, result.output
    for path in paths:
        for layer in CHANNELS:
            check_complete(out / path.stem / layer, layer)
    records = read_manifest(out)
    assert sorted((r["key"], r["layer"]) for r in records) == sorted(
        (p.stem, layer) for p in paths for layer in CHANNELS)
    assert passes == [1, 3]  # the blank check at start-up, then one pass for all photos and layers


def test_layer_option_repeated_and_by_path(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = export(paths[0], "-l", "0", "-l", "features.3", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(d.name for d in summary_dirs(out)) == ["features.0", "features.3"]


# --------------------------------------------------------------------------------------------
# 10. nothing is written outside OUT
# --------------------------------------------------------------------------------------------


def test_inputs_outside_cwd_land_inside_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    climbing = oddimages.make_rgb_png(tmp_path / "elsewhere" / "pic.png", seed=1)
    absolute = oddimages.make_rgb_png(tmp_path / "far" / "away" / "abs.png", seed=2)
    monkeypatch.chdir(cwd)
    out = tmp_path / "work" / "out"
    before = snapshot(tmp_path, out)

    result = export("../../elsewhere/pic.png", absolute, "--out", out)

    assert result.exit_code == 0, result.output
    root = out.resolve()
    records = read_manifest(out)
    assert len(records) == 2
    for record in records:
        target = (out / record["output"]).resolve()
        assert root in target.parents
        assert ".." not in PurePosixPath(record["output"]).parts
        check_complete(out / record["output"])
    assert snapshot(tmp_path, out) == before
    assert list(cwd.iterdir()) == []
    assert climbing.is_file()


@pytest.mark.parametrize("key", ["../../etc", "/etc/passwd", "a/../../../b", "..", ".", "", "..\\..\\x",
                                 "a/./b", "//x//y"])
@pytest.mark.parametrize("layer", ["features.0", "..", "../..", "/abs"])
def test_layer_dir_never_escapes(key: str, layer: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    try:
        target = layer_dir(out, key, layer)
    except UsageError:
        return
    root = out.resolve()
    assert root in target.resolve().parents
    assert target.resolve() != root


def test_layer_dir_refuses_a_symlink_out_of_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UsageError):
        layer_dir(out, "link/cat", "features.0")



@pytest.mark.parametrize("planted", ["link", "good/features.0/channels", "file"])
def test_a_symlink_planted_in_out_fails_that_photo_and_the_rest_go_on(planted: str, tmp_path: Path) -> None:
    """A folder inside OUT that links outside it (the photo's folder, or its channels/), or a
    file where the photo's folder belongs: that photo is an error line, nothing is written
    outside OUT, the other photos are complete."""
    oddimages.make_rgb_png(tmp_path / "in" / "good.png", size=(24, 20), seed=0)
    oddimages.make_rgb_png(tmp_path / "in" / "link" / "000.png", size=(24, 20), seed=1)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    if planted == "file":
        out.mkdir()
        (out / "good").write_text("not a folder")
    else:
        (out / planted).parent.mkdir(parents=True, exist_ok=True)
        (out / planted).symlink_to(outside, target_is_directory=True)
    result = export(tmp_path / "in", "--recursive", "--out", out, *TINY, "--size", "8", "--quiet")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert ("cannot create its output folder" if planted == "file" else "outside the output folder") in line
    assert list(outside.iterdir()) == []
    statuses = {r["key"]: r["status"] for r in read_manifest(out)}
    bad = "link/000" if planted == "link" else "good"
    assert (out / "good").is_file() == (planted == "file")  # the planted file is left alone
    assert statuses[bad] == "error"
    for key in set(statuses) - {bad}:
        assert statuses[key] == "ok"
        check_complete(out / key / "features.0")
    # a second run with --skip-existing fails the same way, and still writes nothing outside
    again = export(tmp_path / "in", "--recursive", "--out", out, *TINY, "--size", "8", "--quiet", "--skip-existing")
    assert again.exit_code == 1 and list(outside.iterdir()) == []

# --------------------------------------------------------------------------------------------
# 11. memory stays flat
# --------------------------------------------------------------------------------------------


def test_pending_results_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many images, only about two batches of results are alive at any time."""
    make_pngs(tmp_path / "in", 40, size=(16, 16))
    images = find_images([str(tmp_path / "in")]).images
    batch, layers = 2, 2
    visualizer = Visualizer("tinymodels:tiny_features", "none", [0, 3], options=RenderOptions(size=4))
    exporter = Exporter(visualizer, tmp_path / "out", batch_size=batch, workers=1)
    alive: weakref.WeakSet[Any] = weakref.WeakSet()
    results: weakref.WeakSet[Any] = weakref.WeakSet()
    peak = {"pending": 0, "results": 0, "submitted": 0}
    original = Exporter._submit

    def spying_submit(self: Exporter, pool: Any, result: Any, directory: Path, seconds: float) -> Any:
        pending = original(self, pool, result, directory, seconds)
        alive.add(pending)
        results.add(result.activations)
        peak["submitted"] += 1
        peak["pending"] = max(peak["pending"], len(alive))
        peak["results"] = max(peak["results"], len(results))
        return pending

    monkeypatch.setattr(Exporter, "_submit", spying_submit)
    report = exporter.run(images)

    assert report.ok == 40
    assert peak["submitted"] == 40 * layers
    bound = 2 * batch * layers + layers  # one batch waiting + the one being submitted
    assert peak["pending"] <= bound, peak
    assert peak["results"] <= bound, peak


def test_cli_export_does_not_keep_a_record_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest is the record; the CLI must not also collect every record in memory."""
    kept: list[list[dict[str, Any]]] = []
    original = cli._run

    def spying_run(*args: Any, **kwargs: Any) -> Any:
        report, records = original(*args, **kwargs)
        kept.append(records)
        return report, records

    monkeypatch.setattr(cli, "_run", spying_run)
    result = export(*make_pngs(tmp_path / "in", 6, size=(12, 12)), "--out", tmp_path / "out", "--size", "4")
    assert result.exit_code == 0, result.output
    assert kept == [[]]


# --------------------------------------------------------------------------------------------
# 12. determinism
# --------------------------------------------------------------------------------------------


def test_two_exports_are_identical(photo_folder: oddimages.PhotoFolder, tmp_path: Path) -> None:
    options = ["-r", "--layer", "0,3", "--save-raw", "--size", "16", "--cmap", "viridis"]
    first = export(photo_folder.root, *options, "--out", tmp_path / "one")
    second = export(photo_folder.root, *options, "--out", tmp_path / "two", "--batch-size", "3", "--workers", "1")
    assert first.exit_code == second.exit_code == 1
    one, two = files_of(tmp_path / "one"), files_of(tmp_path / "two")
    assert len(one) > 0
    assert one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []
