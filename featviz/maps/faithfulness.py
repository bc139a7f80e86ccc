"""How faithful is a saliency map? Deletion and insertion (Petsiuk et al., RISE, BMVC 2018).

A map that explains the network's decision should rank first the pixels the decision depends on.
Deletion removes the input's pixels in that order and watches the target's probability fall
(fast fall, small area: faithful); insertion starts from a blurred copy and puts the original
pixels back in the same order (fast rise, large area: faithful). Both only need the model's full
forward pass, so this module uses no hooks.

Definitions (P = H·W pixels, S steps, k = 0..S):

* order: pixels sorted by descending saliency, ties by ascending raster index (a stable sort),
  the same for all channels of a pixel;
* n_k = ⌊k·P / S⌋ pixels are changed at point k, x_k = n_k / P (so x_0 = 0 and x_S = 1);
* deletion point k: the input with its first n_k pixels set to the baseline; insertion point k:
  the blurred input with its first n_k pixels set back to the input;
* y_k = softmax(model(point k))[target]; AUC = Σ_k (x_{k+1} − x_k)(y_k + y_{k+1}) / 2.

Baselines ("what a removed pixel becomes"), all in the network-input space:

* ``zero`` (default): 0 of the normalised input, i.e. the normalisation's mean colour (ImageNet's
  mid-grey). This is what RISE's evaluation code does (``torch.zeros_like`` on the normalised
  tensor) and what torch-cam's ``DeletionInsertionMetric`` does by default;
* ``black``: pixel value 0 in [0, 1] pixel space, (0 − mean) / std per channel (needs the
  normalisation's ``mean`` and ``std``);
* ``blur``: the blurred copy that insertion starts from (deletion then removes detail only).

Blur: ``torchvision.transforms.functional.gaussian_blur``, kernel 11 and σ = 5 pixels as in
RISE's code, with reflect padding; the kernel shrinks to the largest odd size that reflect padding
allows on inputs smaller than 6 pixels. Blurring commutes with per-channel normalisation (the
kernel sums to 1), so blurring the normalised tensor is blurring the photo.

Every perturbed input is one row of a batched forward; perturbed inputs that coincide are run once
(the original, the baseline and the blurred copy of an image are shared by all its maps and
targets, and maps that order the pixels the same way share every point).

The scores as records (:class:`FaithfulnessScore`, :class:`AucRow`), the trapezoid rule and the
run's mean-AUC table are :mod:`featviz.maps.aucscores`; they are importable from here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import functional as TF

from featviz.errors import ImageError, UsageError
from featviz.maps.aucscores import AucRow, FaithfulnessScore, format_auc_table, mean_auc_table, trapezoid_auc
from featviz.maps.targets import LOGITS_HINT, class_probabilities

BASELINES: tuple[str, ...] = ("zero", "black", "blur")
DEFAULT_STEPS = 16
DEFAULT_BLUR_SIGMA = 5.0
DEFAULT_BLUR_KERNEL = 11
# Perturbed inputs per forward pass. Measured with benchmarks/faithfulness.py (docs/class-maps.md, "Speed"):
# on the CPU (ResNet-18, 224x224) 32 is as fast as 64 and ~20 % faster than 16, and a ResNet-50
# forward of 32 rows holds ~420 MB against ~730 MB for 64.
DEFAULT_BATCH_SIZE = 32

__all__ = ["BASELINES", "DEFAULT_BATCH_SIZE", "DEFAULT_BLUR_KERNEL", "DEFAULT_BLUR_SIGMA", "DEFAULT_STEPS", "AucRow",
           "FaithfulnessScore", "deletion_insertion", "format_auc_table", "mean_auc_table", "trapezoid_auc"]


# --------------------------------------------------------------------------- the public entry


def deletion_insertion(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int | None = None,
    baseline: str = "zero",
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    blur_kernel: int = DEFAULT_BLUR_KERNEL,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> list[FaithfulnessScore | ImageError]:
    """Deletion and insertion curves for N (input, map, target) rows.

    inputs: float (N, C, H, W), the normalised network inputs on the model's device; rows may
    repeat (one row per image, method and target: equal rows are run once).
    saliency: float (N, H, W) at input resolution, any range, higher = more important.
    targets: N class indices into the model's (N, K) output logits.
    mean, std: the normalisation's per-channel values, needed only for ``baseline="black"``.
    names: one label per row for error messages (default ``"image <row>"``).

    Returns one entry per row: its :class:`FaithfulnessScore`, or the :class:`ImageError` that
    row met (a NaN or infinite map, a NaN or infinite model output) so that the other rows go on.
    Raises :class:`UsageError` for arguments that cannot work (shapes, steps, a target out of
    range, an output that is not (N, K) logits). The model is run in eval mode without gradients
    and its train/eval flags are restored afterwards, also on errors; nothing is modified in place.
    """
    n, _, height, width = _check_shapes(inputs, saliency, targets)
    target_list = [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]
    kernel = _check_settings(steps, batch_size, baseline, blur_sigma, blur_kernel, inputs.shape[1],
                             mean, std, height, width)
    labels = list(names) if names is not None else [f"image {row}" for row in range(n)]
    if len(labels) != n:
        raise UsageError(f"names has {len(labels)} entries for {n} rows")

    outcome: list[FaithfulnessScore | ImageError | None] = [None] * n
    good = []
    for row in range(n):
        if not bool(torch.isfinite(saliency[row]).all()):
            outcome[row] = ImageError(f"{labels[row]}: the saliency map contains NaN or infinite values",
                                      hint="no deletion/insertion score for this map")
        else:
            good.append(row)
    if good:
        plan = _plan(inputs, saliency, good, steps, same_blur=baseline == "blur")
        with _evaluating(model), torch.no_grad():
            sources = _sources(plan.images, baseline, blur_sigma, kernel, mean, std)
            curves = _run(model, plan, sources, target_list, batch_size or DEFAULT_BATCH_SIZE)
        for row in good:
            outcome[row] = _score(row, curves[row], plan.fractions, target_list[row], steps, baseline,
                                  blur_sigma, kernel, labels[row])
    return [entry for entry in outcome if entry is not None]


# --------------------------------------------------------------------------- checks


def _check_shapes(inputs: torch.Tensor, saliency: torch.Tensor,
                  targets: Sequence[int] | torch.Tensor) -> tuple[int, int, int, int]:
    if inputs.dim() != 4 or not inputs.is_floating_point():
        raise UsageError(f"deletion/insertion needs float inputs of shape (N, C, H, W), got "
                         f"{inputs.dtype} {tuple(inputs.shape)}")
    n, c, height, width = inputs.shape
    if tuple(saliency.shape) != (n, height, width):
        raise UsageError(f"the saliency maps have shape {tuple(saliency.shape)}, the inputs {tuple(inputs.shape)}",
                         hint=f"upsample the maps to the input size: ({n}, {height}, {width})")
    if len(targets) != n:
        raise UsageError(f"{len(targets)} targets for {n} inputs", hint="give one class index per row")
    return n, c, height, width


def _check_settings(steps: int, batch_size: int | None, baseline: str, blur_sigma: float,
                    blur_kernel: int, channels: int, mean: Sequence[float] | None,
                    std: Sequence[float] | None, height: int, width: int) -> int:
    """Validate the options; return the blur kernel size actually used (odd, fits the input)."""
    pixels = height * width
    if not 1 <= steps <= pixels:
        raise UsageError(f"steps must be between 1 and the number of pixels ({pixels}), got {steps}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"the batch size must be at least 1, got {batch_size}")
    if baseline not in BASELINES:
        raise UsageError(f"unknown deletion baseline {baseline!r}", hint="use one of " + ", ".join(BASELINES))
    if not blur_sigma > 0:
        raise UsageError(f"the blur sigma must be positive, got {blur_sigma}")
    if blur_kernel < 1 or blur_kernel % 2 == 0:
        raise UsageError(f"the blur kernel size must be odd and positive, got {blur_kernel}")
    if baseline == "black":
        if mean is None or std is None or len(mean) != channels or len(std) != channels:
            raise UsageError("baseline 'black' needs the normalisation's mean and std, one value per channel",
                             hint="pass mean= and std= (featviz's Preprocess has them)")
        if any(s == 0 for s in std):
            raise UsageError("baseline 'black' needs a non-zero std for every channel")
    # Reflect padding needs pad = kernel // 2 < the shorter side.
    return min(blur_kernel, 2 * min(height, width) - 1)


# --------------------------------------------------------------------------- the plan


@dataclass
class _Plan:
    """Which distinct inputs to run, and which curve point of which row each one feeds.

    images: float (U, C, H, W), the distinct inputs; ranks: int64 (G, P), each distinct pixel
    order as the rank of every pixel (0 = most salient); jobs[j] = (source a, source b, order
    group or -1, n): the perturbed input is source a where rank < n and source b elsewhere;
    readers[j] = [(row, curve 0 deletion / 1 insertion, k)].
    """

    images: torch.Tensor
    ranks: torch.Tensor
    fractions: list[float]
    jobs: list[tuple[int, int, int, int]]
    readers: list[list[tuple[int, int, int]]]


def _digest(tensor: torch.Tensor) -> bytes:
    return hashlib.blake2b(tensor.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()


def _plan(inputs: torch.Tensor, saliency: torch.Tensor, rows: list[int], steps: int,
          same_blur: bool = False) -> _Plan:
    """``same_blur``: the baseline is the blurred copy, so deletion's end is insertion's start."""
    pixels = inputs.shape[2] * inputs.shape[3]
    counts = [k * pixels // steps for k in range(steps + 1)]
    order = torch.argsort(saliency[rows].reshape(len(rows), -1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(pixels, device=order.device).expand_as(order))

    image_ids: dict[bytes, int] = {}
    group_ids: dict[tuple[int, bytes], int] = {}
    image_rows: list[int] = []
    group_rows: list[int] = []
    row_image: dict[int, int] = {}
    row_group: dict[int, int] = {}
    for i, row in enumerate(rows):
        image = image_ids.setdefault(_digest(inputs[row]), len(image_ids))
        if image == len(image_rows):
            image_rows.append(row)
        group = group_ids.setdefault((image, _digest(ranks[i])), len(group_ids))
        if group == len(group_rows):
            group_rows.append(i)
        row_image[row], row_group[row] = image, group

    n_images = len(image_rows)
    jobs: dict[tuple[int, int, int, int], list[tuple[int, int, int]]] = {}
    for row in rows:
        u, g = row_image[row], row_group[row]
        original, blurred = u, 2 * n_images + u
        removed = blurred if same_blur else n_images + u
        for k, count in enumerate(counts):
            if count == 0:
                deletion, insertion = (original, original, -1, 0), (blurred, blurred, -1, 0)
            elif count == pixels:
                deletion, insertion = (removed, removed, -1, 0), (original, original, -1, 0)
            else:
                deletion, insertion = (removed, original, g, count), (original, blurred, g, count)
            jobs.setdefault(deletion, []).append((row, 0, k))
            jobs.setdefault(insertion, []).append((row, 1, k))
    return _Plan(images=inputs[image_rows], ranks=ranks[group_rows].to(inputs.device),
                 fractions=[count / pixels for count in counts],
                 jobs=list(jobs), readers=list(jobs.values()))


def _sources(images: torch.Tensor, baseline: str, sigma: float, kernel: int,
             mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """(3U, C, H, W): the distinct inputs, their baselines, their blurred copies."""
    blurred = TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    if baseline == "zero":
        removed = torch.zeros_like(images)
    elif baseline == "black":
        # A black pixel normalised exactly as the photo's pixels were (torchvision's normalize).
        removed = TF.normalize(torch.zeros_like(images), mean=list(mean or ()), std=list(std or ()))
    else:
        removed = blurred
    return torch.cat([images, removed, blurred])


# --------------------------------------------------------------------------- running


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the pass; every module's train/eval flag restored afterwards, also on errors."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _run(model: nn.Module, plan: _Plan, sources: torch.Tensor, targets: list[int],
         batch_size: int) -> dict[int, np.ndarray]:
    """Run every job in batches; return row -> float64 (2, S + 1) curves (NaN where the model's
    output was not finite)."""
    points = len(plan.fractions)
    curves: dict[int, np.ndarray] = {}
    height, width = sources.shape[2], sources.shape[3]
    for start in range(0, len(plan.jobs), batch_size):
        chunk = plan.jobs[start:start + batch_size]
        batch = _perturbed(chunk, plan.ranks, sources, height, width)
        probabilities = _probabilities(model(batch), len(chunk), targets)
        positions, classes, slots = [], [], []
        for offset, readers in enumerate(plan.readers[start:start + batch_size]):
            for row, curve, k in readers:
                positions.append(offset)
                classes.append(targets[row])
                slots.append((row, curve, k))
        values = probabilities[positions, classes].cpu().tolist()
        for (row, curve, k), value in zip(slots, values, strict=True):
            curves.setdefault(row, np.full((2, points), np.nan))[curve, k] = value
    return curves


def _perturbed(chunk: list[tuple[int, int, int, int]], ranks: torch.Tensor, sources: torch.Tensor,
               height: int, width: int) -> torch.Tensor:
    """(B, C, H, W): source a where the pixel's rank < n, source b elsewhere, per job."""
    device = sources.device
    a = torch.tensor([job[0] for job in chunk], device=device)
    b = torch.tensor([job[1] for job in chunk], device=device)
    groups = torch.tensor([max(job[2], 0) for job in chunk], device=device)
    counts = torch.tensor([job[3] for job in chunk], device=device)
    inside = (ranks[groups] < counts[:, None]).reshape(len(chunk), 1, height, width)
    return torch.where(inside, sources[a], sources[b])


def _probabilities(output: Any, rows: int, targets: list[int]) -> torch.Tensor:
    """Softmax over the classes of a (B, K) output: float32 (B, K) in [0, 1]."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != rows:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UsageError(f"deletion/insertion needs a classifier's (N, classes) logits, the model returned {shape}",
                         hint=LOGITS_HINT)
    classes = output.shape[1]
    outside = sorted({t for t in targets if not 0 <= t < classes})
    if outside:
        raise UsageError(f"target class {outside[0]} is out of range: the model has {classes} classes "
                         f"(0..{classes - 1})")
    return class_probabilities(output)


def _score(row: int, curves: np.ndarray, fractions: list[float], target: int, steps: int,
           baseline: str, sigma: float, kernel: int, label: str) -> FaithfulnessScore | ImageError:
    if not np.isfinite(curves).all():
        return ImageError(f"{label}: the model's output is NaN or infinite on a perturbed input",
                          hint="no deletion/insertion score for this map; check the model and the input")
    deletion, insertion = curves[0].tolist(), curves[1].tolist()
    return FaithfulnessScore(
        target=target, fractions=tuple(fractions), deletion=tuple(deletion), insertion=tuple(insertion),
        deletion_auc=trapezoid_auc(fractions, deletion), insertion_auc=trapezoid_auc(fractions, insertion),
        steps=steps, baseline=baseline, blur_sigma=float(sigma), blur_kernel=kernel,
    )
