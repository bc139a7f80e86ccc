"""The HTML report: ``OUT/index.html``, one static, self-contained page over ``OUT/manifest.jsonl``.

The page is a view of the manifest: one entry per (image, layer) with its grid, both attention
overlays, the channel-weight chart, the top channels (links to their tiles), the model, weights,
layer and activation shape, and the predictions when there are any; failed images are listed
apart with their messages.

Design:

* **Nothing leaves the machine.** The CSS and the script are inline, there are no fonts, no CDN,
  and the page's Content-Security-Policy forbids loading anything but images from the page's own
  folder (``img-src 'self' file:``), so even a hostile manifest cannot make it fetch a URL.
  Images are referenced by relative, percent-encoded paths (``urllib.parse.quote`` on each
  segment), so the output folder can be moved or zipped.
* **Thousands of entries stay fast.** The entries are embedded as one JSON array in a
  ``<script type="application/json">`` and rendered client-side a page at a time (50 entries)
  with ``<img loading="lazy">``: the file grows by a few hundred bytes per entry, the browser
  only builds (and decodes the images of) one page, and the filter by file name searches every
  entry at once without a server. Static HTML pages could not offer that filter (nor survive
  being rewritten every few seconds without a long list of files going stale). With scripts
  off, a ``<noscript>`` note says where the results are. All text reaches the page through
  ``textContent`` and attributes through ``setAttribute``; the JSON is escaped so that no
  ``</script>`` in a file name can end the block.
* **Rewritten as the batch goes on.** :class:`ReportWriter` reads the manifest incrementally
  (line by line, from where it stopped) and rewrites the page at most every ``interval``
  seconds, and always on ``close()``, so an interrupted export still has a page for what was
  done. The filter and the page number live in the URL's fragment, so reloading keeps them.
* **Deterministic.** The page depends only on what the manifest says (sorted; no timestamps, no
  timings), and is written only when its bytes change: two identical exports give identical
  reports, and a ``--skip-existing`` run that does nothing does not touch it.

Manifest semantics: lines are deduplicated by (key, layer), the last one wins. ``skipped`` lines
refer to an earlier complete result and are shown if their folder still has ``summary.json``;
a layer's ``error`` line goes to the failed list; an image's ``error`` line (no layer) too,
unless a later line shows the image done. A truncated last line (an interrupted run) is ignored;
a line glued to such a fragment by a later run is recovered.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from featviz import __version__
from featviz.export import MANIFEST, SUMMARY, atomic_write

REPORT = "index.html"
PAGE_SIZE = 50
DEFAULT_TITLE = "featviz report"

#: The pictures of a result shown on the page, in order, with their captions.
VIEWS: tuple[tuple[str, str], ...] = (
    ("grid.png", "Channel grid"),
    ("spatial_attention.png", "Spatial attention"),
    ("channel_attention.png", "Channel attention"),
    ("channel_weights.png", "Channel weights"),
    ("stn_grid.png", "STN sampling grid"),
    ("se_reweight.png", "SE re-weighting"),
)
#: Other files of a result that get a plain link.
LINKS: tuple[str, ...] = (SUMMARY, "channel_weights.csv", "activations.npy", "attention.npz")

_CHANNEL_FILE = re.compile(r"channels/(\d+)\.png")
_RECORD_START = '{"input"'


# --- public API ---------------------------------------------------------------------------

def write_report(out: Path, title: str | None = None) -> Path:
    """(Re)write ``OUT/index.html`` from ``OUT/manifest.jsonl``; returns its path.

    The write is atomic (:func:`featviz.export.atomic_write`) and skipped when the page would not
    change. Without a manifest the page says that there are no results yet.
    """
    out = Path(out)
    index = _ManifestIndex(out / MANIFEST)
    index.read(final=True)
    target = out / REPORT
    _write_if_changed(target, render_html(index.data(), title), None)
    return target


class ReportWriter:
    """Keeps ``OUT/index.html`` up to date while an export appends to the manifest.

    :meth:`update` is meant to be called after each manifest line: it costs a clock read unless
    a rewrite is due (the first call, then at most every ``interval`` seconds, and never more
    often than keeps the rewrites under about a tenth of the time). :meth:`close` always brings
    the page up to date. Failures to write the page are warnings, never errors: the report must
    not break the export. Nothing is written while there is no manifest.
    """

    def __init__(self, out: Path, interval: float = 2.0, *, title: str | None = None) -> None:
        self.out = Path(out)
        self.interval = interval
        self.title = title
        self.writes = 0  # how many times the page was actually (re)written
        self._index = _ManifestIndex(self.out / MANIFEST)
        self._due = 0.0
        self._last: bytes | None = None
        self._closed = False
        self._lock = threading.Lock()

    def update(self) -> None:
        if time.monotonic() < self._due:
            return
        with self._lock:
            if not self._closed and time.monotonic() >= self._due:
                self._refresh(final=False)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._refresh(final=True)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _refresh(self, final: bool) -> None:
        started = time.monotonic()
        target = self.out / REPORT
        try:
            if self._index.read(final=final):
                data = render_html(self._index.data(), self.title)
                if _write_if_changed(target, data, self._last):
                    self.writes += 1
                self._last = data
        except Exception as exc:  # noqa: BLE001 - the report must never break the export it describes
            warnings.warn(f"featviz: cannot write the report {target}: {exc}", RuntimeWarning, stacklevel=3)
        elapsed = time.monotonic() - started
        # Rewrites stay under ~10% of the run however large the page gets; interval 0: every update.
        self._due = time.monotonic() + (max(self.interval, 10 * elapsed) if self.interval > 0 else 0.0)


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
            handle = open(self.path, "rb")
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
        entries, failed = [], []
        for seq, item in self.results.values():
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
           files: Iterable[Any], top_files: Iterable[Any], predictions: Any) -> dict[str, Any]:
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
        "shape": [int(s) for s in shape] if isinstance(shape, list) and all(isinstance(s, int) for s in shape) else None,
        "model": _text(model),
        "weights": _text(weights),
        "dir": None if folder is None else folder + "/",
        "views": [v for v in views if v[1]] if folder else [],
        "links": [v for v in links if v[1]] if folder else [],
        "top": top if folder else [],
        "pred": pred,
        "_output": output,
    }


def _entry_from_record(record: dict[str, Any]) -> dict[str, Any]:
    return _entry(record, model=record.get("model"), weights=record.get("weights"),
                  index=record.get("layer_index"), type_name=record.get("layer_type"), shape=record.get("shape"),
                  files=record.get("files") or [], top_files=record.get("top_channel_files") or [],
                  predictions=record.get("predictions"))


def _entry_from_summary(record: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """An entry for a ``skipped`` line (or an old manifest's ``ok`` line) from its summary."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    layer = summary.get("layer") if isinstance(summary.get("layer"), dict) else {}
    drawn = set(summary.get("drawn_channels") or [])
    top = [f"channels/{c:04d}.png" for c in summary.get("top_channels") or [] if isinstance(c, int) and c in drawn]
    return _entry(record, model=summary.get("model"), weights=summary.get("weights"), index=layer.get("index"),
                  type_name=layer.get("type"), shape=summary.get("activation_shape"),
                  files=summary.get("files") or [], top_files=top, predictions=summary.get("predictions"))


# --- writing the page ---------------------------------------------------------------------

def _write_if_changed(target: Path, data: bytes, last: bytes | None) -> bool:
    """Atomically write ``data`` unless ``target`` already holds it; True when written."""
    if last is not None and last == data and target.is_file():
        return False
    if last is None:
        try:
            if target.stat().st_size == len(data) and target.read_bytes() == data:
                return False
        except OSError:
            pass
    atomic_write(target, data)
    return True


def _json_for_script(document: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict[str, Any], title: str | None = None) -> bytes:
    """The page for :func:`report_data`'s ``data``, as UTF-8 bytes."""
    values = {
        "TITLE": html.escape(title or DEFAULT_TITLE),
        "COUNT": str(len(data["entries"])),
        "FAILED": str(len(data["failed"])),
        "PAGE_SIZE": str(PAGE_SIZE),
        "VERSION": html.escape(__version__),
        "MANIFEST": quote(MANIFEST),
        "DATA": _json_for_script(data),
    }
    page = re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], _TEMPLATE)  # one pass: data is never re-scanned
    return page.encode("utf-8")


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'">
<meta name="generator" content="featviz @@VERSION@@">
<title>@@TITLE@@</title>
<style>
:root {
  --bg: #f5f6f8; --card: #fff; --ink: #1d2330; --muted: #5f6b7a; --line: #dfe3ea;
  --accent: #2f5fd0; --chip: #eef1f6; --bad: #b42318; --bad-bg: #fef3f2; --well: #eceff3;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #14171c; --card: #1c2027; --ink: #e6e9ee; --muted: #9aa4b2; --line: #2d333d;
          --accent: #8ab4ff; --chip: #262b34; --bad: #ff8a80; --bad-bg: #2a1917; --well: #111418; }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.wrap { max-width: 1240px; margin: 0 auto; padding: 0 20px; }
.top { padding: 22px 0 10px; }
h1 { font-size: 22px; margin: 0 0 4px; font-weight: 650; letter-spacing: -0.01em; }
.sub { color: var(--muted); margin: 0; }
.bar { position: sticky; top: 0; z-index: 2; background: var(--bg); border-bottom: 1px solid var(--line);
       padding: 10px 0; }
.bar .wrap { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
input[type=search] { flex: 1 1 280px; max-width: 420px; padding: 7px 10px; font: inherit; color: inherit;
       background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
input[type=search]:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
.status { color: var(--muted); flex: 1 1 auto; }
.pager { display: flex; gap: 4px; align-items: center; }
.pager button { font: inherit; color: var(--ink); background: var(--card); border: 1px solid var(--line);
       border-radius: 6px; min-width: 32px; padding: 4px 8px; cursor: pointer; }
.pager button:disabled { opacity: .4; cursor: default; }
.pager span { color: var(--muted); padding: 0 6px; white-space: nowrap; }
main { padding: 16px 0 8px; }
.failed { background: var(--bad-bg); border: 1px solid var(--line); border-left: 4px solid var(--bad);
       border-radius: 8px; padding: 10px 14px; margin-bottom: 16px; }
.failed summary { cursor: pointer; font-weight: 600; color: var(--bad); }
.failed ul { margin: 8px 0 0; padding-left: 18px; }
.failed li { margin: 3px 0; overflow-wrap: anywhere; }
.failed .msg { color: var(--muted); }
.entry { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px;
       margin-bottom: 14px; box-shadow: 0 1px 2px rgba(16, 24, 40, .04); }
.entry h2 { font-size: 15px; margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.result { border-top: 1px solid var(--line); margin-top: 12px; padding-top: 4px; }
.entry h2 + .result { border-top: 0; margin-top: 0; padding-top: 0; }
.meta { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0 12px; }
a.chip.layer { background: var(--accent); color: #fff; font-weight: 600; }
@media (prefers-color-scheme: dark) { a.chip.layer { color: #10131a; } }
.chip { background: var(--chip); border-radius: 999px; padding: 1px 9px; font-size: 12.5px; color: var(--ink);
       overflow-wrap: anywhere; }
.chip b { font-weight: 600; color: var(--muted); margin-right: 4px; }
.views { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 12px; }
figure { margin: 0; }
figure.wide { grid-column: span 2; }
figure a { display: block; background: var(--well); border-radius: 6px; overflow: hidden; }
figure img { display: block; width: 100%; height: 210px; object-fit: contain; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
.row { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: flex-start; margin-top: 12px; }
.row > .label { color: var(--muted); font-size: 12.5px; min-width: 92px; padding-top: 2px; }
.tops { display: flex; flex-wrap: wrap; gap: 6px; flex: 1; }
.tops a { display: flex; flex-direction: column; align-items: center; font-size: 11.5px; color: var(--muted); }
.tops img { width: 52px; height: 52px; object-fit: cover; border-radius: 4px; background: var(--well);
       border: 1px solid var(--line); }
.preds-row { margin: 8px 0 4px; }
.preds { display: flex; flex-wrap: wrap; gap: 6px; flex: 1; }
.pred { background: var(--chip); border-radius: 6px; padding: 1px 8px; font-size: 12.5px; }
.pred .p { color: var(--muted); margin-left: 6px; font-variant-numeric: tabular-nums; }
.files { display: flex; flex-wrap: wrap; gap: 4px 14px; flex: 1; }
.empty, .note { color: var(--muted); padding: 28px 0; text-align: center; }
noscript .note { display: block; background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
html:not(.js) .bar, html:not(.js) #fv-bottom { display: none; }
footer { color: var(--muted); font-size: 12px; padding: 10px 0 30px; }
</style>
</head>
<body>
<div class="wrap top">
<h1>@@TITLE@@</h1>
<p class="sub" id="fv-sub">@@COUNT@@ results, @@FAILED@@ failed</p>
</div>
<div class="bar"><div class="wrap">
<input type="search" id="fv-filter" placeholder="Filter by file name" aria-label="Filter by file name" autocomplete="off" spellcheck="false">
<span class="status" id="fv-status" aria-live="polite"></span>
<nav class="pager" aria-label="Pages">
<button type="button" id="fv-first" title="First page" aria-label="First page">&laquo;</button>
<button type="button" id="fv-prev" title="Previous page" aria-label="Previous page">&lsaquo;</button>
<span id="fv-page"></span>
<button type="button" id="fv-next" title="Next page" aria-label="Next page">&rsaquo;</button>
<button type="button" id="fv-last" title="Last page" aria-label="Last page">&raquo;</button>
</nav>
</div></div>
<main class="wrap">
<noscript><p class="note">JavaScript is off, and this page draws its @@COUNT@@ results with a small script of its own
(nothing is loaded from elsewhere). Every result is a folder next to this page;
<a href="@@MANIFEST@@">manifest.jsonl</a> lists them all, one line each.</p></noscript>
<div id="fv-failed"></div>
<div id="fv-entries"></div>
<div class="pager" id="fv-bottom" hidden>
<button type="button" id="fv-prev2" aria-label="Previous page">&lsaquo; Previous</button>
<span id="fv-page2"></span>
<button type="button" id="fv-next2" aria-label="Next page">Next &rsaquo;</button>
</div>
</main>
<footer class="wrap">Made by featviz @@VERSION@@ from <a href="@@MANIFEST@@">manifest.jsonl</a>; every picture links to its file.</footer>
<pre id="fv-selftest" hidden></pre>
<script type="application/json" id="fv-data">@@DATA@@</script>
<script>
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var problems = [];
  function note(kind, text) { if (problems.length < 50) problems.push(kind + ": " + String(text).slice(0, 300)); }
  var originalError = console.error;
  console.error = function () {
    note("console.error", Array.prototype.map.call(arguments, String).join(" "));
    return originalError.apply(console, arguments);
  };
  window.addEventListener("error", function (event) {
    var target = event.target;
    if (target && target !== window && target.tagName) note("load", target.getAttribute("src") || target.tagName);
    else note("error", event.message);
  }, true);
  window.addEventListener("unhandledrejection", function (event) { note("rejection", event.reason); });
  document.addEventListener("securitypolicyviolation", function (event) { note("csp", event.blockedURI); });

  var data = JSON.parse(document.getElementById("fv-data").textContent);
  var entries = data.entries, failed = data.failed;
  var lowered = entries.map(function (e) { return e.name.toLowerCase(); });
  var params = new URLSearchParams(location.hash.slice(1));
  var selftest = params.has("selftest");
  var state = {q: params.get("q") || "", page: parseInt(params.get("page"), 10) || 1,
               size: Math.max(1, parseInt(params.get("size"), 10) || @@PAGE_SIZE@@)};
  var $ = function (id) { return document.getElementById(id); };
  var view = {matches: [], pages: 1};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) for (var name in attrs) if (attrs[name] !== null && attrs[name] !== undefined) node.setAttribute(name, attrs[name]);
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }
  function image(src, alt, cls) {
    return el("img", {src: src, alt: alt, loading: selftest ? "eager" : "lazy", "class": cls});
  }
  function chip(label, value) { return el("span", {"class": "chip"}, [el("b", null, [label]), value]); }
  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  var models = {}, images = {};
  entries.forEach(function (e) { models[e.model + " \\u00b7 " + e.weights] = 1; images[e.key] = 1; });
  var modelNames = Object.keys(models);
  var sub = plural(entries.length, "result") + " from " + plural(Object.keys(images).length, "image");
  if (failed.length) sub += " \\u00b7 " + failed.length + " failed";
  if (modelNames.length === 1) sub += " \\u00b7 " + modelNames[0];
  else if (modelNames.length > 1) sub += " \\u00b7 " + modelNames.length + " model/weights combinations";
  $("fv-sub").textContent = sub;

  function layerSection(e) {
    var meta = [e.dir ? el("a", {"class": "chip layer", href: e.dir, title: "Open this layer's folder"}, [e.layer]) : chip("layer", e.layer)];
    if (e.index !== null) meta.push(chip("index", String(e.index)));
    if (e.type) meta.push(chip("type", e.type));
    if (e.shape) meta.push(chip("shape", e.shape.join("\\u00d7")));
    meta.push(chip("model", e.model), chip("weights", e.weights));
    var parts = [el("div", {"class": "meta"}, meta)];
    if (e.views.length) {
      parts.push(el("div", {"class": "views"}, e.views.map(function (v) {
        var href = e.dir + v[1];
        return el("figure", {"class": /weights/i.test(v[0]) ? "wide" : null},
                  [el("a", {href: href}, [image(href, v[0] + " of " + e.name + ", " + e.layer)]),
                   el("figcaption", null, [v[0]])]);
      })));
    } else {
      parts.push(el("p", {"class": "note"}, ["Its files are not inside this report's folder."]));
    }
    if (e.top.length) {
      parts.push(el("div", {"class": "row"}, [el("span", {"class": "label"}, ["Top channels"]),
        el("div", {"class": "tops"}, e.top.map(function (t) {
          var href = e.dir + t[1];
          return el("a", {href: href, title: "Channel " + t[0]}, [image(href, "channel " + t[0]), "#" + t[0]]);
        }))]));
    }
    if (e.links.length) {
      parts.push(el("div", {"class": "row"}, [el("span", {"class": "label"}, ["Files"]),
        el("div", {"class": "files"}, e.links.map(function (l) { return el("a", {href: e.dir + l[1], "class": "mono"}, [l[0]]); }))]));
    }
    return el("section", {"class": "result", "data-name": e.name}, parts);
  }

  function predictions(e) {
    return el("div", {"class": "row preds-row"}, [el("span", {"class": "label"}, ["Predictions"]),
      el("div", {"class": "preds"}, e.pred.map(function (p) {
        return el("span", {"class": "pred"}, [p[0], el("span", {"class": "p"}, [(100 * p[1]).toFixed(1) + "%"])]);
      }))]);
  }

  // One card per image; its layers (consecutive entries with the same key) inside it.
  function cards(list) {
    var fragment = document.createDocumentFragment(), article = null, key = null, predicted = false;
    list.forEach(function (e) {
      if (article === null || e.key !== key) {
        key = e.key;
        predicted = false;
        article = el("article", {"class": "entry"}, [el("h2", null, [e.name || e.key])]);
        fragment.appendChild(article);
      }
      if (e.pred.length && !predicted) { article.appendChild(predictions(e)); predicted = true; }
      article.appendChild(layerSection(e));
    });
    return fragment;
  }

  function renderFailed(q) {
    var box = $("fv-failed");
    box.textContent = "";
    var shown = failed.filter(function (f) { return !q || f.name.toLowerCase().indexOf(q) >= 0; });
    if (!shown.length) return;
    var limit = 500;
    var items = shown.slice(0, limit).map(function (f) {
      var bits = [el("code", null, [f.name || f.key])];
      if (f.layer) bits.push(" \\u00b7 " + f.layer);
      var message = f.name && f.error.indexOf(f.name + ": ") === 0 ? f.error.slice(f.name.length + 2) : f.error;
      bits.push(el("br"), el("span", {"class": "msg"}, [message]));
      return el("li", null, bits);
    });
    if (shown.length > limit) items.push(el("li", null, ["\\u2026 and " + (shown.length - limit) + " more (filter to narrow the list)"]));
    box.appendChild(el("details", {"class": "failed", open: ""}, [
      el("summary", null, [plural(shown.length, "failed image") + (q ? " matching the filter" : "")]),
      el("ul", null, items)]));
  }

  function render() {
    var q = state.q.trim().toLowerCase();
    var matches = [];
    for (var i = 0; i < entries.length; i++) if (!q || lowered[i].indexOf(q) >= 0) matches.push(i);
    var pages = Math.max(1, Math.ceil(matches.length / state.size));
    state.page = Math.min(Math.max(1, state.page), pages);
    var start = (state.page - 1) * state.size, stop = Math.min(matches.length, start + state.size);
    var list = $("fv-entries");
    list.textContent = "";
    var page = [];
    for (var j = start; j < stop; j++) page.push(entries[matches[j]]);
    list.appendChild(cards(page));
    if (!matches.length) {
      list.appendChild(el("p", {"class": "empty"}, [entries.length ? "No file name contains \\u201c" + state.q.trim() + "\\u201d." : "No results yet."]));
    }
    renderFailed(q);
    var pageText = "Page " + state.page + " of " + pages;
    $("fv-status").textContent = matches.length ? "Showing " + (start + 1) + "\\u2013" + stop + " of " + matches.length +
      (q ? " matching (" + entries.length + " in all)" : "") : "";
    $("fv-page").textContent = $("fv-page2").textContent = pageText;
    $("fv-first").disabled = $("fv-prev").disabled = $("fv-prev2").disabled = state.page <= 1;
    $("fv-last").disabled = $("fv-next").disabled = $("fv-next2").disabled = state.page >= pages;
    $("fv-bottom").hidden = pages <= 1;
    view = {matches: matches, pages: pages};
    var next = new URLSearchParams(location.hash.slice(1));
    if (state.q) next.set("q", state.q); else next.delete("q");
    if (state.page > 1) next.set("page", String(state.page)); else next.delete("page");
    var hash = next.toString();
    if (hash !== location.hash.slice(1)) history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  function go(page) { state.page = page; render(); window.scrollTo(0, 0); }
  $("fv-first").onclick = function () { go(1); };
  $("fv-prev").onclick = $("fv-prev2").onclick = function () { go(state.page - 1); };
  $("fv-next").onclick = $("fv-next2").onclick = function () { go(state.page + 1); };
  $("fv-last").onclick = function () { go(view.pages); };
  var filter = $("fv-filter");
  filter.value = state.q;
  filter.addEventListener("input", function () { state.q = filter.value; state.page = 1; render(); });
  var started = performance.now();
  render();
  var renderMs = performance.now() - started;

  // Test hook: with #selftest[=QUERY] in the URL, the page checks itself (every picture of
  // the page loaded, no error), types QUERY into the filter, and writes what it found as JSON
  // into #fv-selftest for a headless browser's --dump-dom.
  function loaded() {
    var imgs = Array.prototype.slice.call(document.querySelectorAll("#fv-entries img"));
    return Promise.all(imgs.map(function (img) {
      return img.complete ? null : new Promise(function (done) { img.addEventListener("load", done); img.addEventListener("error", done); });
    })).then(function () {
      return {images: imgs.length,
              broken: imgs.filter(function (img) { return !(img.naturalWidth > 0); }).map(function (img) { return img.getAttribute("src"); })};
    });
  }
  function shown() {
    return Array.prototype.map.call(document.querySelectorAll("#fv-entries section.result"), function (a) { return a.getAttribute("data-name"); });
  }
  if (selftest) {
    var report = {total: entries.length, failed: failed.length, pages: view.pages, render_ms: renderMs};
    loaded().then(function (first) {
      report.first = {shown: shown(), images: first.images, broken: first.broken,
                      failed_items: document.querySelectorAll("#fv-failed li").length};
      var query = params.get("selftest");
      if (!query) return null;
      filter.value = query;
      filter.dispatchEvent(new Event("input"));
      return loaded().then(function (second) {
        report.filtered = {query: query, shown: shown(), matching: view.matches.length, images: second.images, broken: second.broken};
      });
    }).then(function () {
      if (view.pages > 1) {
        $("fv-next").click();
        report.page2 = {page: state.page, shown: shown().length, status: $("fv-status").textContent};
      }
    }).catch(function (error) { note("selftest", error); }).then(function () {
      report.problems = problems;
      report.title = document.title;
      $("fv-selftest").textContent = JSON.stringify(report);
    });
  }
})();
</script>
</body>
</html>
"""
