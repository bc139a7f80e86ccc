"""What a vision transformer attends to: per-head maps, DINO's masks, rollout and relevance.

Tensor maths only, over the probabilities that :mod:`featviz.capture.selfattention` records:
``attentions[b]``: float32 (N, heads, T, T) for block b (rows sum to 1, T = prefix + rows·cols
tokens in :class:`~featviz.capture.tokens.TokenLayout` order), and for relevance the gradients
of the target logit with respect to them, same shapes. Every map is the row of the query token
(the class token, index ``query``, 0 in timm and torchvision) over the PATCH keys: the prefix
keys (class, distillation, register tokens) are dropped and nothing is renormalised, so a head
that sends most of its mass to a register shows a faint map rather than a falsely bright one.

* heads (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021):
  A_h[query, prefix:] of one block, per head;
* DINO's masks: the smallest set of patches holding a fraction P of a head's patch mass;
* rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  Â_b = ½·fuse_h(A_b) + ½·I, rows renormalised; R = Â_L ··· Â_s (start block s to block L);
* relevance (Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
  Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): R = I; for each block in order
  R ← R + mean_h((∇A_b ⊙ A_b)⁺)·R.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from featviz.capture.tokens import TokenLayout
from featviz.errors import UsageError

FUSIONS = ("mean", "max", "min")


def patch_row(matrix: torch.Tensor, layout: TokenLayout, query: int = 0) -> torch.Tensor:
    """Row ``query`` of a token matrix over the patch keys, as a map.

    matrix: float (..., T, T) with T == layout.tokens -> float32 (..., rows, cols), the prefix
    keys dropped, not renormalised (patch (i, j) is key ``prefix + i·cols + j``)."""
    if matrix.shape[-1] != layout.tokens or matrix.shape[-2] != layout.tokens:
        raise UsageError(f"expected {layout.tokens}×{layout.tokens} attention ({layout.prefix} prefix + "
                         f"{layout.grid[0]}×{layout.grid[1]} patches), got {tuple(matrix.shape)}",
                         hint="the token layout read from the model does not fit its attention; featviz will not guess")
    return matrix[..., query, layout.prefix:].float().reshape(*matrix.shape[:-2], *layout.grid)


def head_maps(attention: torch.Tensor, layout: TokenLayout, query: int = 0) -> torch.Tensor:
    """DINO's per-head maps of one block: attention (N, heads, T, T) -> float32 (N, heads, rows, cols)
    in [0, 1], the probabilities of the query token to each patch (the heads' mean is their
    ``mean(dim=1)``)."""
    return patch_row(attention, layout, query)


def dino_masks(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's masks: for each map, the smallest set of cells holding ``threshold`` (0 < P <= 1)
    of its mass. maps: float (..., rows, cols) >= 0 -> bool (..., rows, cols). Cells are taken
    from the largest down (ties: lower index first) until their sum reaches P of the total; an
    all-zero map gets an empty mask."""
    if not 0 < threshold <= 1:
        raise UsageError(f"--heads-threshold {threshold} is out of range", hint="use a fraction in (0, 1], e.g. 0.6")
    flat = maps.float().flatten(-2)
    total = flat.sum(dim=-1, keepdim=True)
    values, order = flat.sort(dim=-1, descending=True, stable=True)
    before = values.cumsum(dim=-1) - values  # mass of the larger cells taken before this one
    take = (before < threshold * total) & (total > 0)
    keep = torch.zeros_like(take).scatter(-1, order, take)
    return keep.reshape(maps.shape)


def fuse_heads(attention: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """attention (N, heads, T, T) -> float32 (N, T, T): the heads' mean, max or min."""
    a = attention.float()
    if fusion == "mean":
        return a.mean(dim=1)
    if fusion == "max":
        return a.amax(dim=1)
    if fusion == "min":
        return a.amin(dim=1)
    raise UsageError(f"unknown head fusion {fusion!r}", hint="use " + ", ".join(FUSIONS))


def discard_lowest(fused: torch.Tensor, ratio: float, keep: int = 0) -> torch.Tensor:
    """Zero the lowest ``ratio`` (0 <= r < 1) of each matrix's entries, never those in row or
    column ``keep`` (the class token's: its attention is what the map reads). fused: float32
    (N, T, T) -> a new (N, T, T). Of the (T-1)² candidates, floor(r·(T-1)²) are zeroed (ties:
    lower flat index first)."""
    if not 0 <= ratio < 1:
        raise UsageError(f"--rollout-discard {ratio} is out of range", hint="use a fraction in [0, 1), e.g. 0.9")
    n, t, _ = fused.shape
    out = fused.clone()
    eligible = torch.ones(t, t, dtype=torch.bool, device=fused.device)
    eligible[keep, :] = False
    eligible[:, keep] = False
    count = int(ratio * int(eligible.sum()))
    if count == 0:
        return out
    candidates = out.reshape(n, -1)[:, eligible.flatten()]  # (N, (T-1)²)
    lowest = candidates.sort(dim=-1, stable=True).indices[:, :count]
    candidates.scatter_(-1, lowest, 0.0)
    out.reshape(n, -1)[:, eligible.flatten()] = candidates
    return out


def rollout(attentions: Sequence[torch.Tensor], *, fusion: str = "mean", discard: float = 0.0,
            start: int = 0, query: int = 0) -> torch.Tensor:
    """Attention rollout through blocks ``start .. len(attentions)-1``: attentions [(N, heads, T, T)]
    in block order -> float32 (N, T, T), R = Â_last ··· Â_start with
    Â = ½·fuse(A) + ½·I, each row divided by its own sum (after ``discard``). Entry (q, k): how
    much of token q's representation after the last block flows from input token k; every row
    sums to 1."""
    if not 0 <= start < len(attentions):
        raise UsageError(f"--rollout-start {start} is out of range: the blocks up to the chosen one are "
                         f"0..{len(attentions) - 1}",
                         hint="start at block 0 (the default) or a later block before the chosen one")
    first = attentions[0]
    t = first.shape[-1]
    eye = torch.eye(t, device=first.device)
    result = eye.expand(first.shape[0], t, t).clone()
    for attention in attentions[start:]:
        fused = fuse_heads(attention, fusion)
        if discard:
            fused = discard_lowest(fused, discard, query)
        hat = 0.5 * fused + 0.5 * eye
        hat = hat / hat.sum(dim=-1, keepdim=True)
        result = hat @ result
    return result


def relevance(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s generic relevance: attentions and gradients [(N, heads, T, T)] in block
    order (gradient b: d y^c / d A_b, of the target logit, for the same block b) -> float32
    (N, T, T), R = I, then R ← R + mean_h((∇A_b ⊙ A_b)⁺)·R for every block. Entries >= 0; the
    diagonal holds 1 from the identity, so a map reads row ``query`` over the patches only."""
    if len(attentions) != len(gradients):
        raise ValueError("one gradient per block")
    first = attentions[0]
    t = first.shape[-1]
    result = torch.eye(t, device=first.device).expand(first.shape[0], t, t).clone()
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = torch.relu(gradient.float() * attention.float()).mean(dim=1)
        result = result + weighted @ result
    return result


def _row_through(factors: Sequence[torch.Tensor], query: int) -> torch.Tensor:
    """Row ``query`` of the product factors[-1] ··· factors[0] (each float32 (N, T, T)), computed
    from the left as a vector: e_qᵀ·F_last, then ·F_{last-1}, … — T² work per block instead of T³."""
    row = factors[-1][:, query, :]
    for factor in reversed(factors[:-1]):
        row = (row[:, None, :] @ factor)[:, 0, :]
    return row


def rollout_row(attentions: Sequence[torch.Tensor], *, fusion: str = "mean", discard: float = 0.0,
                start: int = 0, query: int = 0) -> torch.Tensor:
    """Row ``query`` of :func:`rollout`, float32 (N, T), without forming the T×T product (what
    ``--cam rollout`` draws: the class token's row)."""
    if not 0 <= start < len(attentions):
        raise UsageError(f"--rollout-start {start} is out of range: the blocks up to the chosen one are "
                         f"0..{len(attentions) - 1}",
                         hint="start at block 0 (the default) or a later block before the chosen one")
    t = attentions[0].shape[-1]
    eye = torch.eye(t, device=attentions[0].device)
    factors = []
    for attention in attentions[start:]:
        fused = fuse_heads(attention, fusion)
        fused = discard_lowest(fused, discard, query) if discard else fused
        hat = 0.5 * fused + 0.5 * eye
        factors.append(hat / hat.sum(dim=-1, keepdim=True))
    return _row_through(factors, query)


def relevance_row(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                  query: int = 0) -> torch.Tensor:
    """Row ``query`` of :func:`relevance`, float32 (N, T): the rule R ← R + Ā·R from R = I is the
    product (I + Ā_last) ··· (I + Ā_first), whose one row is computed as a vector."""
    if len(attentions) != len(gradients):
        raise ValueError("one gradient per block")
    t = attentions[0].shape[-1]
    eye = torch.eye(t, device=attentions[0].device)
    factors = [eye + torch.relu(g.float() * a.float()).mean(dim=1) for a, g in zip(attentions, gradients, strict=True)]
    return _row_through(factors, query)


def patch_values(row: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """A token row float (N, T) over the patch keys as maps float32 (N, rows, cols), prefix dropped."""
    if row.shape[-1] != layout.tokens:
        raise UsageError(f"expected {layout.tokens} tokens, got a row of {row.shape[-1]}",
                         hint="the token layout read from the model does not fit its attention; featviz will not guess")
    return row[:, layout.prefix:].float().reshape(row.shape[0], *layout.grid)
