"""Faithfulness scores as records: one map's deletion and insertion curves, their areas, and a
run's mean areas per method.

:mod:`featviz.maps.faithfulness` computes the curves (perturbed forward passes); what a score is,
how its area is taken (the trapezoid rule) and how a run's scores are averaged and printed are
plain numbers, kept here without torch so that the run's table (``--cam-score``) and the
summary's records do not depend on how the curves were made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FaithfulnessScore:
    """Deletion and insertion curves of one saliency map for one target class.

    ``fractions``, ``deletion`` and ``insertion`` have steps + 1 values each: the share of pixels
    changed (0..1) and the target's softmax probability (0..1) at that point.
    """

    target: int
    fractions: tuple[float, ...]
    deletion: tuple[float, ...]
    insertion: tuple[float, ...]
    deletion_auc: float
    insertion_auc: float
    steps: int
    baseline: str
    blur_sigma: float
    blur_kernel: int

    def as_json(self) -> dict[str, Any]:
        """Everything, for ``summary.json`` (``cams[i]["scores"]``); floats to 7 significant
        digits (the probabilities are float32)."""
        return {
            "target": self.target,
            "deletion_auc": _short(self.deletion_auc),
            "insertion_auc": _short(self.insertion_auc),
            "steps": self.steps,
            "fractions": [_short(v) for v in self.fractions],
            "deletion": [_short(v) for v in self.deletion],
            "insertion": [_short(v) for v in self.insertion],
            "baseline": self.baseline,
            "blur": {"sigma": self.blur_sigma, "kernel": self.blur_kernel},
        }

    def brief_json(self) -> dict[str, Any]:
        """The two areas and the settings, without curves: for a manifest line."""
        return {
            "deletion_auc": _short(self.deletion_auc),
            "insertion_auc": _short(self.insertion_auc),
            "steps": self.steps,
            "baseline": self.baseline,
        }


@dataclass(frozen=True)
class AucRow:
    """Mean areas of one method over ``count`` scores (one per image and target)."""

    method: str
    count: int
    deletion_auc: float
    insertion_auc: float

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "count": self.count,
                "deletion_auc": _short(self.deletion_auc), "insertion_auc": _short(self.insertion_auc)}


def _short(value: float) -> float:
    return float(f"{value:.7g}")


def trapezoid_auc(fractions: Sequence[float], curve: Sequence[float]) -> float:
    """Area under ``curve`` over ``fractions`` (both length S + 1, fractions 0..1), trapezoid rule."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


# --------------------------------------------------------------------------- tables


def mean_auc_table(records: Iterable[tuple[str, FaithfulnessScore]]) -> list[AucRow]:
    """(method, score) pairs -> one row per method, in order of first appearance: how many
    scores, mean deletion AUC (lower is better), mean insertion AUC (higher is better)."""
    sums: dict[str, list[float]] = {}
    for method, score in records:
        total = sums.setdefault(method, [0.0, 0.0, 0.0])
        total[0] += 1
        total[1] += score.deletion_auc
        total[2] += score.insertion_auc
    return [AucRow(method, int(n), deletion / n, insertion / n) for method, (n, deletion, insertion) in sums.items()]


def format_auc_table(rows: Sequence[AucRow]) -> str:
    """Plain-text table for a terminal; ``*`` marks the best method in each column."""
    if not rows:
        return "no faithfulness scores"
    best_deletion = min(row.deletion_auc for row in rows)
    best_insertion = max(row.insertion_auc for row in rows)
    header = ("method", "n", "deletion AUC (lower is better)", "insertion AUC (higher is better)")
    body = [
        (row.method, str(row.count),
         f"{row.deletion_auc:.4f}" + (" *" if row.deletion_auc == best_deletion else ""),
         f"{row.insertion_auc:.4f}" + (" *" if row.insertion_auc == best_insertion else ""))
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(4)]
    lines = [(line[0].ljust(widths[0]), line[1].rjust(widths[1]), line[2].ljust(widths[2]), line[3].ljust(widths[3]))
             for line in (header, *body)]
    return "\n".join("  ".join(cells).rstrip() for cells in lines)
