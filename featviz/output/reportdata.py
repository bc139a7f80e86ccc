"""What the HTML report shows, read from ``OUT/manifest.jsonl``: its entries and failures.

:mod:`featviz.output.report` turns this data into the page and keeps it up to date; reading the
manifest (incrementally, tolerating an interrupted run's last line) and turning each record into
an entry with safe, relative, percent-encoded links is a job of its own, kept here.

Manifest semantics: lines are deduplicated by (key, layer), the last one wins. ``skipped`` lines
refer to an earlier complete result and are shown if their folder still has ``summary.json``;
a layer's ``error`` line goes to the failed list; an image's ``error`` line (no layer) too,
unless a later line shows the image done. A truncated last line (an interrupted run) is ignored;
a line glued to such a fragment by a later run is recovered.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from featviz.output.layout import MANIFEST, SUMMARY

#: The pictures of a result shown on the page, in order, with their captions.
VIEWS: tuple[tuple[str, str], ...] = (
    ("grid.png", "Channel grid"),
    ("spatial_attention.png", "Spatial attention"),
    ("channel_attention.png", "Channel attention"),
    ("channel_weights.png", "Channel weights"),
    ("stn_grid.png", "STN sampling grid"),
    ("se_reweight.png", "SE re-weighting"),
    ("pca.png", "Token PCA colours"),
)
#: Other files of a result that get a plain link.
LINKS: tuple[str, ...] = (SUMMARY, "channel_weights.csv", "activations.npy", "attention.npz")

_CHANNEL_FILE = re.compile(r"channels/(\d+)\.png")
_RECORD_START = '{"input"'


def report_data(out: Path) -> dict[str, Any]:
    """What the page embeds, from ``OUT/manifest.jsonl``: ``{"entries": [...], "failed": [...]}``.

    Each entry has ``name`` (the input file), ``key``, ``layer``, ``index``, ``type``,
    ``shape``, ``model``, ``weights``, ``dir`` (the result's folder, a percent-encoded path
    relative to OUT ending in ``/``, or None when the manifest points outside OUT), ``views``
    and ``links`` (``[caption, encoded file name]``), ``top`` (``[channel, encoded file]``) and
    ``pred`` (``[label, probability]``). Each failure has ``name``, ``key``, ``layer`` and
    ``error``.
    """
    index = _ManifestIndex(Path(out) / MANIFEST)
    index.read(final=True)
    return index.data()


# --- reading the manifest -----------------------------------------------------------------

class _ManifestIndex:
    """The report's view of a manifest, kept up to date by reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.parent
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.identity: tuple[int, int] | None = None
        self.seq = 0
        self.results: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}  # entries and layer errors
        self.image_errors: dict[str, tuple[int, dict[str, Any]]] = {}
        self.last_done: dict[str, int] = {}  # key -> seq of its last ok/skipped line

    def read(self, final: bool) -> bool:
        """Take in the lines appended since the last call; False when there is no manifest.

        A last line without its newline may still be being written: it is left for the next
        call unless ``final``, when it is parsed if it is whole JSON and ignored otherwise.
        """
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed by the `with` below; only a missing file is caught here
        except FileNotFoundError:
            self._reset()
            return False
        with handle:
            stat = os.fstat(handle.fileno())
            if stat.st_size < self.offset or (stat.st_dev, stat.st_ino) != self.identity:  # replaced: start over
                self._reset()
            self.identity = (stat.st_dev, stat.st_ino)
            handle.seek(self.offset)
            for raw in handle:
                if not raw.endswith(b"\n") and not final:
                    break
                self.offset += len(raw)
                record = _parse_line(raw)
                if record is not None:
                    self._add(record)
        return True

    def _add(self, record: dict[str, Any]) -> None:
        self.seq += 1
        status = record.get("status")
        key = _text(record.get("key") if record.get("key") is not None else record.get("input"))
        layer = record.get("layer")
        if status == "error":
            failure = {"name": _text(record.get("input")), "key": key,
                       "layer": None if layer is None else _text(layer), "error": _text(record.get("error"))}
            if layer is None:
                self.image_errors[key] = (self.seq, failure)
            else:
                self.results[(key, _text(layer))] = (self.seq, failure)
            return
        if status not in ("ok", "skipped") or layer is None:
            return
        slot = (key, _text(layer))
        entry = None
        output = record.get("output")
        if status == "ok" and "files" in record:
            entry = _entry_from_record(record)
        elif isinstance(output, str):
            previous = self.results.get(slot)
            summary_path = _inside(self.folder, output, SUMMARY)
            if summary_path is not None and summary_path.is_file():
                if previous is not None and "dir" in previous[1] and previous[1].get("_output") == output:
                    entry = previous[1]  # the same folder, already described by an earlier line
                else:
                    entry = _entry_from_summary(record, summary_path)
        if entry is None:
            self.results.pop(slot, None)  # the result is gone (or was never readable)
            return
        entry.setdefault("_order", _entry_order(entry))  # computed once, not at every rewrite
        self.results[slot] = (self.seq, entry)
        self.last_done[key] = self.seq

    def data(self) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for _, item in self.results.values():
            (failed if "error" in item else entries).append(item)
        for key, (seq, failure) in self.image_errors.items():
            if self.last_done.get(key, -1) < seq:
                failed.append(failure)
        entries.sort(key=lambda entry: entry["_order"])
        failed.sort(key=lambda f: (_natural(f["key"]), f["layer"] is not None, f["layer"] or "", f["name"]))
        public = [{k: v for k, v in entry.items() if not k.startswith("_")} for entry in entries]
        return {"entries": public, "failed": failed}


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    candidates = [text]
    glued = text.rfind(_RECORD_START, 1)  # a fragment of an interrupted run, then a whole line
    if glued > 0:
        candidates.append(text[glued:])
    for candidate in candidates:
        try:
            record = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key: case-insensitive, numbers by value (img2 before img10), then the exact text."""
    parts = re.split(r"(\d+)", text.casefold())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts) + ((2, 0, text),)


def _entry_order(entry: dict[str, Any]) -> tuple[Any, ...]:
    index = entry.get("index")
    return (_natural(entry["key"]), index is None, index if isinstance(index, int) else 0,
            _natural(entry["layer"]))


def _segments(relative: str) -> list[str] | None:
    """The parts of a POSIX path relative to OUT, or None if it could leave OUT."""
    if relative.startswith("/"):
        return None
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\\" in p for p in parts):
        return None
    return parts


@functools.lru_cache(maxsize=4096)  # the same few file names in every folder
def _url(relative: str) -> str | None:
    parts = _segments(relative)
    return None if parts is None else "/".join(quote(p, safe="") for p in parts)


def _inside(folder: Path, output: str, name: str) -> Path | None:
    parts = _segments(output)
    return None if parts is None else folder.joinpath(*parts, name)


def _entry(record: dict[str, Any], *, model: Any, weights: Any, index: Any, type_name: Any, shape: Any,
           files: Iterable[Any], top_files: Iterable[Any], predictions: Any, cams: Any = None) -> dict[str, Any]:
    output = record.get("output")
    folder = _url(output) if isinstance(output, str) else None
    names = [str(f) for f in files]
    present = set(names)
    views = [[caption, _url(name)] for name, caption in VIEWS if name in present]
    links = [[name, _url(name)] for name in LINKS if name in present or name == SUMMARY]
    top = []
    for name in top_files:
        match = _CHANNEL_FILE.fullmatch(str(name))
        if match and _url(str(name)):
            top.append([int(match.group(1)), _url(str(name))])
    pred = []
    if isinstance(predictions, list):
        for item in predictions:
            probability = item.get("probability") if isinstance(item, dict) else None
            if isinstance(probability, (int, float)) and math.isfinite(probability):
                pred.append([_text(item.get("label")), float(probability)])
    return {
        "name": _text(record.get("input")),
        "key": _text(record.get("key")),
        "layer": _text(record.get("layer")),
        "index": index if isinstance(index, int) else None,
        "type": _text(type_name),
        "shape": ([int(s) for s in shape] if isinstance(shape, list) and all(isinstance(s, int) for s in shape)
                  else None),
        "model": _text(model),
        "weights": _text(weights),
        "dir": None if folder is None else folder + "/",
        "views": [v for v in views if v[1]] if folder else [],
        "links": [v for v in links if v[1]] if folder else [],
        "top": top if folder else [],
        "pred": pred,
        "cams": _cam_rows(cams, present) if folder else [],
        "_output": output,
    }


def _entry_from_record(record: dict[str, Any]) -> dict[str, Any]:
    return _entry(record, model=record.get("model"), weights=record.get("weights"),
                  index=record.get("layer_index"), type_name=record.get("layer_type"), shape=record.get("shape"),
                  files=record.get("files") or [], top_files=record.get("top_channel_files") or [],
                  predictions=record.get("predictions"), cams=record.get("cams"))


def _cam_rows(cams: Any, present: set[str]) -> list[list[Any]]:
    """``--cam``: one row per target, [caption, [[method, url, AUC text], ...]]; the class-free
    Eigen-CAM gets its own row. Only files the result lists are shown."""
    rows: dict[Any, list[Any]] = {}
    for cam in cams if isinstance(cams, list) else []:
        if not isinstance(cam, dict) or str(cam.get("file")) not in present or not _url(str(cam.get("file"))):
            continue
        target = cam.get("target")
        if target is None:
            key, caption = None, "no class (principal component)"
        else:
            probability = cam.get("probability")
            rank = f"top{cam.get('rank')} " if isinstance(cam.get("rank"), int) else ""
            chance = (f" ({100 * probability:.1f}%)"
                      if isinstance(probability, (int, float)) and math.isfinite(probability) else "")
            key, caption = target, f"{rank}{_text(cam.get('label'))} [{target}]{chance}"
        rows.setdefault(key, [caption, []])[1].append([_text(cam.get("method")), _url(str(cam["file"])),
                                                       _auc_text(cam.get("scores"))])
    return list(rows.values())


def _auc_text(scores: Any) -> str:
    """``--cam-score``: "deletion 0.123 · insertion 0.456" under the overlay, or ""."""
    if not isinstance(scores, dict):
        return ""
    deletion, insertion = scores.get("deletion_auc"), scores.get("insertion_auc")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (deletion, insertion)):
        return ""
    return f"deletion {deletion:.3f} \u00b7 insertion {insertion:.3f}"


def _entry_from_summary(record: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """An entry for a ``skipped`` line (or an old manifest's ``ok`` line) from its summary."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    layer = summary.get("layer")
    if not isinstance(layer, dict):
        layer = {}
    drawn = set(summary.get("drawn_channels") or [])
    top = [f"channels/{c:04d}.png" for c in summary.get("top_channels") or [] if isinstance(c, int) and c in drawn]
    return _entry(record, model=summary.get("model"), weights=summary.get("weights"), index=layer.get("index"),
                  type_name=layer.get("type"), shape=summary.get("activation_shape"),
                  files=summary.get("files") or [], top_files=top, predictions=summary.get("predictions"),
                  cams=summary.get("cams"))

