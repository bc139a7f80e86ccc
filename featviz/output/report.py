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

What the page shows, and how the manifest is read (the last line per key and layer wins), is
:mod:`featviz.output.reportdata`.
"""

from __future__ import annotations

import functools
import html
import json
import re
import threading
import time
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from featviz import __version__
from featviz.output.layout import MANIFEST, atomic_write
from featviz.output.reportdata import LINKS, VIEWS, _ManifestIndex, report_data

__all__ = ["DEFAULT_TITLE", "LINKS", "PAGE_SIZE", "REPORT", "VIEWS", "ReportWriter", "render_html", "report_data",
           "write_report"]

REPORT = "index.html"
PAGE_SIZE = 50
DEFAULT_TITLE = "featviz report"


# --- public API ---------------------------------------------------------------------------

def write_report(out: Path, title: str | None = None) -> Path:
    """(Re)write ``OUT/index.html`` from ``OUT/manifest.jsonl``; returns its path.

    The write is atomic (:func:`featviz.output.export.atomic_write`) and skipped when the page would not
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

    def discard(self) -> None:
        """Stop without the final rewrite: the output folder is full or read-only, where writing
        the page would only fail again. The next run into the folder rewrites it."""
        with self._lock:
            self._closed = True

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


@functools.lru_cache(maxsize=1)
def _template() -> str:
    """The page (HTML, CSS and script in one file, ``featviz/report.html``) with ``@@NAME@@``
    placeholders; a file of its own so that it reads as HTML, not as a Python string."""
    return files("featviz.output").joinpath("report.html").read_text(encoding="utf-8")


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
    page = re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], _template())  # one pass: data is never re-scanned
    return page.encode("utf-8")
