"""The files of ``--vit-stats``, ``--artifacts`` and ``--pca-tokens`` for one photo: pure producers.

Where they go: the attention statistics and the artifact tokens describe the whole model (every
block at once), not the ``--layer`` a result folder is named after, so they go into the
**photo's folder**, one level above its layer folders (``OUT/<image>/attention_statistics.json``
next to ``OUT/<image>/<layer>/``); their names are therefore given relative to a layer folder,
``../attention_statistics.json``, and listed by the first layer's ``summary.json`` (so a folder
whose summary exists has them: ``--skip-existing`` stays right). The PCA colours belong to the
chosen token layer: ``OUT/<image>/<layer>/pca.png``.

``artifacts.png`` shows **every block**, one panel each (block index and flagged count under it),
so that a reader sees where register-style outliers appear with depth. Each panel is the whole
photo with that block's flagged patches outlined on exactly the photo pixels the patch saw (as
``--heads`` places its maps); photos whose longer side is under :data:`PANEL_MIN` pixels are
enlarged by a whole factor (nearest: each photo pixel a square, outlines still on patch borders)
so the captions fit, photos over :data:`PANEL_MAX` are shrunk so that twelve panels stay about
1,600 pixels wide; the panels are laid out ``ceil(sqrt(blocks))`` to a row
(:func:`featviz.output.render.sweep_picture`, the depth sweep's sheet).

Nothing is written here (the one writer, :mod:`featviz.output.layout`, does); the run average
over an export is :mod:`featviz.output.vitrun`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from featviz.maps.tokenpca import foreground
from featviz.maps.tokenpcafit import RunBasis
from featviz.maps.tokenrun import PhotoTokenFacts
from featviz.models.preprocess import CropBox
from featviz.output.heads import patch_box
from featviz.output.layout import json_bytes, png_bytes
from featviz.output.render import sweep_picture
from featviz.output.tokencharts import artifact_picture, pca_picture, statistics_chart

__all__ = ["ARTIFACTS_JSON", "ARTIFACTS_PNG", "PANEL_MAX", "PANEL_MIN", "PCA_PNG", "PHOTO_FOLDER", "PcaColours",
           "STATISTICS_JSON", "STATISTICS_PNG", "artifacts_document", "artifacts_overlay", "facts_record",
           "panel_size", "pca_colours", "photo_files", "statistics_document"]

PHOTO_FOLDER = ".."  # the photo's folder, seen from one of its layer folders
STATISTICS_JSON = "attention_statistics.json"
STATISTICS_PNG = "attention_statistics.png"
ARTIFACTS_JSON = "artifacts.json"
ARTIFACTS_PNG = "artifacts.png"
PCA_PNG = "pca.png"
PANEL_MIN = 192  # px: a smaller photo's panels are enlarged by a whole factor (captions fit under them)
PANEL_MAX = 384  # px: a larger photo's panels are shrunk (12 panels, 4 to a row: about 1,600 px wide)

Producer = Callable[[], bytes]


def statistics_document(facts: PhotoTokenFacts, model: str, weights: str) -> dict[str, Any]:
    """``attention_statistics.json``: the model and weights (what the run average checks), then
    :meth:`PhotoTokenFacts.statistics_json`."""
    return {"model": model, "weights": weights, **facts.statistics_json()}


def artifacts_document(facts: PhotoTokenFacts, model: str, weights: str) -> dict[str, Any]:
    """``artifacts.json``: the model, the blocks the picture shows (every one, in panel order),
    then one record per block."""
    return {"model": model, "weights": weights, "drawn_blocks": list(facts.blocks), **facts.artifacts_json()}


def panel_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of one ``artifacts.png`` panel for a photo of ``size``: a longer side under
    :data:`PANEL_MIN` enlarged by the smallest whole factor reaching it, over :data:`PANEL_MAX`
    shrunk to it, else the photo's own size."""
    width, height = size
    longer = max(width, height)
    if longer < PANEL_MIN:
        factor = math.ceil(PANEL_MIN / longer)
        return width * factor, height * factor
    if longer > PANEL_MAX:
        return max(1, round(width * PANEL_MAX / longer)), max(1, round(height * PANEL_MAX / longer))
    return width, height


def artifacts_overlay(facts: PhotoTokenFacts, photo: Image.Image, box: CropBox,
                      input_size: tuple[int, int]) -> Image.Image:
    """``artifacts.png``: one panel per block (``block B`` and its flagged count underneath), each
    the photo (at :func:`panel_size`) with that block's flagged patches outlined on exactly the
    photo pixels the patch saw (the crop box, cut to the part the patch grid covers, scaled with
    the panel)."""
    if facts.flags is None:
        raise ValueError("no artifact flags: measure with artifacts_k")
    rgb = photo.convert("RGB")
    size = panel_size(rgb.size)
    enlarged = size[0] > rgb.width
    shown = rgb.resize(size, Image.Resampling.NEAREST if enlarged else Image.Resampling.LANCZOS)
    sx, sy = shown.width / rgb.width, shown.height / rgb.height
    where = patch_box(box, input_size, facts.layout)
    scaled = (where.left * sx, where.top * sy, where.right * sx, where.bottom * sy)
    width = max(1, round(min(shown.size) / 200))
    panels = [(artifact_picture(shown, facts.layout, flags, box=scaled, width=width),
               f"block {index}\n{int(flags.sum())} flagged") for index, flags in enumerate(facts.flags)]
    title = "artifact tokens by block" + ("" if facts.k is None else f" (k = {facts.k:g})")
    return sweep_picture(panels, height=shown.height, per_row=math.ceil(math.sqrt(len(panels))), title=title)


def photo_files(facts: PhotoTokenFacts, photo: Image.Image, box: CropBox, input_size: tuple[int, int], *,
                model: str, weights: str, level: int, title: str = "") -> list[tuple[str, Producer]]:
    """(name relative to a layer folder, producer of its bytes) for the photo-level files that
    ``facts`` holds: the statistics (JSON and chart) and the artifact tokens (JSON and picture)."""
    files: list[tuple[str, Producer]] = []
    if facts.statistics is not None:
        statistics = facts.statistics
        files.append((f"{PHOTO_FOLDER}/{STATISTICS_JSON}",
                      lambda: json_bytes(statistics_document(facts, model, weights))))
        files.append((f"{PHOTO_FOLDER}/{STATISTICS_PNG}",
                      lambda: png_bytes(statistics_chart(statistics, title=title), level)))
    if facts.flags is not None:
        files.append((f"{PHOTO_FOLDER}/{ARTIFACTS_JSON}",
                      lambda: json_bytes(artifacts_document(facts, model, weights))))
        files.append((f"{PHOTO_FOLDER}/{ARTIFACTS_PNG}",
                      lambda: png_bytes(artifacts_overlay(facts, photo, box, input_size), level)))
    return files


def facts_record(facts: PhotoTokenFacts) -> dict[str, Any]:
    """The ``token_facts`` entry of the first layer's summary.json: the blocks, the photo-level
    files (as :func:`photo_files` names them) and, with the artifact test, the flags per block."""
    files = ([f"{PHOTO_FOLDER}/{STATISTICS_JSON}", f"{PHOTO_FOLDER}/{STATISTICS_PNG}"] if facts.statistics is not None
             else [])
    files += [f"{PHOTO_FOLDER}/{ARTIFACTS_JSON}", f"{PHOTO_FOLDER}/{ARTIFACTS_PNG}"] if facts.flags is not None else []
    record: dict[str, Any] = {"blocks": list(facts.blocks), "files": files}
    if facts.artifacts is not None:
        record["flagged_per_block"] = [len(block["flagged"]) for block in facts.artifacts]
    return record


@dataclass(frozen=True)
class PcaColours:
    """One photo's PCA colours at a token layer: ``rgb`` float32 (rows, cols, 3) in [0, 1] (the
    run's shared basis and colour range), ``mask`` bool (rows, cols) (True: foreground) or None,
    ``record`` the summary's ``pca`` entry."""

    rgb: torch.Tensor
    mask: torch.Tensor | None
    record: dict[str, Any]

    def picture(self, size: int) -> Image.Image:
        """``pca.png``: each patch a square of ``size // max(rows, cols)`` pixels (at least 1),
        nearest (patch borders stay visible), background black with a foreground mask."""
        rows, cols = self.rgb.shape[:2]
        return pca_picture(self.rgb, scale=max(1, size // max(rows, cols)), mask=self.mask)


def pca_colours(run: RunBasis, maps: torch.Tensor, threshold: float | None = None) -> PcaColours:
    """The colours of one photo's patch tokens under the run's basis.

    maps: float (D, rows, cols), the token layer's patch tokens on their grid (what a token
    layer's result holds as activations). ``threshold``: DINOv2's foreground (patches whose
    first-component score is above it), None for none.
    """
    tokens = maps.float().cpu().permute(1, 2, 0)  # (rows, cols, D)
    rgb = run.basis.to_rgb(tokens)
    mask = None if threshold is None else foreground(run.basis, tokens, threshold)
    record: dict[str, Any] = {**run.record(), "grid": [int(maps.shape[1]), int(maps.shape[2])]}
    if mask is not None:
        record["foreground"] = {"threshold": threshold, "patches": int(mask.sum()),
                                "score": "first component, centred projection"}
    record["file"] = PCA_PNG
    return PcaColours(rgb=rgb, mask=mask, record=record)
