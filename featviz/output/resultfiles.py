"""A result's files: what :meth:`LayerResult.save` and the batch engine write for one photo at one layer.

:class:`featviz.output.result.LayerResult` holds the tensors and draws the pictures; which files a
result becomes (names, and a pure producer of each file's bytes that any encoding thread may run)
is a list of its own, shared by :meth:`~featviz.output.result.LayerResult.save` (one thread) and
:class:`featviz.output.export.Exporter` (a thread pool), and counted by
:mod:`featviz.output.estimate`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.output.heads import heads_pictures
from featviz.output.layout import (
    SUMMARY,
    atomic_write,
    json_bytes,
    npy_bytes,
    npz_bytes,
    png_bytes,
    remove_stale_temporaries,
)
from featviz.output.render import OverlayBase
from featviz.output.vitfiles import PCA_PNG, photo_files

if TYPE_CHECKING:
    from PIL import Image

    from featviz.maps.explain import CamMap
    from featviz.output.result import LayerResult

Producer = Callable[[], bytes]


def result_files(result: LayerResult) -> list[tuple[str, Producer]]:
    """The files of one result (relative name, function producing its bytes), summary excluded.

    Producers are pure and independent, so they can run on any thread in any order. The
    per-channel tiles are computed once (``result.tiles``) and shared by the grid and the
    channel files: nothing is upsampled or encoded twice.
    """
    level = result.options.png_level
    tiles = result.tiles  # computed here, on the caller's thread, where the tensors live
    base = SharedBase(result.photo)  # the dimmed photo, made once for the 2 + len(cams) overlays
    files: list[tuple[str, Producer]] = [
        ("grid.png", lambda: png_bytes(result.grid_pixels(), level)),
        ("spatial_attention.png", lambda: png_bytes(result.spatial_overlay(base.get()), level)),
        ("channel_attention.png", lambda: png_bytes(result.channel_overlay(base.get()), level)),
    ]
    for position, channel in enumerate(result.drawn_channels):
        files.append((f"channels/{channel:04d}.png", partial(png_bytes, tiles[position], level)))
    files.append(("channel_weights.png", lambda: png_bytes(result.channel_chart(), level)))
    files.append(("channel_weights.csv", lambda: result.channel_csv().encode("utf-8")))
    if result.stn_theta is not None:
        files.append(("stn_grid.png", lambda: png_bytes(result.stn_grid(), level)))
    if result.before is not None:
        files.append(("se_reweight.png", lambda: png_bytes(result.se_reweight(), level)))
    if "branch_weights" in result.raw_gates:  # Selective Kernel / Split Attention
        files.append(("branch_weights.png", lambda: png_bytes(result.branch_picture(), level)))
        files.append(("branch_weights.csv", lambda: result.branch_csv().encode("utf-8")))
    for cam in result.cams:
        files.append((f"cam/{cam.name}.png", partial(_cam_png, result, cam, level, base)))
    if result.heads is not None and result.heads_layout is not None:
        heads, layout, options = result.heads, result.heads_layout, result.options
        pictures = heads_pictures(result.photo, heads, result.box, result.input_size, layout,
                                  threshold=options.heads_threshold, upsample=options.heads_upsample,
                                  cmap=options.heat_cmap, alpha=options.alpha)
        files.extend((name, partial(png_bytes, picture, level)) for name, picture in pictures)
        if options.save_raw:
            raw_heads = heads.float().cpu().numpy()
            files.append(("attention_heads.npy", lambda: npy_bytes(raw_heads)))
    files.extend(token_files(result))
    if result.options.save_raw and result.cams:
        raw = {f"{cam.method}:{'none' if cam.target is None else cam.target}": cam.map.float().cpu().numpy()
               for cam in result.cams}
        files.append(("cam.npz", lambda: npz_bytes(**raw)))
    if result.options.save_raw:
        activations = result.activations.float().cpu().numpy()
        spatial = result.spatial_raw.float().cpu().numpy()
        channel_values = result.channel_raw.float().cpu().numpy()
        files.append(("activations.npy", lambda: npy_bytes(activations)))
        gates = {name: value.float().cpu().numpy() for name, value in result.raw_gates.items()}
        files.append(("attention.npz", lambda: npz_bytes(spatial=spatial, channel=channel_values, **gates)))
    return files


def token_files(result: LayerResult) -> list[tuple[str, Producer]]:
    """What ``--pca-tokens`` (``pca.png``) and ``--vit-stats``/``--artifacts`` (the photo's files,
    one folder up) add to one result: names relative to its layer folder, as in
    :func:`result_files`. Shared by show/export and ``featviz sweep`` (:mod:`featviz.output.sweepfiles`),
    so both write the same files with the same bytes."""
    level = result.options.png_level
    files: list[tuple[str, Producer]] = []
    if result.pca is not None:  # --pca-tokens
        pca, size = result.pca, result.options.size
        files.append((PCA_PNG, lambda: png_bytes(pca.picture(size), level)))
    if result.token_facts is not None:  # --vit-stats/--artifacts: the photo's files, one folder up
        files.extend(photo_files(result.token_facts, result.photo, result.box, result.input_size,
                                 model=result.model_name, weights=result.weights, level=level,
                                 title=f"{result.model_name}: {result.key}"))
    return files


def _cam_png(result: LayerResult, cam: CamMap, level: int, base: SharedBase | None = None) -> bytes:
    """One class map's overlay as PNG bytes (run later, on an encoding thread)."""
    return png_bytes(result.cam_overlay(cam, None if base is None else base.get()), level)


class SharedBase:
    """The :class:`~featviz.output.render.OverlayBase` of one photo, built by the first encoding
    thread that needs it and then shared (a lock keeps it to one build); dropped with the
    result's producers once its files are written."""

    def __init__(self, photo: Image.Image) -> None:
        self._photo = photo
        self._base: OverlayBase | None = None
        self._lock = threading.Lock()

    def get(self) -> OverlayBase:
        with self._lock:
            if self._base is None:
                self._base = OverlayBase(self._photo)
            return self._base


def write_result(result: LayerResult, directory: Path) -> list[Path]:
    """Write one result's files into ``directory`` on this thread; summary last."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    files = result_files(result)
    for name, produce in files:
        atomic_write(directory / name, produce())
    names = [name for name, _ in files]
    atomic_write(directory / SUMMARY, json_bytes(result.summary(names)))
    return [directory / name for name in [*names, SUMMARY]]
