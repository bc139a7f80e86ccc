"""Transformer statistics as tensor maths (issue 18, item 4): attention distance, entropy and prefix
mass per block and head; high-norm artifact tokens; PCA colours of patch tokens; their pictures.
Every number is checked against a formula written out here (loops over plain Python floats), or
against a peer (numpy, scipy, scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import median_abs_deviation
from sklearn.decomposition import PCA

from featviz.capture.tokens import TokenLayout
from featviz.errors import FeatvizError, UsageError
from featviz.maps.artifacts import MAD_SCALE, artifact_tokens, block_norms
from featviz.maps.tokenpca import PcaAccumulator, fit_basis, foreground
from featviz.maps.tokenstats import (
    StatisticsAverage,
    attention_entropy,
    attention_statistics,
    mean_attention_distance,
    prefix_mass,
)
from featviz.output.tokencharts import artifact_picture, pca_picture, statistics_chart

LAYOUT = TokenLayout(prefix=2, grid=(2, 3), patch=(4, 8))  # 2 prefix + 6 patches, patches 4 rows × 8 columns


def random_attention(n: int = 2, heads: int = 3, layout: TokenLayout = LAYOUT, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, heads, layout.tokens, layout.tokens, generator=generator)
    return logits.softmax(-1)


def centre(layout: TokenLayout, patch: int) -> tuple[float, float]:
    row, col = divmod(patch, layout.grid[1])
    return (row + 0.5) * layout.patch[0], (col + 0.5) * layout.patch[1]


def reference(attention: torch.Tensor, layout: TokenLayout) -> dict[str, list[list[float]]]:
    """The three statistics by loops: distance renormalised over patch keys, entropy over all
    keys, prefix mass; each the mean over patch queries."""
    out: dict[str, list[list[float]]] = {"distance": [], "raw": [], "entropy": [], "prefix": []}
    a = attention.tolist()
    p, patches = layout.prefix, layout.grid[0] * layout.grid[1]
    for photo in a:
        rows = {key: [] for key in out}
        for head in photo:
            d = r = e = m = 0.0
            for q in range(patches):
                row = head[p + q]
                cq = centre(layout, q)
                weighted = sum(row[p + k] * math.dist(cq, centre(layout, k)) for k in range(patches))
                d += weighted / sum(row[p + k] for k in range(patches))
                r += weighted
                e += -sum(v * math.log(v) for v in row if v > 0)
                m += sum(row[:p])
            for key, value in zip(("distance", "raw", "entropy", "prefix"), (d, r, e, m), strict=True):
                rows[key].append(value / patches)
        for key, values in out.items():
            values.append(rows[key])
    return out


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_statistics_match_the_formulas_written_out(dtype: torch.dtype, rel: float) -> None:
    """float64 attention is measured in float64 (1e-9); float32 attention, what capture returns, in
    float32 for speed (measured worst error 7e-8 relative here; tests/test_vitstats_precision.py
    holds DeiT-sized attention to the float64 formula)."""
    attention = random_attention().to(dtype)
    expected = reference(attention, LAYOUT)
    assert mean_attention_distance(attention, LAYOUT).numpy() == pytest.approx(np.array(expected["distance"]), rel=rel)
    assert mean_attention_distance(attention, LAYOUT, renormalise=False).numpy() == pytest.approx(
        np.array(expected["raw"]), rel=rel)
    assert attention_entropy(attention, LAYOUT).numpy() == pytest.approx(np.array(expected["entropy"]), rel=rel)
    assert prefix_mass(attention, LAYOUT).numpy() == pytest.approx(np.array(expected["prefix"]), rel=rel)


def test_known_answers_one_hot_uniform_and_no_prefix() -> None:
    # every patch query: half on the first prefix token, half on patch (0, 0) -> distance to (0, 0)'s centre
    attention = torch.zeros(1, 1, LAYOUT.tokens, LAYOUT.tokens)
    attention[..., 0] = 0.5
    attention[..., LAYOUT.prefix] = 0.5
    # patch centres (y, x): (2, 4) (2, 12) (2, 20) (6, 4) (6, 12) (6, 20); distances to (2, 4):
    distances = [0, 8, 16, 4, math.hypot(4, 8), math.hypot(4, 16)]
    assert float(mean_attention_distance(attention, LAYOUT)) == pytest.approx(sum(distances) / 6)
    assert float(mean_attention_distance(attention, LAYOUT, renormalise=False)) == pytest.approx(sum(distances) / 12)
    assert float(attention_entropy(attention, LAYOUT)) == pytest.approx(math.log(2))
    assert float(prefix_mass(attention, LAYOUT)) == pytest.approx(0.5)
    uniform = torch.full((1, 2, LAYOUT.tokens, LAYOUT.tokens), 1 / LAYOUT.tokens)
    assert attention_entropy(uniform, LAYOUT).numpy() == pytest.approx(np.full((1, 2), math.log(8)))
    bare = TokenLayout(prefix=0, grid=(1, 2), patch=(5, 5))
    self_only = torch.eye(2).expand(1, 1, 2, 2).contiguous()
    assert float(mean_attention_distance(self_only, bare)) == 0 and float(prefix_mass(self_only, bare)) == 0
    assert float(mean_attention_distance(self_only.flip(-1), bare)) == pytest.approx(5.0)
    assert float(attention_entropy(self_only, bare)) == 0.0


def test_attention_that_is_not_probabilities_or_has_the_wrong_size_is_refused() -> None:
    attention = random_attention()
    with pytest.raises(FeatvizError, match="expected attention of shape"):
        mean_attention_distance(attention[:, :, 1:, 1:], LAYOUT)
    with pytest.raises(FeatvizError, match="not probabilities"):
        attention_entropy(attention.log(), LAYOUT)
    with pytest.raises(FeatvizError, match="non-finite"):
        prefix_mass(attention.masked_fill(attention > 0.5, float("nan")), LAYOUT)


def test_a_run_average_is_the_mean_over_photos_and_parts_merge() -> None:
    blocks = [random_attention(n=3, seed=s) for s in range(4)]
    whole = attention_statistics(blocks, LAYOUT)
    assert whole.mean_distance_px.shape == (3, 4, 3)
    first, second = StatisticsAverage(LAYOUT), StatisticsAverage(LAYOUT)
    first.add(attention_statistics([b[:1] for b in blocks], LAYOUT))
    second.add(attention_statistics([b[1:] for b in blocks], LAYOUT))
    first.merge(second)
    assert first.photos == 3
    for name, mean in first.means().items():
        assert torch.allclose(mean, getattr(whole, name).mean(0), rtol=1e-12)
    payload = first.as_json()
    assert payload["blocks"] == 4 and payload["heads"] == 3 and payload["photos"] == 3
    assert payload["max_entropy_nats"] == pytest.approx(math.log(8))
    assert payload["entropy_nats"][2][1] == pytest.approx(float(whole.entropy_nats[:, 2, 1].mean()), abs=1e-6)
    assert whole.photo_json(1)["prefix_mass"][0][0] == pytest.approx(float(whole.prefix_mass[1, 0, 0]), abs=1e-6)
    with pytest.raises(FeatvizError, match="another token layout"):
        first.add(attention_statistics([random_attention(layout=TokenLayout(1, (2, 3), (4, 8)))],
                                       TokenLayout(1, (2, 3), (4, 8))))


def test_artifact_tokens_are_the_norms_above_median_plus_k_scaled_mads() -> None:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, LAYOUT.tokens, 5, generator=generator)
    tokens[0, 0] *= 100  # a huge class token is never an artifact
    tokens[0, LAYOUT.prefix + 4] *= 40  # patch (1, 1)
    found = artifact_tokens(tokens, LAYOUT, k=3)
    norms = np.linalg.norm(tokens.double().numpy(), axis=-1)
    assert found.norms.numpy() == pytest.approx(norms, rel=1e-6)
    patches = norms[:, LAYOUT.prefix:]
    median = np.median(patches, axis=1)
    mad = median_abs_deviation(patches, axis=1, scale="normal")  # scipy's MAD × 1.4826
    assert found.median.numpy() == pytest.approx(median) and (found.mad * MAD_SCALE).numpy() == pytest.approx(mad)
    assert found.threshold.numpy() == pytest.approx(median + 3 * mad)
    assert torch.equal(found.flags, torch.from_numpy(patches > (median + 3 * mad)[:, None]).reshape(2, 2, 3))
    assert found.flags[0, 1, 1] and int(found.flags[0].sum()) == 1
    payload = found.photo_json(0)
    assert [(f["row"], f["col"]) for f in payload["flagged"]] == [(1, 1)]
    assert payload["prefix_norms"][0] == pytest.approx(norms[0, 0], rel=1e-5)
    assert block_norms([tokens, 2 * tokens], LAYOUT).shape == (2, 2, LAYOUT.tokens)
    with pytest.raises(UsageError, match="finite number"):
        artifact_tokens(tokens, LAYOUT, k=float("nan"))
    with pytest.raises(FeatvizError, match="expected float tokens"):
        artifact_tokens(tokens[:, 1:], LAYOUT)


def test_the_pca_basis_agrees_with_scikit_learn_and_streams() -> None:
    generator = torch.Generator().manual_seed(2)
    mixing = torch.randn(6, 6, generator=generator)
    tokens = (torch.randn(3, 40, 6, generator=generator) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.2])) @ mixing
    basis = fit_basis([tokens[:1], tokens[1:]])
    rows = tokens.reshape(-1, 6).double().numpy()
    peer = PCA(n_components=3, svd_solver="full").fit(rows)
    signs = np.sign(np.sum(basis.components.numpy() * peer.components_, axis=1))
    assert np.abs(signs).tolist() == [1, 1, 1]
    assert basis.components.numpy() == pytest.approx(peer.components_ * signs[:, None], abs=1e-8)
    n = rows.shape[0]
    assert basis.variance.numpy() * n / (n - 1) == pytest.approx(peer.explained_variance_, rel=1e-8)
    assert basis.transform(tokens).reshape(-1, 3).numpy() == pytest.approx(peer.transform(rows) * signs, abs=1e-8)
    # the sign rule: each component's largest loading is positive
    loadings = basis.components.numpy()
    assert all(row[np.argmax(np.abs(row))] > 0 for row in loadings)
    # streaming in parts and merging is the same fit
    a, b = PcaAccumulator(6), PcaAccumulator(6)
    a.add(tokens[:2])
    b.add(tokens[2])
    a.merge(b)
    assert torch.allclose(a.basis().components, basis.components, atol=1e-9)
    rgb = basis.to_rgb(tokens)
    assert rgb.shape == (3, 40, 3) and rgb.dtype == torch.float32
    flat = rgb.reshape(-1, 3)
    assert flat.min(0).values.tolist() == [0, 0, 0] and flat.max(0).values.tolist() == pytest.approx([1, 1, 1])
    scores = peer.transform(rows) * signs
    expected = (scores - scores.min(0)) / (scores.max(0) - scores.min(0))
    assert flat.numpy() == pytest.approx(expected, abs=1e-6)


def test_dinov2_foreground_keeps_the_positive_side_of_the_first_component() -> None:
    generator = torch.Generator().manual_seed(3)
    background = torch.randn(30, 4, generator=generator) * 0.1
    objects = torch.randn(10, 4, generator=generator) * 0.1 + torch.tensor([0.0, 6.0, 0.0, 0.0])
    tokens = torch.cat([background, objects])
    basis = fit_basis([tokens])
    assert basis.components[0, 1] > 0.99  # the sign rule points the first axis at the objects
    kept = foreground(basis, tokens)
    assert kept.tolist() == [False] * 30 + [True] * 10
    assert foreground(basis, tokens, invert=True).tolist() == [True] * 30 + [False] * 10
    # score > threshold, scores being the centred projections onto the first component
    scores = (tokens.double() - tokens.double().mean(0)) @ basis.components[0]
    assert foreground(basis, tokens, threshold=3.0).tolist() == (scores > 3.0).tolist()


def test_the_chart_draws_a_panel_per_statistic_and_a_dot_per_head() -> None:
    values = {"mean_distance_px": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]),
              "entropy_nats": torch.tensor([[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]])}
    chart = statistics_chart(values, title="test", dpi=50)
    assert chart.mode == "RGB" and chart.size == (round(3.2 * 2 * 50), round(2.8 * 50))
    pixels = np.asarray(chart)
    head0 = np.all(np.abs(pixels.astype(int) - (31, 119, 180)) < 10, axis=-1)  # matplotlib's C0
    head1 = np.all(np.abs(pixels.astype(int) - (255, 127, 14)) < 10, axis=-1)  # C1
    head2 = np.all(np.abs(pixels.astype(int) - (44, 160, 44)) < 10, axis=-1)  # C2: there is no third head
    assert head0.sum() > 5 and head1.sum() > 5 and head2.sum() == 0
    other = statistics_chart({**values, "entropy_nats": values["entropy_nats"].flip(0)}, title="test", dpi=50)
    assert not np.array_equal(np.asarray(other), pixels)
    with pytest.raises(FeatvizError, match="blocks, heads"):
        statistics_chart({"prefix_mass": torch.zeros(3)})


def test_artifacts_are_outlined_on_the_crop_and_pca_colours_fill_their_patches() -> None:
    photo = Image.new("RGB", (40, 16), (10, 10, 10))
    flags = torch.zeros(LAYOUT.grid, dtype=torch.bool)
    flags[1, 2] = True
    drawn = np.asarray(artifact_picture(photo, LAYOUT, flags, box=(4.0, 0.0, 28.0, 16.0), width=1))
    # the input covers x 4..28 and y 0..16: patch (1, 2) is x 20..28, y 8..16 in the photo
    assert tuple(drawn[8, 20]) == (255, 0, 255) and tuple(drawn[15, 27]) == (255, 0, 255)
    assert tuple(drawn[12, 24]) == (10, 10, 10)  # inside the outline
    assert tuple(drawn[8, 19]) == (10, 10, 10) and tuple(drawn[7, 20]) == (10, 10, 10)
    assert int((drawn != 10).any(-1).sum()) == 2 * 8 + 2 * 6  # one outline and nothing else
    rgb = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0.5]], [[0.2, 0.2, 0.2], [1, 1, 1], [0, 0, 0]]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    picture = np.asarray(pca_picture(rgb, scale=4, mask=mask))
    assert picture.shape == (8, 12, 3)
    assert tuple(picture[0, 0]) == (255, 0, 0) and tuple(picture[3, 11]) == (0, 0, 128)
    assert tuple(picture[5, 5]) == (0, 0, 0) and tuple(picture[7, 3]) == (51, 51, 51)
