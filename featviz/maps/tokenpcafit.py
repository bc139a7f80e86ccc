"""Fitting ONE PCA basis over every photo of a run, in as few passes over the photos as memory allows.

:mod:`featviz.maps.tokenpca` needs two things of the fitted set: the covariance (for the basis)
and, once the basis is known, each component's minimum and maximum score (for the colour scale,
shared by every photo so that colours compare). :func:`fit_run_basis` takes a *factory* of token
batches (each call starts a new pass over the run's photos, e.g. decoding and running them
again) and

* passes once, summing count, Σx and Σxxᵀ (:class:`~featviz.maps.tokenpca.PcaAccumulator`) and
  keeping the tokens themselves while they fit in ``budget_bytes`` (float32);
* takes the basis, then widens its score range over the kept tokens, or, when they did not fit,
  over a second pass.

The result does not depend on the batch sizes (sums in float64; the order of the photos is the
order the factory gives, so a caller that wants the same basis twice gives the same order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch

from featviz.errors import FeatvizError
from featviz.maps.tokenpca import PcaAccumulator, PcaBasis

__all__ = ["DEFAULT_BUDGET", "RunBasis", "fit_run_basis"]

DEFAULT_BUDGET = 256 * 2**20  # bytes of float32 tokens kept between the two steps (else a second pass)


class RunBasis:
    """A fitted basis (with its colour range), the number of ``tokens`` it was fitted on, and how
    many ``passes`` over the photos the fit took (1, or 2 when the tokens did not fit in memory)."""

    def __init__(self, basis: PcaBasis, tokens: int, passes: int, total_variance: float) -> None:
        self.basis = basis
        self.tokens = tokens
        self.passes = passes
        self.total_variance = total_variance  # the trace of the covariance: all D components together

    def record(self) -> dict[str, object]:
        """What a result's summary says about the basis its colours come from."""
        variance = [float(v) for v in self.basis.variance]
        return {"fitted_tokens": self.tokens, "passes": self.passes, "basis": self.digest(),
                "variance": [round(v, 6) for v in variance],
                "variance_share": [round(v / self.total_variance, 6) if self.total_variance > 0 else 0.0
                                   for v in variance]}

    def digest(self) -> str:
        """A short fingerprint of the basis and its colour range: two runs draw the same colours
        exactly when their digests agree (recorded with each result, checked on resume)."""
        parts = [self.basis.mean, self.basis.components, self.basis.lo, self.basis.hi]
        data = b"".join(part.double().contiguous().numpy().tobytes() for part in parts)
        return hashlib.sha256(data).hexdigest()[:16]


def fit_run_basis(batches: Callable[[], Iterable[torch.Tensor]], components: int = 3,
                  budget_bytes: int = DEFAULT_BUDGET) -> RunBasis:
    """Fit a basis with its colour range over every token the factory's passes give.

    batches: called once or twice; each call yields float tensors (..., D) (e.g. one photo's
    patch tokens (P, D)), the same tokens in the same order every call.
    """
    accumulator: PcaAccumulator | None = None
    kept: list[torch.Tensor] | None = []
    size = 0
    for batch in batches():
        rows = batch.detach().reshape(-1, batch.shape[-1]).float().cpu()
        if accumulator is None:
            accumulator = PcaAccumulator(rows.shape[1])
        accumulator.add(rows)
        if kept is not None:
            size += rows.numel() * 4
            if size > budget_bytes:
                kept = None  # too many to hold: the range comes from a second pass
            else:
                kept.append(rows)
    if accumulator is None:
        raise FeatvizError("no tokens to fit a PCA on: no photo of the run could be read",
                           hint="check the inputs; --pca-tokens fits its colours on the photos of the run")
    basis = accumulator.basis(components)
    for rows in kept if kept is not None else batches():
        basis = basis.widen(rows)
    mean = accumulator.total / accumulator.count
    total = float(torch.diagonal(accumulator.outer).sum() / accumulator.count - (mean * mean).sum())
    return RunBasis(basis, accumulator.count, 1 if kept is not None else 2, max(total, 0.0))
