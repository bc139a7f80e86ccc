"""The atlas's files (step 2 of ``featviz atlas``): a second, short pass over only the kept photos.

Split from :mod:`featviz.atlas.export` (the pass over the collection, checkpoints, merges) because
drawing is a separate job with its own memory bound: a group of channels at a time (the patches of
one group in memory), receptive fields (:mod:`featviz.maps.receptive`), ``OUT/<layer>/atlas.json``,
``channels/NNNN.png``, ``atlas.png``, then the page ``OUT/index.html`` (:mod:`featviz.atlas.page`).
Every file is written through :func:`featviz.output.layout.atomic_write`, inside OUT.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featviz.atlas.accumulator import Atlas
from featviz.atlas.page import write_page
from featviz.atlas.pictures import ATLAS_PATCH, channel_strip, layer_atlas, patch
from featviz.capture.layouts import TOKENS
from featviz.capture.tokens import token_layout
from featviz.errors import FeatvizError
from featviz.inputs.images import load_image
from featviz.inputs.names import name_fields, path_from_fields
from featviz.maps.receptive import ReceptiveFields, patch_field, photo_box
from featviz.output.layout import (
    atomic_write,
    ensure_inside,
    json_bytes,
    layer_dir,
    png_bytes,
    remove_stale_temporaries,
)
from featviz.output.pipeline import PreparedImage, Visualizer

ATLAS_JSON = "atlas.json"
ATLAS_PNG = "atlas.png"
#: Patches held in memory at once while the pictures are drawn (about 37 kB each).
PATCHES_IN_FLIGHT = 1024

ErrorCallback = Callable[[str], None]


def layer_channels(visualizer: Visualizer) -> dict[str, list[int | None]]:
    """[C, H, W] of each layer for the crop size (H, W None with --no-crop: they vary)."""
    pre = visualizer.preprocess
    side = pre.crop or 224
    blank = torch.zeros(1, 3, side, side, device=visualizer.device)
    captured = visualizer.feature_maps(blank)
    return {ref.path: [int(captured[ref.path].shape[1]),
                       *([int(v) for v in captured[ref.path].shape[2:]] if pre.crop else [None, None])]
            for ref in visualizer.layers}


# --- the outputs --------------------------------------------------------------------------

def atlas_document(atlas: Atlas, layer: str, shape: list[int | None], visualizer: Visualizer,
                   fields: ReceptiveFields) -> dict[str, Any]:
    """``OUT/<layer>/atlas.json``: the issue's format plus per-channel statistics."""
    table = atlas.tables[layer]
    wanted: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for c in range(table.channels):
        for _, key, y, x in table.entries(c):
            size = tuple(atlas.images[key]["input_size"])
            wanted.setdefault((int(size[0]), int(size[1])), set()).add((y, x))
    found = {size: _fields(visualizer, layer, size, positions, fields) for size, positions in sorted(wanted.items())}
    channels = []
    for c in range(table.channels):
        rows = []
        for score, key, y, x in table.entries(c):
            info = atlas.images[key]
            size = (int(info["input_size"][0]), int(info["input_size"][1]))
            width, height = info["photo"]
            crop = visualizer.preprocess.crop_box(width, height)
            rows.append({**name_fields(path_from_fields(info)), "key": key, "score": score, "y": y, "x": x,
                         "box": photo_box(found[size][(y, x)], size, crop, (width, height))})
        channels.append(rows)
    statistics = table.statistics()
    return {"layer": layer, "shape": shape, "images": table.images, "by": atlas.by, "top": atlas.top,
            "model": atlas.settings["model"], "weights": atlas.settings["weights"],
            "failed": atlas.failed, "channels": channels, "statistics": statistics}


def _fields(visualizer: Visualizer, layer: str, size: tuple[int, int], positions: set[tuple[int, int]],
            fields: ReceptiveFields) -> dict[tuple[int, int], Any]:
    """{(y, x): Field} of one layer at one input size: a token layer's entry is its own patch
    (:func:`featviz.maps.receptive.patch_field`: where the token lives), any other layer's its
    receptive field."""
    layout = visualizer.layouts.get(layer)
    if layout is not None and layout.kind == TOKENS and layout.tokens is not None:
        tokens = token_layout(visualizer.loaded.module, size) or layout.tokens
        return {(y, x): patch_field(tokens, y, x) for y, x in positions}
    return fields.fields(layer, size, positions)


def write_atlas(atlas: Atlas, visualizer: Visualizer, out: Path, *, workers: int | None = None,
                on_error: ErrorCallback | None = None) -> list[Path]:
    """Every output of a finished atlas: per layer atlas.json, channels/NNNN.png and atlas.png,
    then OUT/index.html. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = ReceptiveFields(visualizer.loaded.module)
    shapes = layer_channels(visualizer)
    written: list[Path] = []
    documents = []
    for ref in visualizer.layers:
        folder = layer_dir(out, "", ref.path)
        ensure_inside(out, folder / "channels")
        remove_stale_temporaries(folder)
        document = atlas_document(atlas, ref.path, shapes[ref.path], visualizer, fields)
        written.extend(_write_pictures(document, visualizer, folder, workers, on_error))
        atomic_write(folder / ATLAS_JSON, json_bytes(document))
        written.append(folder / ATLAS_JSON)
        documents.append((folder.relative_to(out).as_posix(), document))
    written.append(write_page(out, documents))
    return written


def _write_pictures(document: dict[str, Any], visualizer: Visualizer, folder: Path, workers: int | None,
                    on_error: ErrorCallback | None) -> list[Path]:
    """channels/NNNN.png for every channel and atlas.png.

    Every kept photo runs through the model once more, and the maps of the channels that keep it
    are kept (float32 (H, W) each: C x N maps in all, a few MB, whatever the collection's size);
    then the patches are cut a group of channels at a time (at most :data:`PATCHES_IN_FLIGHT`
    wait for their picture), each group decoding its photos again (decoding only)."""
    layer = document["layer"]
    channels = document["channels"]
    top = max(1, int(document["top"]))
    per_group = max(1, PATCHES_IN_FLIGHT // top)
    representative: list[np.ndarray | None] = [None] * len(channels)
    written = []
    threads = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featviz-atlas") as pool:
        maps = _kept_maps(channels, layer, visualizer, pool, 2 * threads, on_error)
        for start in range(0, len(channels), per_group):
            group = range(start, min(len(channels), start + per_group))
            patches = _group_patches(channels, group, maps, visualizer, pool, 2 * threads)
            for c in group:
                entries = channels[c]
                tiles = [patches.get((c, rank)) for rank in range(len(entries))]
                shown = [(t, e) for t, e in zip(tiles, entries, strict=True) if t is not None]
                if shown:
                    representative[c] = _shrink(shown[0][0])
                dead = c in document["statistics"]["dead"]
                title = f"{layer} channel {c}" + ("  (dead: never positive)" if dead else "")
                picture = channel_strip([t for t, _ in shown],
                                        [(f"{document['by']} {e['score']:.4g}", e["key"]) for _, e in shown],
                                        title, top)
                target = folder / "channels" / f"{c:04d}.png"
                atomic_write(target, png_bytes(picture, 1))
                written.append(target)
    atomic_write(folder / ATLAS_PNG, png_bytes(layer_atlas(representative, document["statistics"]["dead"]), 1))
    written.append(folder / ATLAS_PNG)
    return written


def _shrink(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).resize((ATLAS_PATCH, ATLAS_PATCH), Image.Resampling.BILINEAR))


def _by_key(channels: list[list[dict[str, Any]]], group: range) -> dict[str, list[tuple[int, int, dict[str, Any]]]]:
    """{key: [(channel, rank, entry), ...]} of the kept entries of the channels in ``group``."""
    wanted: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for c in group:
        for rank, entry in enumerate(channels[c]):
            wanted.setdefault(entry["key"], []).append((c, rank, entry))
    return wanted


def _ahead(keys: list[str], ahead: int, submit: Callable[[str], Future[Any]]) -> Iterator[tuple[str, Future[Any]]]:
    """(key, future) in order, with at most ``ahead`` submitted and not yet consumed."""
    futures = {key: submit(key) for key in keys[:ahead]}
    for index, key in enumerate(keys):
        if index + ahead < len(keys):
            futures[keys[index + ahead]] = submit(keys[index + ahead])
        yield key, futures.pop(key)


def _kept_maps(channels: list[list[dict[str, Any]]], layer: str, visualizer: Visualizer, pool: ThreadPoolExecutor,
               ahead: int, on_error: ErrorCallback | None) -> dict[tuple[int, int], torch.Tensor]:
    """{(channel, rank): float32 (H, W) map of that channel on that entry's photo}, one forward
    pass per kept photo. A photo that cannot be read again (changed or gone since the first
    pass) is an error line and leaves its slots empty."""
    wanted = _by_key(channels, range(len(channels)))
    ref = next(r for r in visualizer.layers if r.path == layer)
    maps: dict[tuple[int, int], torch.Tensor] = {}
    keys = sorted(wanted)

    def submit(key: str) -> Future[PreparedImage]:
        return pool.submit(visualizer.prepare, path_from_fields(wanted[key][0][2]), key)

    for key, future in _ahead(keys, ahead, submit):
        try:
            prepared = future.result()
        except (FeatvizError, OSError, ValueError) as exc:
            if on_error:
                on_error(f"{wanted[key][0][2]['input']}: cannot be read again for the pictures ({exc})")
            continue
        acts = visualizer.feature_maps(prepared.tensor[None].to(visualizer.device), [ref])[layer][0]
        for c, rank, _ in wanted[key]:
            maps[(c, rank)] = acts[c].float().cpu().clone()
    return maps


def _group_patches(channels: list[list[dict[str, Any]]], group: range, maps: dict[tuple[int, int], torch.Tensor],
                   visualizer: Visualizer, pool: ThreadPoolExecutor, ahead: int) -> dict[tuple[int, int], np.ndarray]:
    """{(channel, rank): patch} for the channels of ``group``, ``ahead`` photos decoding at a time."""
    wanted = _by_key(channels, group)
    keys = sorted(k for k, items in wanted.items() if any((c, rank) in maps for c, rank, _ in items))
    patches: dict[tuple[int, int], np.ndarray] = {}

    def submit(key: str) -> Future[Image.Image]:
        return pool.submit(load_image, path_from_fields(wanted[key][0][2]))

    for key, future in _ahead(keys, ahead, submit):
        try:
            photo = future.result()
        except (FeatvizError, OSError, ValueError):
            continue  # read a moment ago by _kept_maps: gone since; its slots stay empty
        crop = visualizer.preprocess.crop_box(*photo.size)
        for c, rank, entry in wanted[key]:
            if (c, rank) in maps:
                patches[(c, rank)] = patch(photo, maps[(c, rank)], crop, entry["box"])
    return patches
