"""``--cam-score``: the faithfulness of every class map of a batch, and the run's table of means.

The glue between :mod:`featviz.maps.explain` (the maps, at the layer's resolution) and
:mod:`featviz.maps.faithfulness` (deletion and insertion, Petsiuk et al., RISE 2018): each map is
upsampled to the network input exactly as the overlays are (:func:`featviz.maps.cam.cam_at_input`) and
scored for its own target class, all maps of a layer and batch in one call so that the shared
inputs (the photo, the zero baseline, the blurred copy) are run once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from featviz.errors import ImageError
from featviz.maps.cam import cam_at_input
from featviz.maps.explain import CamBatch
from featviz.maps.faithfulness import (
    AucRow,
    FaithfulnessScore,
    deletion_insertion,
    mean_auc_table,
)


def score_cams(model: nn.Module, inputs: torch.Tensor, explained: CamBatch, *, steps: int,
               batch_size: int | None, names: Sequence[str]) -> dict[int, str]:
    """Attach a :class:`FaithfulnessScore` to every :class:`CamMap` of ``explained`` (its
    ``scores``); return {photo index: why} for the photos where a map could not be scored.

    inputs: float32 (N, 3, H_in, W_in), the batch's normalised network inputs on the model's
    device, photo n in row n. Each map is scored for its own target; Eigen-CAM, which explains
    no class, for the photo's predicted top class (from ``explained.logits``, else a forward pass),
    and the score's ``target`` records it. Baseline ``zero`` (RISE's), softmax probabilities.
    Photos already in ``explained.errors`` are left out.
    """
    rows: list[tuple[int, Any]] = [(n, cam) for n, cams in enumerate(explained.per_image)
                                   if n not in explained.errors for cam in cams]
    if not rows:
        return {}
    top = _top_classes(model, inputs, explained) if any(cam.target is None for _, cam in rows) else []
    index = torch.tensor([n for n, _ in rows], device=inputs.device)
    saliency = cam_at_input(torch.stack([cam.map for _, cam in rows]).to(inputs.device), tuple(inputs.shape[2:]))
    targets = [cam.target if cam.target is not None else top[n] for n, cam in rows]
    labels = [f"{names[n]}: {cam.name}" for n, cam in rows]
    outcome = deletion_insertion(model, inputs[index], saliency, targets, steps=steps, batch_size=batch_size,
                                 baseline="zero", names=labels)
    errors: dict[int, str] = {}
    for (n, cam), score in zip(rows, outcome, strict=True):
        if isinstance(score, ImageError):
            errors.setdefault(n, f"--cam-score: {score}")
        else:
            cam.scores = score
    return errors


def _top_classes(model: nn.Module, inputs: torch.Tensor, explained: CamBatch) -> list[int]:
    """The predicted class of each photo: argmax of the logits the explainer kept (else one
    forward pass without gradients)."""
    logits = explained.logits
    if logits is None:
        with torch.no_grad():
            logits = model(inputs)
    return logits.float().argmax(dim=1).tolist()


def auc_rows_from_records(records: Iterable[dict[str, Any]]) -> list[AucRow]:
    """The run's mean-AUC table (:func:`featviz.maps.faithfulness.mean_auc_table`) from manifest
    lines: every ``ok`` line's ``cams`` entries that carry ``scores`` (the brief form:
    ``deletion_auc``, ``insertion_auc``), one row per method in order of first appearance."""
    pairs: list[tuple[str, FaithfulnessScore]] = []
    for record in records:
        if record.get("status") != "ok":
            continue
        for cam in record.get("cams") or []:
            brief = cam.get("scores") if isinstance(cam, dict) else None
            if isinstance(brief, dict):
                pairs.append((str(cam.get("method")), _from_brief(cam, brief)))
    return mean_auc_table(pairs)


def _from_brief(cam: dict[str, Any], brief: dict[str, Any]) -> FaithfulnessScore:
    """A curve-less score holding a manifest line's two areas (what the table averages)."""
    return FaithfulnessScore(target=int(brief.get("target", cam.get("target") or -1)), fractions=(), deletion=(),
                             insertion=(), deletion_auc=float(brief["deletion_auc"]),
                             insertion_auc=float(brief["insertion_auc"]), steps=int(brief.get("steps", 0)),
                             baseline=str(brief.get("baseline", "")), blur_sigma=0.0, blur_kernel=0)
