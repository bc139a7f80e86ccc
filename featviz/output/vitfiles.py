"""The files of ``--vit-stats``, ``--artifacts`` and ``--pca-tokens`` for one photo: pure producers.

Where they go: the attention statistics and the artifact tokens describe the whole model (every
block at once), not the ``--layer`` a result folder is named after, so they go into the
**photo's folder**, one level above its layer folders (``OUT/<image>/attention_statistics.json``
next to ``OUT/<image>/<layer>/``); their names are therefore given relative to a layer folder,
``../attention_statistics.json``, and listed by the first layer's ``summary.json`` (so a folder
whose summary exists has them: ``--skip-existing`` stays right). The PCA colours belong to the
chosen token layer: ``OUT/<image>/<layer>/pca.png``.

Nothing is written here (the one writer, :mod:`featviz.output.layout`, does); the run average
over an export is :mod:`featviz.output.vitrun`.
"""

from __future__ import annotations

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
from featviz.output.tokencharts import artifact_picture, pca_picture, statistics_chart

__all__ = ["ARTIFACTS_JSON", "ARTIFACTS_PNG", "PCA_PNG", "PHOTO_FOLDER", "STATISTICS_JSON", "STATISTICS_PNG",
           "PcaColours", "artifacts_document", "artifacts_overlay", "facts_record", "pca_colours", "photo_files",
           "statistics_document"]

PHOTO_FOLDER = ".."  # the photo's folder, seen from one of its layer folders
STATISTICS_JSON = "attention_statistics.json"
STATISTICS_PNG = "attention_statistics.png"
ARTIFACTS_JSON = "artifacts.json"
ARTIFACTS_PNG = "artifacts.png"
PCA_PNG = "pca.png"

Producer = Callable[[], bytes]


def statistics_document(facts: PhotoTokenFacts, model: str, weights: str) -> dict[str, Any]:
    """``attention_statistics.json``: the model and weights (what the run average checks), then
    :meth:`PhotoTokenFacts.statistics_json`."""
    return {"model": model, "weights": weights, **facts.statistics_json()}


def artifacts_document(facts: PhotoTokenFacts, model: str, weights: str) -> dict[str, Any]:
    """``artifacts.json``: the model, the block the picture shows, then one record per block."""
    return {"model": model, "weights": weights, "drawn_block": facts.blocks[-1], **facts.artifacts_json()}


def artifacts_overlay(facts: PhotoTokenFacts, photo: Image.Image, box: CropBox,
                      input_size: tuple[int, int]) -> Image.Image:
    """``artifacts.png``: the photo with the last block's flagged patches outlined, each outline on
    exactly the photo pixels its patch saw (the crop box, cut to the part the patch grid covers)."""
    if facts.flags is None:
        raise ValueError("no artifact flags: measure with artifacts_k")
    where = patch_box(box, input_size, facts.layout)
    width = max(1, round(min(photo.size) / 200))
    return artifact_picture(photo, facts.layout, facts.flags[-1], box=(where.left, where.top, where.right,
                                                                       where.bottom), width=width)


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
