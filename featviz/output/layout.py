"""The output layout and atomic file writing: the leaf every writer uses.

Where things go under OUT (``OUT/<key>/<layer path>/``, ``manifest.jsonl``, ``summary.json``),
and how a file gets there: through a temporary name in its own folder and a rename, so an
interrupted run leaves whole files or none. Nothing is ever written outside OUT.
It sits at the bottom of the package (it imports only :mod:`featviz.errors` and
:mod:`featviz.output.png`), so the result, the batch engine and the report can all use it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from featviz.errors import UsageError
from featviz.inputs.names import json_safe, safe_component
from featviz.output.png import encode_png

SUMMARY = "summary.json"
MANIFEST = "manifest.jsonl"
TMP_MARK = ".featviz-tmp"


# --- layout -------------------------------------------------------------------------------

def _clean_component(part: str) -> str:
    cleaned = safe_component(part).replace("\x00", "").replace("/", "_").replace("\\", "_")
    return "_" if cleaned in {"", ".", ".."} else cleaned


def layer_dir(out: Path, key: str, layer_path: str) -> Path:
    """``out/<key>/<layer path>``, refusing anything that would land outside ``out``."""
    parts = [_clean_component(p) for p in PurePosixPath(key).parts if p not in {"/"}]
    return ensure_inside(out, out.joinpath(*parts, _clean_component(layer_path)))


def ensure_inside(out: Path, target: Path) -> Path:
    """``target``, unless it resolves (symlinks followed) to ``out`` itself or outside it."""
    root = out.resolve()
    resolved = target.resolve()
    if resolved == root or root not in resolved.parents:
        raise UsageError(f"refusing to write {target}: it is outside the output folder {out}")
    return target


def stem_keys(paths: Sequence[Path]) -> list[str]:
    """Output keys for ``show``: each photo's stem; a stem seen before gets ``~2``, ``~3``..."""
    seen: dict[str, int] = {}
    keys = []
    for path in paths:
        stem = _clean_component(Path(path).stem)
        seen[stem] = seen.get(stem, 0) + 1
        keys.append(stem if seen[stem] == 1 else f"{stem}~{seen[stem]}")
    return keys


#: errno values that mean the output folder itself cannot take more files: the run stops.
FATAL_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
#: Temporaries of a live process older than this are taken for leftovers of a reused pid.
STALE_AFTER_SECONDS = 24 * 3600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_fatal_write_error(error: BaseException) -> bool:
    """Whether ``error`` means the output file system is full or read-only (no point going on)."""
    return isinstance(error, OSError) and error.errno in FATAL_WRITE_ERRORS


def _temporary_name(path: Path) -> Path:
    """``.<name>.<pid>.<thread>.<random><TMP_MARK>``: the pid says which process owns it (see
    :func:`remove_stale_temporaries`), the random part makes the name unguessable."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}{TMP_MARK}")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary is created with ``O_EXCL | O_NOFOLLOW``, so a symlink planted under its name is
    never followed, and the rename replaces a link at ``path`` itself instead of writing through
    it. On any failure (a full disk included) the temporary is removed: no partial file is left.
    The folder is created only when the first attempt finds it missing: a batch writes tens of
    files per folder, and a ``mkdir`` per file was measurable."""
    tmp = _temporary_name(path)
    try:
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, _CREATE_FLAGS, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line (a JSON Lines record; ``line`` without its newline) to ``path``.

    Opened with ``O_NOFOLLOW``: a symlink planted at ``path`` is refused (``OSError`` ELOOP),
    never followed. The whole line goes out in one ``write`` (local file systems keep such
    appends whole between processes). A file that does not end in a newline (a line torn by a
    full disk or a kill) gets one first, so the new record is never glued to the fragment; and
    if this write fails, the file is cut back to where it was, so no torn line is left."""
    payload = (line + "\n").encode("utf-8")
    fd = os.open(path, _APPEND_FLAGS, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload
        try:
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(errno.ENOSPC, f"only {written} of {len(payload)} bytes could be written")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def check_output_folder(out: Path, files: Sequence[str] = ()) -> None:
    """Make ``out`` and prove that a file can be created in it, before any image is read.

    Raises :class:`UsageError` when it cannot be made (a file in the way), is not writable
    (read-only file system, no permission, full), or when one of ``files`` (names inside it
    that featviz appends to or replaces, such as the manifest) is a symbolic link."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = _temporary_name(out / "probe")
        fd = os.open(probe, _CREATE_FLAGS, 0o644)
        try:
            _write_all(fd, b"featviz")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot write to the output folder {out} ({reason})",
                         hint="choose another --out: a folder that can be created and written") from exc
    for name in files:
        if (out / name).is_symlink():
            raise UsageError(f"refusing to write {out / name}: it is a symbolic link",
                             hint="featviz never writes through links planted in --out; remove the link") from None


def _owner_alive(name: str) -> bool:
    """Whether the process named in a temporary's name (``.<file>.<pid>.<thread>...``) runs."""
    parts = name[: -len(TMP_MARK)].split(".")
    if len(parts) < 5 or not parts[-3].isdigit():
        return False  # not a name featviz gives (or an older featviz's): nobody owns it
    pid = int(parts[-3])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files an interrupted run left in ``directory`` (and ``channels/``).

    A temporary whose owner (the pid in its name) still runs is another export writing into the
    same folder right now: it is left alone, unless it is older than a day (a reused pid)."""
    now = time.time()
    for folder in (directory, directory / "channels"):
        if folder.is_dir() and not folder.is_symlink():
            for entry in folder.iterdir():
                if entry.name.endswith(TMP_MARK):
                    with contextlib.suppress(OSError):
                        if _owner_alive(entry.name) and now - entry.lstat().st_mtime < STALE_AFTER_SECONDS:
                            continue
                        entry.unlink()


def png_bytes(image: Image.Image | np.ndarray, level: int) -> bytes:
    """PNG bytes through featviz's own encoder (:mod:`featviz.output.png`: one filter, ISA-L deflate),
    several times faster than Pillow's on these pictures for files of about the same size."""
    return encode_png(image, level)


def npy_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def json_bytes(document: Any) -> bytes:
    """Indented JSON; ``allow_nan=False``: a NaN or infinity that reached a document is a bug
    (a bare ``NaN`` is not JSON), raised here instead of written. Text that quotes a file name
    which is not UTF-8 is escaped (:func:`featviz.inputs.names.json_safe`), never a crash."""
    try:
        return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(json_safe(document), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def json_line(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One JSON Lines record (no newline) and the record as written: the same dict, or a copy
    whose text was escaped because it quoted a file name that is not UTF-8."""
    line = json.dumps(record, ensure_ascii=False, allow_nan=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        record = json_safe(record)
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
    return line, record


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished result: a readable summary whose files all exist."""
    return complete_summary(directory) is not None


def complete_summary(directory: Path) -> dict[str, Any] | None:
    """The summary of a finished result in ``directory`` (one whose listed files all exist), else None."""
    try:
        summary = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
        if isinstance(summary, dict) and all((directory / name).is_file() for name in summary.get("files", [])):
            return summary
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return None
