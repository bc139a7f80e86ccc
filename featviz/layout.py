"""The output layout and atomic file writing: the leaf every writer uses.

Where things go under OUT (``OUT/<key>/<layer path>/``, ``manifest.jsonl``, ``summary.json``),
and how a file gets there: through a temporary name in its own folder and a rename, so an
interrupted run leaves whole files or none. Nothing is ever written outside OUT.
It sits at the bottom of the package (it imports only :mod:`featviz.errors` and
:mod:`featviz.png`), so the result, the batch engine and the report can all use it.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from featviz.errors import UsageError
from featviz.png import encode_png

SUMMARY = "summary.json"
MANIFEST = "manifest.jsonl"
TMP_MARK = ".featviz-tmp"


# --- layout -------------------------------------------------------------------------------

def _clean_component(part: str) -> str:
    cleaned = part.replace("\x00", "").replace("/", "_").replace("\\", "_")
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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The folder is created only when the first attempt finds it missing: a batch writes tens of
    files per folder, and a ``mkdir`` per file was measurable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_MARK}")
    try:
        try:
            handle = open(tmp, "wb")
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(tmp, "wb")
        with handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files an interrupted run left in ``directory`` (and ``channels/``)."""
    for folder in (directory, directory / "channels"):
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.endswith(TMP_MARK):
                    entry.unlink(missing_ok=True)


def png_bytes(image: Image.Image | np.ndarray, level: int) -> bytes:
    """PNG bytes through featviz's own encoder (:mod:`featviz.png`: one filter, ISA-L deflate),
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
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished result: a readable summary whose files all exist."""
    return complete_summary(directory) is not None


def complete_summary(directory: Path) -> dict[str, Any] | None:
    """The summary of a finished result in ``directory`` (one whose listed files all exist), else None."""
    try:
        summary = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
        if all((directory / name).is_file() for name in summary.get("files", [])):
            return summary
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return None
