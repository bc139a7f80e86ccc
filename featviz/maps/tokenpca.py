"""PCA of patch tokens to colours (Oquab et al., 2023, DINOv2, Fig. 1 and Fig. 9).

The first three principal components of the patch tokens, shown as red, green and blue, colour
each patch by "what kind of part" it is: patches of the same part get the same colour across
photos, **if the basis is shared**. So the basis is fitted once over all photos of a run, and the
colours are scaled with one min-max per component over the same fitted set (not per photo, which
would stretch every photo's colours to the full range and make them incomparable).

Fitting streams: :class:`PcaAccumulator` sums the count, Σx and Σxxᵀ (float64, D×D) batch by
batch and merges across parts of a run; :meth:`PcaAccumulator.basis` takes the eigenvectors of the
covariance, largest eigenvalue first. A component's sign is arbitrary; featviz fixes it as
scikit-learn's ``svd_flip`` does (the loading with the largest absolute value is positive), so a
refit on the same tokens gives the same colours. A second pass (:meth:`PcaBasis.widen`) records
each component's minimum and maximum over the fitted tokens for the colour scale;
:func:`fit_basis` does both passes over tokens held in memory.

Foreground (DINOv2, Fig. 9 caption: "background is removed by removing patches with a negative
score of the first PCA component"): patches whose first-component score (the centred projection,
not the min-max-scaled colour) is above ``threshold`` (0 by default) are foreground. Because the
sign of a component is arbitrary, the same rule may keep the background on another model;
``invert=True`` keeps the other side (DINOv2's own notebooks pick the side by eye, too). DINOv2
then fits a second PCA on the foreground patches only: fit a new basis on the kept rows to do so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from featviz.errors import FeatvizError, UsageError


def _rows(tokens: torch.Tensor) -> torch.Tensor:
    """Any (..., D) float tensor as float64 rows (M, D)."""
    if tokens.ndim < 2 or not tokens.is_floating_point():
        raise FeatvizError(f"expected float tokens (..., D), got {tuple(tokens.shape)} {tokens.dtype}",
                           hint="pass patch tokens, e.g. (N, P, D) without the prefix tokens")
    return tokens.reshape(-1, tokens.shape[-1]).double()


@dataclass(frozen=True)
class PcaBasis:
    """A fitted basis: mean float64 (D,), components float64 (K, D) orthonormal rows (largest
    variance first), variance float64 (K,) (the eigenvalues, population covariance), and the
    score range lo/hi float64 (K,) over the fitted tokens (±inf until :meth:`widen` saw them)."""

    mean: torch.Tensor
    components: torch.Tensor
    variance: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scores: tokens float (..., D) -> float64 (..., K), the centred projections."""
        if tokens.shape[-1] != self.mean.shape[0]:
            raise FeatvizError(f"the tokens have {tokens.shape[-1]} features, the basis {self.mean.shape[0]}",
                               hint="transform tokens of the layer the basis was fitted on")
        return ((_rows(tokens) - self.mean) @ self.components.T).reshape(*tokens.shape[:-1], -1)

    def widen(self, tokens: torch.Tensor) -> PcaBasis:
        """The basis with its score range widened to cover ``tokens`` float (..., D)."""
        scores = self.transform(tokens).reshape(-1, self.components.shape[0])
        return replace(self, lo=torch.minimum(self.lo, scores.min(0).values),
                       hi=torch.maximum(self.hi, scores.max(0).values))

    def to_rgb(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first three components as colours: tokens float (..., D) -> float32 (..., 3) in [0, 1],
        each component min-max scaled over the fitted set (scores outside it are clipped)."""
        if self.components.shape[0] < 3:
            raise UsageError("an RGB picture needs a basis of at least 3 components",
                             hint="fit the basis with components=3")
        if not bool(torch.isfinite(self.lo[:3]).all()):
            raise FeatvizError("the basis has no colour range yet", hint="call widen() on the fitted tokens first")
        scores = self.transform(tokens)[..., :3]
        span = (self.hi[:3] - self.lo[:3]).clamp_min(1e-12)
        return ((scores - self.lo[:3]) / span).clamp(0, 1).float()


def foreground(basis: PcaBasis, tokens: torch.Tensor, threshold: float = 0.0, invert: bool = False) -> torch.Tensor:
    """DINOv2's foreground: bool (...,) for tokens float (..., D), True where the first component's
    score is above ``threshold`` (below it with ``invert``)."""
    first = basis.transform(tokens)[..., 0]
    return first < threshold if invert else first > threshold


class PcaAccumulator:
    """Streaming PCA over many batches of tokens; mergeable (sums, not samples)."""

    def __init__(self, features: int) -> None:
        self.count = 0
        self.total = torch.zeros(features, dtype=torch.float64)
        self.outer = torch.zeros(features, features, dtype=torch.float64)

    def add(self, tokens: torch.Tensor) -> None:
        """Fold in tokens float (..., D) (every leading index is one sample)."""
        rows = _rows(tokens)
        if rows.shape[1] != self.total.shape[0]:
            raise FeatvizError(f"the tokens have {rows.shape[1]} features, the accumulator {self.total.shape[0]}",
                               hint="fit one basis per layer")
        self.count += rows.shape[0]
        self.total += rows.sum(0)
        self.outer += rows.T @ rows

    def merge(self, other: PcaAccumulator) -> None:
        self.count += other.count
        self.total += other.total
        self.outer += other.outer

    def basis(self, components: int = 3) -> PcaBasis:
        """The top ``components`` principal directions of everything added (score range not yet set)."""
        features = self.total.shape[0]
        if not 1 <= components <= features:
            raise UsageError(f"cannot take {components} components of {features} features",
                             hint="ask for 1..D components (3 for a colour picture)")
        if self.count < 2:
            raise FeatvizError("a PCA needs at least two tokens", hint="fit on the patch tokens of a photo or more")
        mean = self.total / self.count
        covariance = self.outer / self.count - torch.outer(mean, mean)
        values, vectors = torch.linalg.eigh((covariance + covariance.T) / 2)  # ascending
        order = torch.arange(features - 1, features - 1 - components, -1)
        chosen = vectors[:, order].T.contiguous()  # (K, D)
        signs = torch.sign(chosen.gather(1, chosen.abs().argmax(1, keepdim=True)))
        chosen = chosen * torch.where(signs == 0, torch.ones_like(signs), signs)
        inf = torch.full((components,), float("inf"), dtype=torch.float64)
        return PcaBasis(mean=mean, components=chosen, variance=values[order].clamp_min(0), lo=inf, hi=-inf)


def fit_basis(batches: Iterable[torch.Tensor], components: int = 3) -> PcaBasis:
    """Fit a basis and its colour range over tokens held in memory: each batch float (..., D)
    (e.g. the patch tokens (N, P, D) of some photos), all with the same D."""
    held = list(batches)
    if not held:
        raise FeatvizError("no tokens to fit a PCA on", hint="run at least one photo")
    accumulator = PcaAccumulator(held[0].shape[-1])
    for batch in held:
        accumulator.add(batch)
    basis = accumulator.basis(components)
    for batch in held:
        basis = basis.widen(batch)
    return basis
