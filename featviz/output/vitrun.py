"""The run average of ``--vit-stats``: ``OUT/attention_statistics.json`` and its chart.

Each photo's statistics are already on disk (``OUT/<image>/attention_statistics.json``, written
before that photo's summaries), so the average is recomputed at the end of every run **from the
files of every photo the manifest lists as done** (its last line per photo says ok or skipped),
not from what this process happened to see. That keeps the average right when a run is resumed
(``--skip-existing``: the skipped photos count, read back) and over shards writing into one OUT
(``--shard I/N``: each shard recomputes it at its end over everything finished by then, so the
shard that finishes last writes the average of the whole collection). ``featviz sweep`` writes
no manifest: it names the folders of the photos it swept instead.

The average is the plain mean over photos of each (block, head) value, taken from the per-photo
files (rounded to 6 decimals there, so the mean agrees with unrounded maths to about 1e-6).
Photos of another model, weights, token layout or block/head count than the run's are left out
and counted under ``left_out`` (``--no-crop`` photos of other sizes have another patch grid).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from featviz.errors import UsageError
from featviz.maps.tokenstats import STATISTICS
from featviz.output.layout import MANIFEST, atomic_write, ensure_inside, json_bytes, png_bytes
from featviz.output.tokencharts import statistics_chart
from featviz.output.vitfiles import STATISTICS_JSON, STATISTICS_PNG

__all__ = ["done_photo_folders", "run_average", "write_run_average"]

_SHAPE_KEYS = ("layout", "blocks", "heads", "block_names")


def done_photo_folders(out: Path) -> dict[str, Path]:
    """key -> photo folder, for every photo whose last manifest line says ok or skipped (a later
    error line for the photo drops it); folders that would lie outside OUT are ignored."""
    folders: dict[str, Path] = {}
    try:
        lines = (out / MANIFEST).read_bytes().splitlines()
    except OSError:
        return folders
    for raw in lines:
        try:
            record = json.loads(raw.decode("utf-8", errors="replace"))
        except ValueError:
            continue  # a line torn by a killed run
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            continue
        key, status, output = record["key"], record.get("status"), record.get("output")
        if status in ("ok", "skipped") and isinstance(output, str) and output:
            try:
                folders[key] = ensure_inside(out, out / output).parent
            except UsageError:
                folders.pop(key, None)
        elif status == "error":
            folders.pop(key, None)
    return folders


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or any(name not in document for name in (*STATISTICS, *_SHAPE_KEYS)):
        return None
    return document


def run_average(out: Path, model: str, weights: str, folders: Iterable[Path] | None = None) -> dict[str, Any] | None:
    """The mean statistics over the done photos of ``out`` made with ``model`` and ``weights``,
    JSON-ready (the per-photo format, ``photos`` = how many, ``left_out`` = photos with a
    statistics file that did not fit the run), or None when no photo has statistics.

    ``folders``: the photo folders to average instead of the manifest's done photos (``featviz
    sweep`` writes no manifest: the photos it swept)."""
    documents = []
    left_out: Counter[str] = Counter()
    for folder in done_photo_folders(out).values() if folders is None else folders:
        document = _read(folder / STATISTICS_JSON)
        if document is None:
            continue
        if document.get("model") != model or document.get("weights") != weights:
            left_out["another model or weights"] += 1
            continue
        documents.append(document)
    if not documents:
        return None
    shapes = Counter(json.dumps([d[k] for k in _SHAPE_KEYS]) for d in documents)
    common = shapes.most_common(1)[0][0]  # ties: the first seen, which is manifest order
    kept = [d for d in documents if json.dumps([d[k] for k in _SHAPE_KEYS]) == common]
    if len(kept) < len(documents):
        left_out["another token layout or block/head count"] += len(documents) - len(kept)
    first = kept[0]
    means = {name: torch.tensor([d[name] for d in kept], dtype=torch.float64).mean(0) for name in STATISTICS}
    return {
        "model": model, "weights": weights, "photos": len(kept), "left_out": dict(left_out),
        **{k: first[k] for k in ("blocks", "heads", "block_names", "layout", "queries", "max_entropy_nats")},
        **{name: [[round(float(v), 6) for v in row] for row in means[name]] for name in STATISTICS},
    }


def write_run_average(out: Path, model: str, weights: str, level: int = 1,
                      folders: Iterable[Path] | None = None) -> list[Path]:
    """Write ``OUT/attention_statistics.json`` and ``OUT/attention_statistics.png`` (the chart of
    the means); nothing when no done photo has statistics. Returns the paths written.
    ``folders``: as :func:`run_average` takes them."""
    average = run_average(out, model, weights, folders)
    if average is None:
        return []
    chart = statistics_chart({name: average[name] for name in STATISTICS},
                             title=f"{model}: mean over {average['photos']} photo(s)")
    written = [out / STATISTICS_JSON, out / STATISTICS_PNG]
    atomic_write(written[0], json_bytes(average))
    atomic_write(written[1], png_bytes(chart, level))
    return written
