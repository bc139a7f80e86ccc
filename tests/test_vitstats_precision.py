"""The attention statistics' fast path (issue 18, speed): float32 attention of a DeiT-sized model is
measured in float32 (featviz/maps/tokenstats.py), and must agree with the float64 formula written
out here in numpy to a stated tolerance; the cached distance matrix must not leak."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featviz.capture.tokens import TokenLayout
from featviz.errors import FeatvizError
from featviz.maps.tokenstats import attention_statistics, patch_distances, prefix_mass

# the tolerance the float32 path promises against float64 arithmetic (measured worst: 2e-8 relative)
REL = 1e-6


def float64_statistics(attention: np.ndarray, layout: TokenLayout) -> dict[str, np.ndarray]:
    """Distance (renormalised over patch keys), entropy over all keys, prefix mass; each the mean
    over patch queries, in float64 numpy: (N, heads) each."""
    a = attention.astype(np.float64)
    p = layout.prefix
    rows, cols = layout.grid
    y = (np.repeat(np.arange(rows), cols) + 0.5) * layout.patch[0]
    x = (np.tile(np.arange(cols), rows) + 0.5) * layout.patch[1]
    distance = np.sqrt((y[:, None] - y[None, :]) ** 2 + (x[:, None] - x[None, :]) ** 2)  # (P, P)
    patches = a[:, :, p:, p:]
    queries = a[:, :, p:, :]
    safe = np.where(queries > 0, queries, 1.0)
    return {
        "mean_distance_px": ((patches * distance).sum(-1) / patches.sum(-1)).mean(-1),
        "entropy_nats": (-(queries * np.log(safe)).sum(-1)).mean(-1),
        "prefix_mass": queries[..., :p].sum(-1).mean(-1),
    }


@pytest.mark.parametrize(("layout", "scale"), [(TokenLayout(1, (14, 14), (16, 16)), 3.0),  # DeiT/ViT-S 224 px
                                               (TokenLayout(5, (16, 16), (14, 14)), 8.0)])  # DINOv2 reg4, peaked
def test_float32_attention_agrees_with_the_float64_formula(layout: TokenLayout, scale: float) -> None:
    generator = torch.Generator().manual_seed(4)
    blocks = [(scale * torch.randn(2, 6, layout.tokens, layout.tokens, generator=generator)).softmax(-1)
              for _ in range(2)]
    blocks[1][0, 0, layout.prefix:, 0] = 0.0  # exact zeros: 0·ln 0 = 0
    blocks[1][0, 0] /= blocks[1][0, 0].sum(-1, keepdim=True)
    assert blocks[0].dtype == torch.float32
    measured = attention_statistics(blocks, layout)
    for name, values in ((n, getattr(measured, n)) for n in ("mean_distance_px", "entropy_nats", "prefix_mass")):
        assert values.dtype == torch.float64 and values.shape == (2, 2, 6)
        expected = np.stack([float64_statistics(b.numpy(), layout)[name] for b in blocks], axis=1)
        assert values.numpy() == pytest.approx(expected, rel=REL, abs=1e-9), name


def test_the_cached_distances_do_not_leak_and_bad_values_are_still_refused() -> None:
    layout = TokenLayout(1, (2, 2), (4, 4))
    attention = torch.full((1, 1, 5, 5), 0.2)
    first = attention_statistics([attention], layout).mean_distance_px.clone()
    patch_distances(layout).fill_(1000.0)  # the caller's copy, not the cache
    assert torch.equal(attention_statistics([attention], layout).mean_distance_px, first)
    assert float(first) == pytest.approx((0 + 4 + 4 + 4 * 2 ** 0.5) / 4)
    for bad in (float("inf"), float("-inf")):
        broken = attention.clone()
        broken[0, 0, 3, 2] = bad
        with pytest.raises(FeatvizError, match="non-finite"):
            prefix_mass(broken, layout)
    with pytest.raises(FeatvizError, match="not probabilities"):
        prefix_mass(attention * 1.01, layout)
    with pytest.raises(FeatvizError, match="non-finite"):
        prefix_mass(torch.ones(1, 1, 5, 5, dtype=torch.int64), layout)
