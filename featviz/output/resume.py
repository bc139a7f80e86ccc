"""What ``export --skip-existing`` knows of a finished result: the photo's fingerprint and the
manifest line a skipped photo gets.

A finished folder is skipped only when it was made with this run's settings AND from the same
photo: a photo replaced under the same name (a re-download, an edit) must be done again, so its
summary records the photo's size and modification time (nanoseconds) as read, and a resume
compares them. Size + mtime is what ``make`` and ``rsync`` trust; it costs one ``stat`` and no
read, and misses only a change that keeps both (a same-size rewrite with the time set back).

The manifest's last line per (key, layer) wins, so the ``skipped`` line of a resumed photo
repeats the finished record (shape, top channels, what the report shows), rebuilt from the
folder's ``summary.json``: a skip never leaves a stub as the photo's final record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["changed_photo", "photo_fingerprint", "skipped_fields"]

FINGERPRINT = "source"  # the summary's field


def photo_fingerprint(path: str | os.PathLike[str]) -> dict[str, int] | None:
    """``{"size": bytes, "mtime_ns": int}`` of the file at ``path``, or None when it cannot be
    read (stdin, a vanished file: the read that follows reports it)."""
    try:
        stat = os.stat(Path(path))
    except (OSError, ValueError):
        return None
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def changed_photo(recorded: Any, current: Mapping[str, int] | None) -> str | None:
    """None when the summary's fingerprint ``recorded`` matches the photo now; else why the
    result is redone (a reason shown in the run's counts and the manifest line)."""
    if current is None or recorded == dict(current):
        return None
    if not isinstance(recorded, Mapping):
        return "its summary records no fingerprint of the photo (written by an older featviz)"
    if recorded.get("size") != current["size"]:
        return "the photo changed (size)"
    return "the photo changed (modification time)"


def skipped_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a finished result's ``ok`` manifest line, from its summary.json: ``shape``,
    ``top_channels`` and the report's fields (model, weights, layer index and type, files,
    top channel files, predictions, non-finite counts, class maps with their brief scores)."""
    top = list(summary.get("top_channels") or [])
    drawn = set(summary.get("drawn_channels") or [])
    layer = summary.get("layer")
    if not isinstance(layer, Mapping):
        layer = {}
    fields: dict[str, Any] = {
        "shape": summary.get("activation_shape"),
        "top_channels": top,
        "model": summary.get("model"),
        "weights": summary.get("weights"),
        "layer_index": layer.get("index"),
        "layer_type": layer.get("type"),
        "files": [name for name in summary.get("files") or [] if not str(name).startswith("channels/")],
        "top_channel_files": [f"channels/{c:04d}.png" for c in top if c in drawn],
    }
    for name in ("predictions", "nonfinite"):
        if summary.get(name):
            fields[name] = summary[name]
    cams = summary.get("cams")
    if cams:
        fields["cams"] = [{k: cam.get(k) for k in ("method", "target", "rank", "label", "logit", "probability", "file")}
                          | ({"scores": {k: cam["scores"].get(k) for k in ("deletion_auc", "insertion_auc", "steps",
                                                                             "baseline")}}
                             if isinstance(cam.get("scores"), Mapping) else {})
                          for cam in cams if isinstance(cam, Mapping)]
    return fields
