"""Heads, DINO masks, rollout and relevance against closed forms and slow loop references."""

from __future__ import annotations

import pytest
import torch

from featviz.capture.tokens import TokenLayout
from featviz.errors import UsageError
from featviz.maps.transformer import (
    dino_masks,
    discard_lowest,
    head_maps,
    patch_row,
    patch_values,
    relevance,
    relevance_row,
    rollout,
    rollout_row,
)


def _attention(n: int, heads: int, t: int, seed: int) -> torch.Tensor:
    logits = torch.randn(n, heads, t, t, generator=torch.Generator().manual_seed(seed)) * 2
    return logits.softmax(dim=-1)


@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_uniform_attention_rolls_out_to_the_closed_form(blocks: int) -> None:
    layout = TokenLayout(prefix=1, grid=(3, 4), patch=(8, 8))
    patches = 12
    uniform = torch.full((1, 2, 13, 13), 1 / 13)
    got = patch_row(rollout([uniform] * blocks), layout)
    torch.testing.assert_close(got, torch.full((1, 3, 4), (1 - 2.0 ** -blocks) / (patches + 1)))


def test_identity_attention_gives_a_zero_map_and_one_hot_a_one_patch_mask() -> None:
    layout = TokenLayout(prefix=2, grid=(2, 3), patch=(8, 8))
    eye = torch.eye(8).expand(1, 3, 8, 8)
    assert float(patch_row(rollout([eye, eye]), layout).abs().max()) == 0.0
    one_hot = torch.zeros(1, 2, 8, 8)
    one_hot[:, :, :, 0] = 1.0
    one_hot[:, 0, 0] = torch.nn.functional.one_hot(torch.tensor(2 + 4), 8).float()  # head 0: patch (1, 1)
    one_hot[:, 1, 0] = torch.nn.functional.one_hot(torch.tensor(2 + 2), 8).float()  # head 1: patch (0, 2)
    masks = dino_masks(head_maps(one_hot, layout), 0.6)
    assert masks.sum().item() == 2
    assert masks[0, 0, 1, 1] and masks[0, 1, 0, 2]


def test_head_maps_are_the_class_rows_over_patches_row_major_on_a_wide_grid() -> None:
    layout = TokenLayout(prefix=1, grid=(2, 3), patch=(8, 8))
    a = _attention(2, 3, 7, seed=0)
    maps = head_maps(a, layout)
    assert maps.shape == (2, 3, 2, 3)
    for n in range(2):
        for h in range(3):
            for i in range(2):
                for j in range(3):
                    assert maps[n, h, i, j].item() == a[n, h, 0, 1 + i * 3 + j].item()
    # not renormalised: what the class token sends to itself is missing from the map
    torch.testing.assert_close(maps.sum(dim=(2, 3)), 1 - a[:, :, 0, 0])


def _dino_reference(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's visualize_attention.py, re-written: ascending sort, mass normalised, keep where the
    cumulative mass from the smallest exceeds 1 - P."""
    flat = maps.flatten(-2)
    values, order = torch.sort(flat, dim=-1)
    values = values / values.sum(dim=-1, keepdim=True)
    kept = values.cumsum(dim=-1) > 1 - threshold
    return torch.zeros_like(kept).scatter(-1, order, kept).reshape(maps.shape)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_dino_masks_match_dinos_formula(threshold: float) -> None:
    maps = torch.rand(3, 4, 5, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64).float()
    got = dino_masks(maps, threshold)
    assert torch.equal(got, _dino_reference(maps, threshold))
    kept = (maps * got).flatten(-2).sum(-1) / maps.flatten(-2).sum(-1)
    assert bool((kept >= threshold - 1e-6).all())


def test_dino_masks_refuse_thresholds_outside_zero_one() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UsageError, match="heads-threshold"):
            dino_masks(torch.ones(1, 2, 2), bad)
    assert bool(dino_masks(torch.ones(1, 2, 2), 1.0).all())


def _rollout_loop(attentions: list[torch.Tensor], fusion: str, discard: float, start: int) -> torch.Tensor:
    """The paper's rollout, one photo and one entry at a time in plain Python."""
    n, _, t, _ = attentions[0].shape
    out = torch.zeros(n, t, t, dtype=torch.float64)
    for photo in range(n):
        result = [[1.0 if i == j else 0.0 for j in range(t)] for i in range(t)]
        for attention in attentions[start:]:
            a = attention[photo].double()
            fused = {"mean": a.mean(0), "max": a.amax(0), "min": a.amin(0)}[fusion].tolist()
            cells = sorted((fused[i][j], i * t + j) for i in range(1, t) for j in range(1, t))
            for _, flat in cells[:int(discard * (t - 1) ** 2)]:
                fused[flat // t][flat % t] = 0.0
            hat = [[0.5 * fused[i][j] + (0.5 if i == j else 0.0) for j in range(t)] for i in range(t)]
            hat = [[v / sum(row) for v in row] for row in hat]
            result = [[sum(hat[i][k] * result[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
        out[photo] = torch.tensor(result)
    return out


@pytest.mark.parametrize("fusion, discard, start", [("mean", 0.0, 0), ("max", 0.5, 0), ("min", 0.25, 1)])
def test_rollout_matches_a_slow_loop(fusion: str, discard: float, start: int) -> None:
    attentions = [_attention(2, 3, 6, seed=s) for s in range(3)]
    got = rollout(attentions, fusion=fusion, discard=discard, start=start)
    torch.testing.assert_close(got.double(), _rollout_loop(attentions, fusion, discard, start), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 6))


def _vit_explain_rollout(attentions: list[torch.Tensor], discard: float) -> torch.Tensor:
    """jacobgil/vit-explain's rollout for one photo as its code reads (re-written from its
    description, not copied): mean heads, drop the lowest entries but flat index 0, add I,
    then ``a / a.sum(dim=-1)``, which divides COLUMN j by ROW j's sum (broadcasting)."""
    t = attentions[0].shape[-1]
    result = torch.eye(t)
    for attention in attentions:
        fused = attention[0].mean(0).clone()
        flat = fused.view(-1)
        lowest = flat.topk(int(flat.numel() * discard), largest=False).indices
        flat[lowest[lowest != 0]] = 0
        a = (fused + torch.eye(t)) / 2
        a = a / a.sum(dim=-1)
        result = a @ result
    return result


def test_vit_explain_agrees_in_its_one_bug_free_case_only() -> None:
    attentions = [_attention(1, 3, 7, seed=s) for s in range(4)]
    torch.testing.assert_close(rollout(attentions)[0], _vit_explain_rollout(attentions, 0.0), atol=1e-6, rtol=1e-5)
    theirs = _vit_explain_rollout(attentions, 0.5)
    assert not torch.allclose(theirs.sum(-1), torch.ones(7), atol=1e-3)  # their rows no longer sum to 1
    torch.testing.assert_close(rollout(attentions, discard=0.5)[0].sum(-1), torch.ones(7))


def test_discard_never_touches_the_class_tokens_row_or_column() -> None:
    fused = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(2)) * 1e-3
    fused[0, 0, :] = 0.0  # the smallest values of all sit in the class token's row...
    fused[0, :, 0] = 0.0 + torch.arange(5) * 1e-9  # ...and column
    out = discard_lowest(fused, 0.75)
    assert torch.equal(out[0, 0], fused[0, 0]) and torch.equal(out[0, :, 0], fused[0, :, 0])
    assert int((out[0, 1:, 1:] == 0).sum()) == 12  # floor(0.75 * 16) of the other entries
    kept = out[0, 1:, 1:][out[0, 1:, 1:] > 0]
    assert float(kept.min()) >= float(fused[0, 1:, 1:].flatten().sort().values[12])
    with pytest.raises(UsageError, match="rollout-discard"):
        discard_lowest(fused, 1.0)


def _relevance_loop(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s rule in plain Python, one photo at a time."""
    n, heads, t, _ = attentions[0].shape
    out = torch.zeros(n, t, t, dtype=torch.float64)
    for photo in range(n):
        r = [[1.0 if i == j else 0.0 for j in range(t)] for i in range(t)]
        for a, g in zip(attentions, gradients, strict=True):
            bar = [[sum(max(0.0, float(g[photo, h, i, j] * a[photo, h, i, j])) for h in range(heads)) / heads
                    for j in range(t)] for i in range(t)]
            r = [[r[i][j] + sum(bar[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
        out[photo] = torch.tensor(r)
    return out


def test_relevance_matches_a_slow_loop_and_pairs_each_block_with_its_own_gradient() -> None:
    attentions = [_attention(2, 2, 5, seed=s) for s in range(3)]
    gradients = [torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(10 + s)) for s in range(3)]
    got = relevance(attentions, gradients)
    torch.testing.assert_close(got.double(), _relevance_loop(attentions, gradients), atol=1e-5, rtol=1e-5)
    swapped = relevance(attentions, gradients[::-1])  # vit-explain's order: the last block's gradient first
    assert not torch.allclose(swapped, got)


def test_relevance_with_zero_gradients_is_the_identity() -> None:
    attentions = [_attention(1, 2, 5, seed=0)]
    torch.testing.assert_close(relevance(attentions, [torch.zeros(1, 2, 5, 5)]), torch.eye(5)[None])


@pytest.mark.parametrize("fusion, discard, start", [("mean", 0.0, 0), ("min", 0.3, 2)])
def test_the_class_rows_equal_the_full_products(fusion: str, discard: float, start: int) -> None:
    attentions = [_attention(2, 3, 6, seed=s) for s in range(4)]
    gradients = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(20 + s)) for s in range(4)]
    torch.testing.assert_close(rollout_row(attentions, fusion=fusion, discard=discard, start=start),
                               rollout(attentions, fusion=fusion, discard=discard, start=start)[:, 0])
    torch.testing.assert_close(relevance_row(attentions, gradients), relevance(attentions, gradients)[:, 0])
    layout = TokenLayout(prefix=2, grid=(2, 2), patch=(4, 4))
    torch.testing.assert_close(patch_values(rollout_row(attentions), layout), patch_row(rollout(attentions), layout))
