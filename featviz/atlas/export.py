"""``featviz atlas``'s engine: the pass over a collection, checkpoints, and the atlas's files.

1. **Collect** (:meth:`AtlasRun.collect`): photos are decoded on a thread pool one batch ahead
   while the current batch runs through the model up to the deepest requested layer (featviz's
   capture stops there); each batch is folded into the :class:`~featviz.atlas.accumulator.Atlas` and
   dropped. Every ``checkpoint_seconds`` (and at the end) the state is written atomically to
   ``OUT/atlas-state.json`` with the number of inputs done, so a killed run resumes after them.
2. **Write** (:func:`write_atlas`): a second, short pass over only the kept photos, a group of
   channels at a time (memory: the patches of one group): receptive fields
   (:mod:`featviz.maps.receptive`), ``OUT/<layer>/atlas.json``, ``channels/NNNN.png``,
   ``atlas.png``, then the page ``OUT/index.html`` (:mod:`featviz.atlas.page`).

Every file is written through :func:`featviz.output.layout.atomic_write`, inside OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featviz.atlas.accumulator import Atlas, merge, new_atlas, settings_difference
from featviz.atlas.page import write_page
from featviz.atlas.pictures import ATLAS_PATCH, channel_strip, layer_atlas, patch
from featviz.atlas.schema import validate_state
from featviz.capture.layers import is_script
from featviz.capture.layouts import TOKENS
from featviz.capture.tokens import token_layout
from featviz.errors import FeatvizError, UsageError
from featviz.inputs.discover import InputImage
from featviz.inputs.images import load_image
from featviz.inputs.names import display_name, name_fields, path_from_fields
from featviz.maps.receptive import ReceptiveFields, patch_field, photo_box
from featviz.output.export import chunks, default_batch_size
from featviz.output.layout import (
    atomic_write,
    ensure_inside,
    json_bytes,
    layer_dir,
    png_bytes,
    remove_stale_temporaries,
)
from featviz.output.pipeline import PreparedImage, Visualizer, same_size_groups

STATE = "atlas-state.json"
ATLAS_JSON = "atlas.json"
ATLAS_PNG = "atlas.png"
#: Patches held in memory at once while the pictures are drawn (about 37 kB each).
PATCHES_IN_FLIGHT = 1024

ErrorCallback = Callable[[str], None]


# --- settings -----------------------------------------------------------------------------

def weights_digest(module: torch.nn.Module) -> str:
    """BLAKE2 of every parameter and buffer (name, dtype, shape, bytes): two states with equal
    digests were made with the same weights, whatever their file names."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return digest.hexdigest()


def inputs_digest(images: Sequence[InputImage]) -> str:
    """BLAKE2 of the sorted input list (key and path of each): resume and merge refuse to mix
    atlases of different collections."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(f"{image.key}\0{image.path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def atlas_settings(visualizer: Visualizer, *, top: int, by: str, images: Sequence[InputImage],
                   model: str, weights: str, seed: int) -> dict[str, Any]:
    """What must be equal for two states to be merged or one resumed (JSON-ready). ``model``,
    ``weights``, ``seed``: the options as given, so that ``--merge`` can build the model again."""
    pre = visualizer.preprocess
    return {
        "model": visualizer.loaded.name, "weights": visualizer.loaded.weights,
        "model_option": model, "weights_option": weights, "seed": seed,
        "weights_digest": weights_digest(visualizer.loaded.module),
        "layers": [ref.path for ref in visualizer.layers], "top": top, "by": by,
        "resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
        "interpolation": pre.interpolation, "inputs": inputs_digest(images), "input_count": len(images),
    }


def layer_channels(visualizer: Visualizer) -> dict[str, list[int | None]]:
    """[C, H, W] of each layer for the crop size (H, W None with --no-crop: they vary)."""
    pre = visualizer.preprocess
    side = pre.crop or 224
    blank = torch.zeros(1, 3, side, side, device=visualizer.device)
    captured = visualizer.feature_maps(blank)
    return {ref.path: [int(captured[ref.path].shape[1]),
                       *([int(v) for v in captured[ref.path].shape[2:]] if pre.crop else [None, None])]
            for ref in visualizer.layers}


# --- state on disk ------------------------------------------------------------------------

def read_state(folder: Path) -> Atlas:
    path = folder / STATE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{folder} has no {STATE}",
                         hint="give folders written by `featviz atlas --shard I/N`") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read ({exc})") from None
    validate_state(data, str(path))  # the whole schema, settings included: --merge builds the model from them
    return Atlas.from_json(data, str(path))


def write_state(out: Path, atlas: Atlas) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / STATE, json_bytes(atlas.to_json()))


def merge_folders(folders: Sequence[Path]) -> Atlas:
    """The merged state of shard folders (see :func:`featviz.atlas.accumulator.merge`)."""
    return merge([read_state(folder) for folder in folders], [str(folder) for folder in folders])


# --- the pass -----------------------------------------------------------------------------

def _source(item: PreparedImage) -> str | Path:
    """Where a photo came from, for messages and records: its path, or its key when it has none."""
    return item.path if item.path is not None else item.key


class AtlasRun:
    """One collection through one model: :meth:`collect` folds every photo into an atlas."""

    def __init__(self, visualizer: Visualizer, out: Path, *, batch_size: int | None = None,
                 workers: int | None = None, checkpoint_seconds: float = 30.0,
                 on_error: ErrorCallback | None = None, on_image_done: Callable[[], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> None:
        self.visualizer = visualizer
        self.out = Path(out)
        self.batch_size = batch_size or default_batch_size(visualizer.device)
        self.workers = workers or os.cpu_count() or 1
        self.checkpoint_seconds = checkpoint_seconds
        self.on_error = on_error
        self.on_image_done = on_image_done
        self.stop = stop  # asked before each batch (the CLI's SIGTERM handling)
        self.stopped = False

    def start(self, settings: dict[str, Any], shard: tuple[int, int], resume: bool) -> Atlas:
        """A fresh atlas, or with ``resume`` the one in OUT (refused if its settings differ).
        A TorchScript model is refused here, before any image: it has no receptive fields."""
        if is_script(self.visualizer.loaded.module):
            raise UsageError("featviz atlas needs a Python model: a TorchScript model takes no hooks, so its "
                             "receptive fields cannot be computed",
                             hint="load the model from torchvision or a package.module:factory")
        if resume and (self.out / STATE).is_file():
            atlas = read_state(self.out)
            difference = settings_difference(atlas.settings, settings)
            if difference is None and tuple(atlas.shard) != tuple(shard):
                difference = f"shard: {atlas.shard[0]}/{atlas.shard[1]} vs {shard[0]}/{shard[1]}"
            if difference:
                raise UsageError(f"cannot resume the atlas in {self.out}: it differs in {difference}",
                                 hint="give the same inputs and options as the interrupted run, or a new --out")
            for message in atlas.errors:
                self._error(message, record=None)
            return atlas
        channels = {path: shape[0] for path, shape in layer_channels(self.visualizer).items()}
        return new_atlas(settings, {p: int(c) for p, c in channels.items() if c is not None}, shard=shard)

    def collect(self, atlas: Atlas, images: Sequence[InputImage]) -> Atlas:
        """Fold ``images`` (this shard's slice, in order) into ``atlas``, skipping the first
        ``atlas.done`` of them (already folded before an interruption).

        When ``stop()`` turns True the batch being folded is finished, the state is written
        (``complete`` false, so ``--resume`` continues after the last folded photo and ``--merge``
        refuses it) and the atlas is returned with :attr:`stopped` set."""
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
        for _ in range(min(atlas.done, len(images))):
            if self.on_image_done:
                self.on_image_done()
        todo = list(images[atlas.done:])
        last = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="featviz-atlas") as pool:
            batches = chunks(todo, self.batch_size)
            decoding = [(image, pool.submit(self.visualizer.prepare, image.path, str(image.key)))
                        for image in next(batches, [])]
            while decoding:
                if self.stop is not None and self.stop():
                    self.stopped = True  # the decoded batch is dropped: --resume folds it
                    break
                current = decoding
                decoding = [(image, pool.submit(self.visualizer.prepare, image.path, str(image.key)))
                            for image in next(batches, [])]  # overlaps the forward pass
                prepared = self._collect_decoded(atlas, current)
                self._fold(atlas, prepared)
                atlas.done += len(current)
                for _ in current:
                    if self.on_image_done:
                        self.on_image_done()
                if time.monotonic() - last >= self.checkpoint_seconds:
                    write_state(self.out, atlas)
                    last = time.monotonic()
        atlas.complete = not self.stopped
        write_state(self.out, atlas)
        return atlas

    def _error(self, message: str, record: Atlas | None) -> None:
        if record is not None:
            record.note_failure(message)
        if self.on_error:
            self.on_error(message)

    def _collect_decoded(self, atlas: Atlas,
                         decoding: list[tuple[InputImage, Future[PreparedImage]]]) -> list[PreparedImage]:
        prepared = []
        for image, future in decoding:
            try:
                prepared.append(future.result())
            except FeatvizError as exc:
                self._error(str(exc), atlas)
            except (OSError, ValueError, RuntimeError, MemoryError) as exc:
                self._error(f"{display_name(image.path)}: {type(exc).__name__}: {exc}", atlas)
        return prepared

    def _fold(self, atlas: Atlas, prepared: list[PreparedImage]) -> None:
        for group in same_size_groups(prepared):
            try:
                captured = self._forward(group)
            except RuntimeError as exc:
                if len(group) == 1:
                    self._error(f"{display_name(_source(group[0]))}: the model failed on it "
                                f"({str(exc).splitlines()[0][:200]})", atlas)
                else:  # find the photo the batch failed on; the others go on
                    for item in group:
                        self._fold(atlas, [item])
                continue
            keys = [p.key for p in group]
            for path, activations in captured.items():
                atlas.update(path, keys, activations)
            for item in group:
                atlas.note_image(item.key, {**name_fields(_source(item)), "photo": list(item.photo.size),
                                            "input_size": list(item.tensor.shape[1:])})
            if len(atlas.images) > 4 * sum(t.channels * t.top for t in atlas.tables.values()) + 1000:
                atlas.forget_unkept()

    def _forward(self, group: list[PreparedImage]) -> dict[str, torch.Tensor]:
        batch = torch.stack([p.tensor for p in group]).to(self.visualizer.device)
        return self.visualizer.feature_maps(batch)  # token and channels-last layers as (N, C, H, W)


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
