"""``featviz sweep``'s files for one photo: its picture, and what ``--vit-stats``, ``--artifacts``
and ``--pca-tokens`` add, with the names, places and bytes that ``show`` gives them.

* ``OUT/<image>/sweep.png``: the stages side by side (:meth:`featviz.output.pipeline.Visualizer.sweep`);
* ``--vit-stats``/``--artifacts``: ``attention_statistics.json``/``.png`` and
  ``artifacts.json``/``.png`` in the photo's folder, next to ``sweep.png`` (they describe every
  block, whichever stages are swept);
* ``--pca-tokens``: ``OUT/<image>/<layer>/pca.png`` for each swept layer (each must be a token
  layer), coloured with the run's basis for that layer.

The per-result files come from :func:`featviz.output.resultfiles.token_files`, the list show and
export write, named relative to the result's layer folder; here they are placed under ``out``.
Producers stay pure; :func:`write_sweep` writes them through the one writer's
:func:`~featviz.output.layout.atomic_write` (temporary file + rename, no link followed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.output.layout import atomic_write, ensure_inside, layer_dir, png_bytes
from featviz.output.resultfiles import token_files

if TYPE_CHECKING:
    from PIL import Image

    from featviz.output.result import LayerResult

__all__ = ["SWEEP_PNG", "sweep_files", "write_sweep"]

SWEEP_PNG = "sweep.png"

Producer = Callable[[], bytes]


def sweep_files(out: Path, key: str, picture: Image.Image, results: Sequence[LayerResult],
                level: int = 1) -> list[tuple[Path, Producer]]:
    """(path under ``out``, producer of its bytes) for one swept photo: ``sweep.png`` first
    (``picture``, PNG ``level``), then each result's token files in stage order.

    Raises :class:`~featviz.errors.UsageError` for a path that would land outside ``out`` (a
    link planted in it), before anything of the photo is written."""
    files: list[tuple[Path, Producer]] = [(ensure_inside(out, out / key / SWEEP_PNG),
                                           lambda: png_bytes(picture, level))]
    for result in results:
        folder = layer_dir(out, key, result.layer.path)
        for name, produce in token_files(result):  # names relative to the layer folder: ../artifacts.json
            files.append((ensure_inside(out, Path(os.path.normpath(folder / name))), produce))
    return files


def write_sweep(files: Sequence[tuple[Path, Producer]]) -> list[Path]:
    """Write each file atomically, in order; returns the paths. An ``OSError`` (a full disk)
    propagates: the files written before it are whole."""
    for path, produce in files:
        atomic_write(path, produce())
    return [path for path, _ in files]
