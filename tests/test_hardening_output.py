"""Issue 13, writing files: nothing written outside --out through planted links, an output folder
that cannot be written, a full disk, a closed stdout, two exports into one folder at once.

Each test failed on main before the fix it guards (the issue's "Done means").
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import oddimages
from featviz.cli.main import main
from featviz.output import layout
from featviz.output.export import MANIFEST, SUMMARY, TMP_MARK, is_complete
from featviz.output.report import REPORT, report_data

pytestmark = pytest.mark.filterwarnings("error")

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none", "--size", "8", "--quiet"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def photos(folder: Path, count: int) -> list[Path]:
    return [oddimages.make_rgb_png(folder / f"img{i:02d}.png", size=(24, 20), seed=i) for i in range(count)]


def manifest_records(out: Path) -> list[dict[str, Any]]:
    """Every line must be whole JSON (json.loads raises otherwise), NaN and infinities refused."""
    def refuse(value: str) -> None:
        raise ValueError(f"bare {value} in the manifest")

    text = (out / MANIFEST).read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def all_files(root: Path) -> dict[str, bytes]:
    """Relative path -> content; a PNG's content is its decoded pixels (the README promises the
    same pixels, not the same deflate bytes)."""
    return {p.relative_to(root).as_posix(): _content(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _content(path: Path) -> bytes:
    if path.suffix != ".png":
        return path.read_bytes()
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.mode} {image.size}".encode() + image.tobytes()


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TMP_MARK)]


# --------------------------------------------------------------------------------------------
# 1. nothing is written through a symlink planted inside --out
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("planted", [MANIFEST, REPORT])
def test_a_planted_manifest_or_report_link_is_refused_before_any_image(planted: str, tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out.mkdir()
    (out / planted).symlink_to(victim)
    result = run("export", tmp_path / "in", "--out", out, *TINY)
    assert result.exit_code == 2, result.output
    assert "Error: refusing to write" in result.stderr and "symbolic link" in result.stderr
    assert "Hint:" in result.stderr and "Traceback" not in result.output
    assert victim.read_text() == "precious\n"
    assert not (out / "img00").exists()  # refused before any image


def test_append_line_never_follows_a_link(tmp_path: Path) -> None:
    """Also when the link appears during a run (after the check): O_NOFOLLOW refuses it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / MANIFEST).symlink_to(victim)
    with pytest.raises(OSError) as caught:
        layout.append_line(tmp_path / MANIFEST, "{}")
    assert caught.value.errno == errno.ELOOP
    assert victim.read_text() == "precious\n"


def test_a_link_planted_under_a_temporary_name_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporaries are created with O_EXCL|O_NOFOLLOW; their names carry a random part."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = tmp_path / "out" / "grid.png"
    target.parent.mkdir()
    planted = target.with_name(f".grid.png.{os.getpid()}.1.00000000{TMP_MARK}")
    planted.symlink_to(victim)
    monkeypatch.setattr(layout, "_temporary_name", lambda path: planted)  # the attacker guessed right
    with pytest.raises(FileExistsError):
        layout.atomic_write(target, b"data")
    assert victim.read_text() == "precious\n" and not target.exists()
    monkeypatch.undo()
    layout.atomic_write(target, b"data")  # an unguessable name: written
    assert target.read_bytes() == b"data" and victim.read_text() == "precious\n"


@pytest.mark.parametrize("planted", ["summary", "png", "channel"])
def test_a_link_at_an_output_file_is_replaced_not_written_through(planted: str, tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    where = {"summary": out / "img00" / "features.0" / SUMMARY,
             "png": out / "img00" / "features.0" / "grid.png",
             "channel": out / "img00" / "features.0" / "channels" / "0000.png"}[planted]
    where.parent.mkdir(parents=True)
    where.symlink_to(victim)
    result = run("export", tmp_path / "in", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert not where.is_symlink() and is_complete(out / "img00" / "features.0")


@pytest.mark.parametrize("planted", ["img00", "img00/features.0", "img00/features.0/channels"])
def test_a_folder_link_out_of_out_fails_the_photo(planted: str, tmp_path: Path) -> None:
    photos(tmp_path / "in", 2)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).symlink_to(outside, target_is_directory=True)
    result = run("export", tmp_path / "in", "--out", out, *TINY)
    assert result.exit_code == 1 and "outside the output folder" in result.stderr
    assert list(outside.iterdir()) == []
    assert is_complete(out / "img01" / "features.0")


def test_sweep_never_writes_through_a_folder_link(tmp_path: Path) -> None:
    [photo] = photos(tmp_path / "in", 1)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "img00").symlink_to(outside, target_is_directory=True)
    result = run("sweep", photo, "--model", "tinymodels:tiny_features", "--weights", "none", "--out", out)
    assert result.exit_code == 1 and "outside the output folder" in result.stderr
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 2. an output folder that cannot be made or written: one Error/Hint, exit 2, before any image
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "export", "sweep"])
def test_a_file_in_the_way_of_out(command: str, tmp_path: Path) -> None:
    [photo] = photos(tmp_path / "in", 1)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    extra = TINY if command != "sweep" else TINY[:4]
    result = run(command, photo, "--out", blocker / "sub", *extra)
    assert result.exit_code == 2, result.output
    assert "Error: cannot write to the output folder" in result.stderr and "Hint:" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("command", ["show", "export", "sweep"])
def test_a_read_only_out(command: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod cannot make a folder read-only: os.open in featviz's
    writer fails as a read-only file system (or a folder without permission) would."""
    [photo] = photos(tmp_path / "in", 1)
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR) and str(tmp_path / "out") in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(layout.os, "open", read_only)
    extra = TINY if command != "sweep" else TINY[:4]
    result = run(command, photo, "--out", tmp_path / "out", *extra)
    assert result.exit_code == 2, result.output
    assert f"({os.strerror(code)})" in result.stderr and "Hint:" in result.stderr


# --------------------------------------------------------------------------------------------
# 3. a full disk: the run stops cleanly, no partial file, a valid manifest, and a resume finishes
# --------------------------------------------------------------------------------------------


class FillingDisk:
    """``os.write`` in featviz's writer fails with ENOSPC once ``room`` bytes went out (a write
    that would cross the limit writes what fits first, as a real file system does)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.real = os.write

    def __call__(self, fd: int, data: Any) -> int:
        view = memoryview(data)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = view[: self.room]
        written = self.real(fd, part)
        self.room -= written
        return written


def test_disk_full_stops_cleanly_and_resume_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos(tmp_path / "in", 6)
    full = run("export", tmp_path / "in", "--out", tmp_path / "reference", *TINY, "--workers", "1")
    assert full.exit_code == 0
    total = sum(p.stat().st_size for p in (tmp_path / "reference").rglob("*") if p.is_file())
    out = tmp_path / "out"
    disk = FillingDisk(total // 2)
    monkeypatch.setattr(layout.os, "write", disk)
    with warnings.catch_warnings():  # the page, rewritten every few seconds, may hit the full disk first
        warnings.filterwarnings("ignore", "featviz: cannot write the report", RuntimeWarning)
        stopped = run("export", tmp_path / "in", "--out", out, *TINY, "--workers", "1")
    assert stopped.exit_code == 1, stopped.output
    assert "Error: cannot write" in stopped.stderr and "No space left on device" in stopped.stderr
    assert "--skip-existing" in stopped.stderr and "Traceback" not in stopped.output
    assert [line for line in stopped.stderr.splitlines() if line.startswith("error:")]  # the photo being written
    assert temporaries(out) == []
    records = manifest_records(out)  # whole lines only
    done = [p for p in sorted(out.glob("img*/features.0")) if is_complete(p)]
    assert 0 < len(done) < 6
    for folder in out.glob("img*/features.0"):  # every file there is whole
        for png in folder.rglob("*.png"):
            assert png.read_bytes().endswith(b"IEND\xaeB`\x82")
    assert {r["key"] for r in records if r["status"] == "ok"} == {p.parent.name for p in done}
    monkeypatch.undo()
    resumed = run("export", tmp_path / "in", "--out", out, *TINY, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    manifest_records(out)
    reference = {k: v for k, v in all_files(tmp_path / "reference").items() if k not in {MANIFEST, REPORT}}
    assert {k: v for k, v in all_files(out).items() if k not in {MANIFEST, REPORT}} == reference
    assert len(report_data(out)["entries"]) == 6 and report_data(out)["failed"] == []


def test_a_torn_manifest_line_is_skipped_and_the_next_record_starts_a_new_line(tmp_path: Path) -> None:
    photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert run("export", tmp_path / "in", "--out", out, *TINY).exit_code == 0
    whole = (out / MANIFEST).read_text(encoding="utf-8")
    (out / MANIFEST).write_text(whole + '{"input": "x", "key": "torn", "la', encoding="utf-8")
    assert len(report_data(out)["entries"]) == 2  # the reader skips the fragment
    photos(tmp_path / "more", 1)
    assert run("export", tmp_path / "more", "--out", out, *TINY).exit_code == 0
    lines = (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    assert lines[-2] == '{"input": "x", "key": "torn", "la'  # left alone, on its own line
    assert json.loads(lines[-1])["status"] == "ok"


def test_append_line_cuts_back_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / MANIFEST
    layout.append_line(path, '{"a": 1}')
    monkeypatch.setattr(layout.os, "write", FillingDisk(5))
    with pytest.raises(OSError):
        layout.append_line(path, '{"b": 2}')
    monkeypatch.undo()
    assert path.read_text() == '{"a": 1}\n'


def test_disk_full_on_a_real_small_tmpfs(tmp_path: Path) -> None:
    """The same on a real full file system, where this machine allows mounting one (root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        photos(tmp_path / "in", 8)
        argv = [sys.executable, "-m", "featviz", "export", str(tmp_path / "in"), "--out", str(mount / "out"),
                *TINY, "--size", "48", "--workers", "1"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        stopped = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert stopped.returncode == 1, stopped.stderr
        assert "No space left on device" in stopped.stderr and "Traceback" not in stopped.stderr
        assert temporaries(mount) == []
        manifest_records(mount / "out")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --------------------------------------------------------------------------------------------
# 12. a closed stdout (export --json | head -1) loses no work
# --------------------------------------------------------------------------------------------


def test_export_json_into_a_closed_pipe_finishes_the_batch(tmp_path: Path) -> None:
    photos(tmp_path / "in", 12)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "featviz", "export", str(tmp_path / "in"), "--out", str(out), "--json",
            *TINY, "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # what `head -1` does: one line, then close
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    code = process.wait(timeout=120)
    assert json.loads(first)["status"] == "ok"
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert [line for line in stderr.splitlines() if "stdout" in line] == [
        f"warning: stdout was closed; the batch went on, every record is in {out / MANIFEST}"]
    assert all(is_complete(out / f"img{i:02d}" / "features.0") for i in range(12))
    assert len(manifest_records(out)) == 12


# --------------------------------------------------------------------------------------------
# 13. another live process's temporaries are not "stale"
# --------------------------------------------------------------------------------------------


def test_only_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    folder = out / "img00" / "features.0"
    (folder / "channels").mkdir(parents=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = folder / "channels" / f".0003.png.{alive.pid}.140.0a1b2c3d{TMP_MARK}"
        dead_tmp = folder / "channels" / f".0004.png.{dead.pid}.140.0a1b2c3d{TMP_MARK}"
        old_tmp = folder / f".grid.png.{alive.pid}.140.ffffffff{TMP_MARK}"
        legacy_tmp = folder / f".grid.png.123{TMP_MARK}"
        for path in (live_tmp, dead_tmp, old_tmp, legacy_tmp):
            path.write_bytes(b"half")
        day_ago = time.time() - 2 * layout.STALE_AFTER_SECONDS
        os.utime(old_tmp, (day_ago, day_ago))
        result = run("export", tmp_path / "in", "--out", out, *TINY)
        assert result.exit_code == 0, result.output
        assert live_tmp.exists()  # another export is writing it right now
        assert not dead_tmp.exists() and not old_tmp.exists() and not legacy_tmp.exists()
    finally:
        alive.kill()
        alive.wait()


def test_two_concurrent_exports_into_one_out(tmp_path: Path) -> None:
    """Two real processes export the same photos into one folder at once: neither fails."""
    photos(tmp_path / "in", 6)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "featviz", "export", str(tmp_path / "in"), "--out", str(out), *TINY,
            "--size", "32", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in runs]  # type: ignore[union-attr]
    for p in runs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0, 0], results
    assert temporaries(out) == []
    assert all(is_complete(out / f"img{i:02d}" / "features.0") for i in range(6))
