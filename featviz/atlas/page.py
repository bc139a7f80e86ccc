"""The atlas page: ``OUT/index.html``, one self-contained page over the layers' ``atlas.json``.

Like the report (:mod:`featviz.output.report`): inline CSS and script, a Content-Security-Policy that
loads nothing but images from disk, the data embedded as one JSON block (escaped so that no
``</script>`` in a file name can end it), text set through ``textContent``. Every channel of every
layer is a card (its top patches, ``channels/NNNN.png``, loaded lazily); a click opens the
channel's top N with the full photos (linked relatively from OUT, so OUT and the photos can move
together) and the receptive-field box drawn over each; a filter takes channel numbers and ranges
("42", "10-20", "dead"); dead channels are marked. The page depends only on the documents, so
equal atlases give equal pages.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from featviz import __version__
from featviz.inputs.names import path_from_fields
from featviz.output.layout import atomic_write

PAGE = "index.html"


def _url(relative: str) -> str:
    return "/".join(quote(part, errors="surrogateescape") for part in relative.split("/"))  # raw bytes: %FF


def _photo_url(out: Path, photo: str) -> str:
    """The photo relative to OUT, percent-encoded (an absolute file: URL across drives)."""
    try:
        relative = os.path.relpath(Path(photo).resolve(), out.resolve())
    except ValueError:
        return Path(photo).resolve().as_uri()
    return _url(Path(relative).as_posix())


def page_data(out: Path, documents: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """What the page embeds: per layer its folder, shape, counts and, per channel, the
    statistics and the top entries (key, score, y, x, box, photo URL)."""
    layers = []
    for folder, document in documents:
        stats = document["statistics"]
        dead = set(stats["dead"])
        optimized = document.get("optimized", {})
        channels = []
        for c, entries in enumerate(document["channels"]):
            channels.append({
                "dead": c in dead, "mean": stats["mean"][c], "max": stats["max"][c],
                "positive": stats["positive_fraction"][c],
                "top": [{"key": e["key"], "score": e["score"], "y": e["y"], "x": e["x"], "box": e["box"],
                         "photo": _photo_url(out, path_from_fields(e))} for e in entries],
                **({"optimized": {"src": _url(optimized[str(c)]["file"]), "r": optimized[str(c)]["r"],
                                  "activation": optimized[str(c)]["activation"]}} if str(c) in optimized else {}),
            })
        layers.append({"layer": document["layer"], "dir": _url(folder) + "/", "shape": document["shape"],
                       "images": document["images"], "by": document["by"], "top": document["top"],
                       "model": document["model"], "weights": document["weights"], "channels": channels})
    return {"layers": layers}


def _json_for_script(document: Any) -> str:
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.lru_cache(maxsize=1)
def _template() -> str:
    return files("featviz.atlas").joinpath("atlas.html").read_text(encoding="utf-8")


def render_page(data: dict[str, Any], title: str = "featviz atlas") -> bytes:
    values = {"TITLE": html.escape(title), "VERSION": html.escape(__version__), "DATA": _json_for_script(data)}
    return re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], _template()).encode("utf-8")


def write_page(out: Path, documents: Sequence[tuple[str, dict[str, Any]]]) -> Path:
    """Write OUT/index.html for ``documents`` ((folder relative to OUT, atlas.json document))."""
    target = Path(out) / PAGE
    atomic_write(target, render_page(page_data(Path(out), documents)))
    return target
