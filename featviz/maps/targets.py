"""Which class a map explains: parse ``--target`` and turn it into class indices per photo.

A target is a class index (``281``), a class name from the weights' categories, matched
case-insensitively (``tabby``, or ``"tabby cat"``), ``top`` (the predicted class) or ``topN`` (the N
best classes, one map each). Several are given comma-separated; the result keeps their order
without duplicates. Everything that can be checked without a photo is checked here, so a bad
target is a usage error before any image is read.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from featviz.errors import UsageError

# The hint of every "needs class logits (N, classes)" error: how a user's model gets there.
LOGITS_HINT = ("make the model's forward return (N, classes): flatten (N, C, 1, 1) with torch.flatten(x, 1), "
               "turn one output per photo (N,) into (N, 1) with x[:, None]")

_TOP = re.compile(r"^top(\d*)$", re.IGNORECASE)
_INDEX = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Target:
    """One requested target: a fixed class ``index``, or the ``rank``-th best class (1 = top)."""

    index: int | None = None
    rank: int | None = None

    def describe(self) -> str:
        return f"top{self.rank}" if self.rank is not None else str(self.index)


def split_targets(specs: Iterable[str | int]) -> list[str]:
    """``["281,top2", 5]`` -> ``["281", "top2", "5"]``: ``--target`` is comma-separated."""
    parts: list[str] = []
    for spec in specs:
        parts.extend(p.strip() for p in str(spec).split(",") if p.strip())
    return parts


def parse_targets(specs: Iterable[str | int], categories: Sequence[str] | None,
                  num_classes: int | None = None) -> list[Target]:
    """Targets from ``--target`` values. ``categories``: the weights' class names, or None for
    a model without them (only indices and top/topN then). ``num_classes``: the width of the
    model's output, when known, to refuse an index out of range."""
    specs = list(specs)
    if any(not str(spec).replace(",", "").strip() for spec in specs):  # --target "": not silently top
        raise UsageError("--target names no class",
                         hint="give a class index, a class name, top or topN, e.g. --target top")
    parts = split_targets(specs) or ["top"]
    targets: list[Target] = []
    for part in parts:
        top = _TOP.match(part)
        if top:
            count = int(top.group(1) or 1)
            if count < 1:
                raise UsageError(f"--target {part}: topN needs N >= 1", hint="use top, top3, ...")
            targets.extend(Target(rank=r) for r in range(1, count + 1))
        elif _INDEX.match(part):
            targets.append(Target(index=_checked_index(int(part), num_classes)))
        else:
            targets.append(Target(index=_by_name(part, categories)))
    if num_classes is not None:
        for target in targets:
            _checked_index(target.index, num_classes)
            if target.rank is not None and target.rank > num_classes:
                raise UsageError(f"--target top{target.rank}: the model has only {num_classes} classes",
                                 hint=f"use at most top{num_classes}")
    return list(dict.fromkeys(targets))


def _checked_index(index: int | None, num_classes: int | None) -> int | None:
    if index is not None and num_classes is not None and not 0 <= index < num_classes:
        raise UsageError(f"--target {index} is out of range: the model has classes 0..{num_classes - 1}",
                         hint="give a class index in that range, a class name, or top")
    return index


def _by_name(name: str, categories: Sequence[str] | None) -> int:
    """The index of the category called ``name`` (case-insensitive; a name that is the start
    or a word of exactly one category is accepted too, so ``tabby`` finds "tabby cat")."""
    if not categories:
        raise UsageError(f"--target {name!r}: this model has no class names",
                         hint="give class indices (e.g. --target 3) or top")
    wanted = name.casefold()
    lowered = [c.casefold() for c in categories]
    exact = [i for i, c in enumerate(lowered) if c == wanted]
    if len(exact) == 1:
        return exact[0]
    partial = exact or [i for i, c in enumerate(lowered) if wanted in re.split(r"[\s,/-]+", c) or c.startswith(wanted)]
    if len(partial) == 1:
        return partial[0]
    if partial:
        listed = ", ".join(f"{categories[i]} ({i})" for i in partial[:8])
        raise UsageError(f"--target {name!r} is ambiguous: it matches {listed}",
                         hint="give the full class name or its index")
    close = difflib.get_close_matches(wanted, lowered, n=5, cutoff=0.6)
    hint = ("did you mean " + ", ".join(f"{categories[lowered.index(c)]} ({lowered.index(c)})" for c in close) + "?"
            if close else "give a class index, or a name from the weights' categories")
    raise UsageError(f"--target {name!r} is not a class of this model", hint=hint)


def class_indices(targets: Sequence[Target], logits: torch.Tensor) -> torch.Tensor:
    """Class index per photo and target: int64 (N, T), from ``logits`` float (N, classes).
    ``topN`` ranks follow the logits (ties: lower index first, as ``torch.topk`` on CPU)."""
    ranks = max((t.rank for t in targets if t.rank is not None), default=0)
    order = logits.float().topk(ranks, dim=1).indices if ranks else None
    columns = []
    for target in targets:
        if target.rank is not None:
            if order is None:  # ranks > 0 whenever a target has a rank
                raise RuntimeError("ranked targets without a ranking")
            columns.append(order[:, target.rank - 1])
        else:
            columns.append(torch.full((logits.shape[0],), int(target.index or 0), dtype=torch.long,
                                      device=logits.device))
    return torch.stack(columns, dim=1)


def label(index: int, categories: Sequence[str] | None) -> str:
    """The class's name from the weights' categories, else ``class K``."""
    return categories[index] if categories and index < len(categories) else f"class {index}"


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities of a classifier's logits float (N, K) -> float32 (N, K) in [0, 1].

    K > 1: the softmax over the classes. K == 1 (a binary classifier with one output, trained
    with ``BCEWithLogitsLoss``): the softmax of one logit is 1.0 whatever the photo, which made
    probabilities, Score-CAM weights and deletion/insertion areas all 1.0; the sigmoid is the
    probability that logit stands for (its positive class), and what featviz uses then."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)
