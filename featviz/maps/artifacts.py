"""High-norm artifact tokens: the patches a vision transformer repurposes as scratch space.

Darcet et al. (ICLR 2024, "Vision Transformers Need Registers", Sec. 2) found that large ViTs
(DINOv2, OpenCLIP, DeiT-III) turn a few low-information background patches into tokens whose
norm is far above the rest (about 10× in DINOv2's last blocks) and which hold global, not local,
information; they show up as bright spots in attention maps. The paper separates them with a
fixed cut-off (norm > 150 for DINOv2 ViT-g), which only fits one model. featviz flags them with
a robust outlier rule that adapts to any model and block:

    norm_t = ‖x_t‖₂ over the D features of patch token t;
    flagged  ⇔  norm_t > median(norm) + k · σ̂,   σ̂ = 1.4826 · MAD,  MAD = median(|norm − median(norm)|),

median and MAD taken over one photo's patch tokens in one block (prefix tokens are never flagged
and never in the statistics: the class token and registers are meant to be different). The factor
1.4826 = 1 / Φ⁻¹(¾) scales the MAD so that σ̂ estimates the standard deviation of normally
distributed norms (Rousseeuw & Croux, 1993); k = 3 (default) then flags what would be more than
3 σ above the median. The rule is one-sided: only high norms are artifacts. When more than half
the norms are equal the MAD is 0 and every norm above the median is flagged; that is what the
rule says, so it is kept and the JSON records the MAD so a reader can see it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

from featviz.capture.tokens import TokenLayout
from featviz.errors import FeatvizError, UsageError

MAD_SCALE = 1 / NormalDist().inv_cdf(0.75)  # 1.482602...: the MAD of a normal distribution times this is its σ
DEFAULT_K = 3.0


def token_norms(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """L2 norm of each token over its features.

    tokens: float (N, T, D), one block's output, T == layout.tokens.
    Returns float32 (N, T), ≥ 0, prefix tokens first (as in the sequence).
    """
    if tokens.ndim != 3 or tokens.shape[1] != layout.tokens or not tokens.is_floating_point():
        raise FeatvizError(
            f"expected float tokens of shape (N, {layout.tokens}, D), got {tuple(tokens.shape)} {tokens.dtype}",
            hint="pass a transformer block's output, captured at the layout's input size")
    norms: torch.Tensor = torch.linalg.vector_norm(tokens.double(), dim=-1)
    return norms.float()


def _median(values: torch.Tensor) -> torch.Tensor:
    """The median along the last axis as statistics define it (the mean of the two middle values
    for an even count; torch.median returns the lower one)."""
    ordered = values.sort(dim=-1).values
    count = values.shape[-1]
    return (ordered[..., (count - 1) // 2] + ordered[..., count // 2]) / 2


@dataclass(frozen=True)
class ArtifactTokens:
    """The outlier test of one block over a batch.

    norms: float32 (N, T), every token's norm (prefix included, for the record);
    median, mad, threshold: float64 (N,), over the patch tokens of each photo;
    flags: bool (N, rows, cols), the patches above the threshold, on the patch grid.
    """

    norms: torch.Tensor
    median: torch.Tensor
    mad: torch.Tensor
    threshold: torch.Tensor
    flags: torch.Tensor
    k: float
    layout: TokenLayout

    def photo_json(self, index: int) -> dict[str, Any]:
        """One photo's test, JSON-ready; flagged patches as [row, col] with their norms."""
        cols = self.layout.grid[1]
        patch_norms = self.norms[index, self.layout.prefix:]
        flagged = [int(i) for i in torch.nonzero(self.flags[index].reshape(-1)).reshape(-1)]
        return {
            "k": self.k,
            "mad_scale": MAD_SCALE,
            "median": round(float(self.median[index]), 6),
            "mad": round(float(self.mad[index]), 6),
            "threshold": round(float(self.threshold[index]), 6),
            "max_norm": round(float(patch_norms.max()), 6),
            "prefix_norms": [round(float(v), 6) for v in self.norms[index, :self.layout.prefix]],
            "flagged": [{"row": i // cols, "col": i % cols, "norm": round(float(patch_norms[i]), 6)} for i in flagged],
        }


def artifact_tokens(tokens: torch.Tensor, layout: TokenLayout, k: float = DEFAULT_K) -> ArtifactTokens:
    """Flag one block's high-norm patch tokens (the rule in the module docstring).

    tokens: float (N, T, D) with T == layout.tokens; k: how many robust σ above the median, ≥ 0.
    """
    if not (math.isfinite(k) and k >= 0):
        raise UsageError(f"the outlier factor k must be a finite number ≥ 0, not {k}",
                         hint="k = 3 flags norms more than 3 robust standard deviations above the median")
    norms = token_norms(tokens, layout)
    patches = norms[:, layout.prefix:].double()  # (N, P)
    median = _median(patches)
    mad = _median((patches - median[:, None]).abs())
    threshold = median + k * MAD_SCALE * mad
    flags = (patches > threshold[:, None]).reshape(norms.shape[0], *layout.grid)
    return ArtifactTokens(norms=norms, median=median, mad=mad, threshold=threshold, flags=flags, k=float(k),
                          layout=layout)


def block_norms(blocks: Sequence[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """Every block's token norms, float32 (N, blocks, T): the curve along depth in which Darcet et
    al. watch artifacts appear (their Fig. 3)."""
    if not blocks:
        raise FeatvizError("no blocks to measure", hint="capture at least one transformer block")
    return torch.stack([token_norms(b, layout) for b in blocks], dim=1)
