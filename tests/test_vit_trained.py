"""The trained tiny ViT (examples/vit_shapes) through featviz's own API: where the heads' mean,
rollout and relevance peak on held-out photos, and whether they beat a random map at deletion.

Unlike tests/test_vit_example.py (test-local capture and rollout), every map here comes from
:class:`featviz.output.pipeline.Visualizer` (``--heads``, ``--cam rollout,relevance``,
``--cam-score``), the code the CLI runs; the random map is scored by the same
:func:`featviz.maps.camscore.score_cams`. The numbers the assertions hold were measured with
docs/make_vit_row.py (table in docs/vit-attention.md): on the 60 held-out photos of seed 123
the heads' mean peaks inside the disc's box in 59 of 60, rollout and relevance in 60 of 60
(weights of 2026-12-03; the earlier weights: 60, 60 and 51 of 60).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examplescripts import example_module
from featviz.maps.camscore import score_cams
from featviz.maps.explain import CamBatch, CamMap
from featviz.output.options import RenderOptions
from featviz.output.pipeline import Visualizer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "vit_shapes.py"
WEIGHTS = ROOT / "examples" / "vit_shapes.safetensors"
HELD_OUT = 60
SCORED = 20  # photos scored for deletion (8 steps): enough for a margin of ~0.45 AUC


@pytest.fixture(scope="module")
def held_out() -> list[tuple[np.ndarray, int, tuple[int, int, int, int]]]:
    rng = np.random.default_rng(123)  # photos the network never saw (training uses seed 0)
    shapes = example_module("vit_shapes")
    return [shapes.photo(rng) for _ in range(HELD_OUT)]


def _visualizer(**options: object) -> Visualizer:
    return Visualizer(f"{SCRIPT}:build", str(WEIGHTS), ["blocks.3"], resize=64, crop=64,
                      options=RenderOptions(heads=True, cam=["rollout", "relevance"], **options))  # type: ignore[arg-type]


def _peaks_in_box(cam_map: torch.Tensor, box: tuple[int, int, int, int]) -> bool:
    """The map's largest 8-px patch has its centre inside the disc's box (left, top, right, bottom)."""
    row, col = divmod(int(cam_map.argmax()), cam_map.shape[1])
    y, x = (row + 0.5) * 8, (col + 0.5) * 8
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


@pytest.fixture(scope="module")
def hits(held_out) -> dict[str, int]:
    vis = _visualizer()
    results = [per[0] for per in vis.forward([vis.prepare(Image.fromarray(p)) for p, _, _ in held_out])]
    counts = {"heads mean": 0, "rollout": 0, "relevance": 0}
    for result, (_, label, box) in zip(results, held_out, strict=True):
        assert result.heads is not None and result.heads.shape == (4, 8, 8)
        maps = {cam.method: cam for cam in result.cams}
        assert set(maps) == {"rollout", "relevance"} and maps["relevance"].target == label  # 60 of 60 right
        counts["heads mean"] += _peaks_in_box(result.heads.mean(0), box)
        counts["rollout"] += _peaks_in_box(maps["rollout"].map, box)
        counts["relevance"] += _peaks_in_box(maps["relevance"].map, box)
    return counts


@pytest.mark.parametrize("method", ["heads mean", "rollout", "relevance"])
def test_heads_mean_rollout_and_relevance_peak_inside_the_disc_in_90_percent(hits: dict[str, int],
                                                                             method: str) -> None:
    """The issue's target. Relevance reached it once the example was trained with more clutter
    (examples/vit_shapes.py: 0-48 dots per training photo, 800 steps); with the earlier weights
    it peaked inside the box in 51 of 60, its misses on clutter dots."""
    assert hits[method] >= 0.9 * HELD_OUT, f"{method} peaked inside the disc's box in {hits[method]} of {HELD_OUT}"


def _chefer_relevance(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chefer, Gur & Wolf's rule written out on a hand-written forward of timm's blocks (no
    featviz, no hooks): A_b = softmax(q kᵀ / √d) of every block b, y the predicted class's logit,
    R = I, R ← R + mean_h((∂y/∂A_b ⊙ A_b)⁺)·R from block 0 to the LAST block (the paper's choice;
    the Visualizer's layer ``blocks.3`` is the last block); the class token's row over the
    patches. Returns the maps float32 (N, 8, 8), the predicted classes (N,) and the logits (N, 3)."""
    tokens = model.patch_embed(x)
    tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], 1) + model.pos_embed
    attentions = []
    for block in model.blocks:
        h = block.norm1(tokens)
        n, t, d = h.shape
        heads = block.attn.num_heads
        q, k, v = block.attn.qkv(h).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        attentions.append(a)
        tokens = tokens + block.attn.proj((a @ v).transpose(1, 2).reshape(n, t, d))
        tokens = tokens + block.mlp(block.norm2(tokens))
    logits = model.head(model.norm(tokens)[:, 0])
    predicted = logits.argmax(1)
    gradients = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), attentions)
    r = torch.eye(t).expand(n, t, t)
    for a, g in zip(attentions, gradients, strict=True):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    return r[:, 0, 1:].detach().reshape(n, 8, 8), predicted, logits.detach()


def test_relevance_on_the_trained_example_equals_the_rule_written_out(held_out) -> None:
    """featviz's relevance (Visualizer, ``--cam relevance`` at ``blocks.3``) on the trained weights
    equals Chefer et al.'s rule computed independently: so where it misses the disc, the miss is
    the network's, not featviz's."""
    vis = _visualizer()
    photos = held_out[:12]
    results = [per[0] for per in vis.forward([vis.prepare(Image.fromarray(p)) for p, _, _ in photos])]
    model = vis.loaded.module
    assert all(block.attn.fused_attn for block in model.blocks)  # featviz restored timm's flag
    shapes = example_module("vit_shapes")
    x = torch.stack([shapes.to_tensor(p) for p, _, _ in photos])
    expected, predicted, logits = _chefer_relevance(model, x)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)  # the forward written out is timm's
    for result, want, cls in zip(results, expected, predicted, strict=True):
        relevance = next(cam for cam in result.cams if cam.method == "relevance")
        assert relevance.target == int(cls)
        torch.testing.assert_close(relevance.map, want, rtol=1e-4, atol=1e-6)


def test_learned_maps_beat_a_random_map_at_deletion_through_cam_score(held_out) -> None:
    """--cam-score (the Visualizer scores rollout and relevance itself) against a random map at
    the patch grid scored by the same function, for the same predicted class: mean deletion AUC,
    lower is better. Measured on 60 photos, 16 steps: heads mean 0.265, rollout 0.345,
    relevance 0.177, random 0.758."""
    vis = _visualizer(cam_score=True, cam_score_steps=8)
    prepared = [vis.prepare(Image.fromarray(p), key=f"p{i}") for i, (p, _, _) in enumerate(held_out[:SCORED])]
    results = [per[0] for per in vis.forward(prepared)]
    noise = torch.Generator().manual_seed(0)
    predicted = [next(c.target for c in r.cams if c.method == "relevance") for r in results]
    extra = CamBatch([[CamMap("heads mean", cls, None, r.heads.mean(0), None, None, None),
                       CamMap("random", cls, None, torch.rand(8, 8, generator=noise), None, None, None)]
                      for r, cls in zip(results, predicted, strict=True)])
    assert score_cams(vis.loaded.module, torch.stack([p.tensor for p in prepared]), extra, steps=8, batch_size=None,
                      names=[p.key for p in prepared]) == {}
    deletion: dict[str, list[float]] = {}
    for result, more in zip(results, extra.per_image, strict=True):
        for cam in [*result.cams, *more]:
            assert cam.scores is not None and cam.scores.steps == 8
            deletion.setdefault(cam.method, []).append(cam.scores.deletion_auc)
    means = {method: float(np.mean(values)) for method, values in deletion.items()}
    assert all(len(values) == SCORED for values in deletion.values())
    for method in ("heads mean", "rollout", "relevance"):
        assert means[method] < means["random"] - 0.2, means
