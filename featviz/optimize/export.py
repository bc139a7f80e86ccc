"""Write an optimisation's pictures: ``OUT/<layer>/optimized/NNNN.png`` (``NNNN-k.png`` for the
k-th diverse image), ``OUT/<layer>/optimized/grid.png`` and ``OUT/<layer>/optimize.json``.

The pictures are the RGB images the network saw before normalisation, at the optimised size.
Every file goes through :func:`featviz.output.layout.atomic_write`, inside OUT.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featviz.optimize.engine import Optimized, OptimizeSettings
from featviz.output.layout import atomic_write, json_bytes, layer_dir, png_bytes

OPTIMIZE_JSON = "optimize.json"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(pictures: np.ndarray, padding: int = 2) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 picture, ceil(sqrt(N)) columns, white gaps."""
    count, height, width, _ = pictures.shape
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        canvas[top:top + height, left:left + width] = picture
    return canvas


def file_name(unit: int, copy: int, copies: int) -> str:
    return f"{unit:04d}.png" if copies == 1 else f"{unit:04d}-{copy}.png"


def write_optimized(out: Path, layer: str, result: Optimized, settings: OptimizeSettings,
                    extra: dict[str, Any] | None = None) -> list[Path]:
    """Write the pictures and ``optimize.json`` of ``result`` under ``out/<layer>``; returns the
    files written. ``extra``: more JSON settings (model, weights, normalisation)."""
    folder = layer_dir(Path(out), "", layer)
    pictures = to_uint8(result.images)
    copies = settings.diversity
    written: list[Path] = []
    entries = []
    for i, (unit, reached) in enumerate(zip(result.units, result.activation, strict=True)):
        name = file_name(unit, i % copies, copies)
        target = folder / "optimized" / name
        atomic_write(target, png_bytes(pictures[i], 1))
        written.append(target)
        entries.append({"unit": unit, "copy": i % copies, "file": f"optimized/{name}", "activation": reached,
                        "objective": [[step, values[i]] for (step, _), values in
                                      zip(result.history, result.per_image_history, strict=True)]})
    target = folder / "optimized" / "grid.png"
    atomic_write(target, png_bytes(grid(pictures), 1))
    written.append(target)
    document = {"layer": layer, "settings": {**settings.as_json(), **(extra or {})},
                "mean_objective": [[step, value] for step, value in result.history], "images": entries}
    atomic_write(folder / OPTIMIZE_JSON, json_bytes(document))
    written.append(folder / OPTIMIZE_JSON)
    return written


def interpolation_name(first: int, second: int) -> str:
    """``interpolation/AAAA-BBBB``, without the suffix (``.png`` or ``.json``)."""
    return f"interpolation/{first:04d}-{second:04d}"


def row(pictures: np.ndarray, padding: int = 2) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 picture, the N side by side with white gaps: frame i's
    top-left pixel is at (padding, padding + i * (W + padding))."""
    count, height, width, _ = pictures.shape
    canvas = np.full((height + 2 * padding, count * (width + padding) + padding, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        left = padding + i * (width + padding)
        canvas[padding:padding + height, left:left + width] = picture
    return canvas


def write_interpolation(out: Path, layer: str, pair: tuple[int, int], result: Optimized,
                        measured: list[list[float]], settings: OptimizeSettings,
                        extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``OUT/<layer>/interpolation/AAAA-BBBB.png`` (the frames in one row, see :func:`row`)
    and ``.json``: per frame t, the mixed objective reached and ``measured`` (the spatial means of
    channels A and B on the final frame, [[a, b], ...]). Returns the files written."""
    folder = layer_dir(Path(out), "", layer)
    name = interpolation_name(*pair)
    frames = len(result.units)
    picture, document_path = folder / f"{name}.png", folder / f"{name}.json"
    atomic_write(picture, png_bytes(row(to_uint8(result.images)), 1))
    document = {"layer": layer, "first": pair[0], "second": pair[1], "file": f"{name}.png",
                "settings": {**settings.as_json(), **(extra or {})},
                "frames": [{"t": i / (frames - 1), "objective": result.activation[i],
                            "activation": {str(pair[0]): measured[i][0], str(pair[1]): measured[i][1]}}
                           for i in range(frames)]}
    atomic_write(document_path, json_bytes(document))
    return [picture, document_path]
