"""``featviz atlas``'s engine: the pass over a collection, checkpoints, and the atlas's files.

1. **Collect** (:meth:`AtlasRun.collect`): photos are decoded on a thread pool one batch ahead
   while the current batch runs through the model up to the deepest requested layer (featviz's
   capture stops there); each batch is folded into the :class:`~featviz.atlas.accumulator.Atlas` and
   dropped. Every ``checkpoint_seconds`` (and at the end) the state is written atomically to
   ``OUT/atlas-state.json`` with the number of inputs done, so a killed run resumes after them.
2. **Write** (:func:`featviz.atlas.write.write_atlas`, its own module): a second, short pass
   over only the kept photos, a group of channels at a time (memory: the patches of one group): receptive fields
   (:mod:`featviz.maps.receptive`), ``OUT/<layer>/atlas.json``, ``channels/NNNN.png``,
   ``atlas.png``, then the page ``OUT/index.html`` (:mod:`featviz.atlas.page`).

Every file is written through :func:`featviz.output.layout.atomic_write`, inside OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from featviz.atlas.accumulator import Atlas, merge, new_atlas, settings_difference
from featviz.atlas.schema import validate_state

# the files step, re-exported: callers import the whole atlas engine from here
from featviz.atlas.write import ATLAS_JSON as ATLAS_JSON
from featviz.atlas.write import ATLAS_PNG as ATLAS_PNG
from featviz.atlas.write import ErrorCallback, layer_channels
from featviz.atlas.write import atlas_document as atlas_document
from featviz.atlas.write import write_atlas as write_atlas
from featviz.capture.layers import is_script
from featviz.errors import FeatvizError, UsageError
from featviz.inputs.discover import InputImage
from featviz.inputs.names import display_name, name_fields
from featviz.output.export import chunks, default_batch_size
from featviz.output.layout import (
    atomic_write,
    json_bytes,
    remove_stale_temporaries,
)
from featviz.output.pipeline import PreparedImage, Visualizer, same_size_groups

STATE = "atlas-state.json"



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
                   model: str, weights: str, seed: int, model_kwargs: dict[str, Any] | None = None,
                   weights_file: str | os.PathLike[str] | None = None, trust_pickle: bool = False) -> dict[str, Any]:
    """What must be equal for two states to be merged or one resumed (JSON-ready). ``model``,
    ``weights``, ``seed``, ``model_kwargs``, ``weights_file``, ``trust_pickle``: the options as given,
    so that ``--merge`` builds the same model again (a ViT built for another ``img_size`` would
    draw its patches on another grid)."""
    pre = visualizer.preprocess
    return {
        "model": visualizer.loaded.name, "weights": visualizer.loaded.weights,
        "model_option": model, "weights_option": weights, "seed": seed,
        "model_kwargs": model_kwargs or None, "weights_file": None if weights_file is None else os.fspath(weights_file),
        "trust_pickle": bool(trust_pickle),
        "weights_digest": weights_digest(visualizer.loaded.module),
        "layers": [ref.path for ref in visualizer.layers], "top": top, "by": by,
        "resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
        "interpolation": pre.interpolation, "inputs": inputs_digest(images), "input_count": len(images),
    }


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
