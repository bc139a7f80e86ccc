"""``--vit-stats``, ``--artifacts`` and ``--pca-tokens`` (issue 18 item 4 in the product): the pass that
measures a batch, the run's PCA basis, the run average, the options; the CLI and export end to end
with the trained example (examples/vit_shapes.py). Reference numbers are computed here from a
hook-free re-implementation of the blocks and the formulas written out with numpy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from featviz.capture.tokens import TokenLayout
from featviz.errors import UsageError
from featviz.maps.tokenpcafit import fit_run_basis
from featviz.maps.tokenrun import TokenFactsRunner
from featviz.output.options import RenderOptions
from featviz.output.vitrun import run_average
from vitmodels import noise_photos, tiny_timm_vit


def reference_blocks(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every block's attention A (N, heads, T, T) and output tokens (N, T, D), computed by hand
    from the module's weights (no hook, no fused kernel), as float64 numpy arrays."""
    with torch.no_grad():
        t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        attentions, outputs = [], []
        for block in model.blocks:
            a = block.attn
            h = block.norm1(t)
            n, tokens, width = h.shape
            qkv = a.qkv(h).reshape(n, tokens, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attention = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            t = t + block.ls1(a.proj((attention @ v).transpose(1, 2).reshape(n, tokens, width)))
            t = t + block.ls2(block.mlp(block.norm2(t)))
            attentions.append(attention.double().numpy())
            outputs.append(t.double().numpy())
    return attentions, outputs


def reference_statistics(a: np.ndarray, layout: TokenLayout) -> dict[str, np.ndarray]:
    """The three statistics per (photo, head) of one block's attention a (N, heads, T, T)."""
    p = layout.prefix
    rows, cols = layout.grid
    ys = np.array([(i // cols + 0.5) * layout.patch[0] for i in range(rows * cols)])
    xs = np.array([(i % cols + 0.5) * layout.patch[1] for i in range(rows * cols)])
    distance = np.sqrt((ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2)  # (P, P)
    patch_rows = a[:, :, p:, :]  # (N, heads, P, T): the patch queries
    to_patches = patch_rows[..., p:]
    mean_distance = ((to_patches * distance).sum(-1) / to_patches.sum(-1)).mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.where(patch_rows > 0, -patch_rows * np.log(patch_rows), 0.0).sum(-1).mean(-1)
    mass = patch_rows[..., :p].sum(-1).mean(-1)
    return {"mean_distance_px": mean_distance, "entropy_nats": entropy, "prefix_mass": mass}


def test_one_pass_measures_every_block_like_the_reference_and_leaves_the_model_as_found() -> None:
    model = tiny_timm_vit(reg_tokens=1)  # a class token and a register: prefix 2
    x = noise_photos(3)
    fused = [block.attn.fused_attn for block in model.blocks]
    runner = TokenFactsRunner(model, (32, 32), statistics=True, artifacts_k=1.0)
    facts = runner.measure(x)
    layout = TokenLayout(prefix=2, grid=(4, 4), patch=(8, 8))
    attentions, outputs = reference_blocks(model, x)
    assert len(facts) == 3 and facts[0].blocks == ("blocks.0", "blocks.1") and facts[0].layout == layout
    for b, (a, tokens) in enumerate(zip(attentions, outputs, strict=True)):
        expected = reference_statistics(a, layout)
        norms = np.sqrt((tokens ** 2).sum(-1))  # (N, T)
        for i, photo in enumerate(facts):
            assert photo.statistics is not None and photo.flags is not None and photo.artifacts is not None
            for name, values in expected.items():
                np.testing.assert_allclose(photo.statistics[name][b].numpy(), values[i], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(photo.norms[b].numpy(), norms[i], rtol=1e-5)
            patch = norms[i, 2:]
            median = np.median(patch)
            threshold = median + 1.0 * 1.482602218505602 * np.median(np.abs(patch - median))
            flagged = [(j // 4, j % 4) for j in range(16) if patch[j] > threshold]
            assert [tuple(ij) for ij in torch.nonzero(photo.flags[b]).tolist()] == flagged
            assert [(f["row"], f["col"]) for f in photo.artifacts[b]["flagged"]] == flagged
    document = facts[1].statistics_json()
    assert document["block_names"] == ["blocks.0", "blocks.1"] and document["heads"] == 2
    assert math.isclose(document["max_entropy_nats"], math.log(18))
    assert len(document["prefix_norms"][0]) == 2
    assert [block.attn.fused_attn for block in model.blocks] == fused
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_hooks_are_removed_when_the_pass_raises() -> None:
    model = tiny_timm_vit()
    model.blocks[1].train()  # a mixed train/eval state, to be restored as it was
    fused = [block.attn.fused_attn for block in model.blocks]
    runner = TokenFactsRunner(model, (32, 32), statistics=True)
    with pytest.raises(RuntimeError):
        runner.measure(torch.zeros(1, 4, 32, 32))  # four colour channels: the patch embedding fails
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert [block.attn.fused_attn for block in model.blocks] == fused
    assert [m.training for m in model.blocks[1].modules()] == [True] * len(list(model.blocks[1].modules()))
    assert not model.blocks[0].training


def test_a_cnn_is_refused_before_any_photo() -> None:
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(UsageError, match="--vit-stats measures every block of a vision transformer"):
        TokenFactsRunner(cnn, (32, 32), statistics=True)
    with pytest.raises(UsageError, match="--artifacts"):
        TokenFactsRunner(cnn, (32, 32), statistics=False, artifacts_k=3.0)


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_run_basis_is_the_pca_of_every_token_with_the_range_of_every_score(budget: int) -> None:
    generator = torch.Generator().manual_seed(3)
    photos = [torch.randn(10, 6, generator=generator) * torch.arange(1, 7) for _ in range(4)]
    calls = []

    def batches():
        calls.append(1)
        return iter(photos)

    run = fit_run_basis(batches, budget_bytes=budget)
    assert run.passes == len(calls) == (2 if budget == 0 else 1) and run.tokens == 40
    rows = torch.cat(photos).double().numpy()
    centred = rows - rows.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred / len(rows))
    top = vectors[:, ::-1][:, :3].T
    top *= np.sign(top[np.arange(3), np.abs(top).argmax(1)])[:, None]  # the sign rule: largest loading positive
    np.testing.assert_allclose(run.basis.components.numpy(), top, atol=1e-8)
    scores = centred @ top.T
    np.testing.assert_allclose(run.basis.lo.numpy(), scores.min(0), atol=1e-8)
    np.testing.assert_allclose(run.basis.hi.numpy(), scores.max(0), atol=1e-8)
    np.testing.assert_allclose(run.total_variance, np.trace(centred.T @ centred / len(rows)), rtol=1e-10)
    assert run.record()["variance_share"][0] == pytest.approx(values[-1] / values.sum(), abs=1e-6)


def _write_photo(out: Path, key: str, document: dict, status: str = "ok") -> None:
    folder = out / key / "blocks.1"
    folder.mkdir(parents=True)
    (out / key / "attention_statistics.json").write_text(json.dumps(document))
    with open(out / "manifest.jsonl", "a") as handle:
        record = {"key": key, "layer": "blocks.1", "status": status, "output": f"{key}/blocks.1"}
        handle.write(json.dumps(record) + "\n")


def test_run_average_is_the_mean_of_the_done_photos_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = {"model": "m", "weights": "w", "layout": {"prefix": 1, "grid": [2, 2], "patch_px": [8, 8]}, "blocks": 2,
            "heads": 3, "block_names": ["b0", "b1"], "queries": "patch tokens", "max_entropy_nats": math.log(5)}
    values = [{name: rng.random((2, 3)).round(6).tolist() for name in ("mean_distance_px", "entropy_nats",
                                                                        "prefix_mass")} for _ in range(4)]
    _write_photo(tmp_path, "a", {**base, **values[0]})
    _write_photo(tmp_path, "b", {**base, **values[1]}, status="skipped")  # done by an earlier run: counts
    _write_photo(tmp_path, "c", {**base, **values[2], "model": "other"})  # another model: left out
    _write_photo(tmp_path, "d", {**base, **values[3], "heads": 3, "blocks": 2,
                                 "layout": {"prefix": 1, "grid": [3, 3], "patch_px": [8, 8]}})
    with open(tmp_path / "manifest.jsonl", "a") as handle:
        handle.write('{"key": "a", "layer": "blo')  # a line torn by a killed run
    average = run_average(tmp_path, "m", "w")
    assert average is not None and average["photos"] == 2
    assert average["left_out"] == {"another model or weights": 1, "another token layout or block/head count": 1}
    for name in ("mean_distance_px", "entropy_nats", "prefix_mass"):
        expected = [[(values[0][name][b][h] + values[1][name][b][h]) / 2 for h in range(3)] for b in range(2)]
        np.testing.assert_allclose(average[name], expected, atol=1e-6)
    with open(tmp_path / "manifest.jsonl", "a") as handle:  # the photo failed in a later run: out
        handle.write('\n{"key": "b", "layer": null, "status": "error", "output": null}\n')
    assert run_average(tmp_path, "m", "w")["photos"] == 1
    assert run_average(tmp_path, "nothing", "w") is None


@pytest.mark.parametrize(("options", "message"), [
    ({"artifacts": -1.0}, "--artifacts -1.0 is not a valid outlier factor"),
    ({"artifacts": float("nan")}, "not a valid outlier factor"),
    ({"pca_foreground": 0.0}, "--pca-tokens was not given"),
    ({"pca_tokens": True, "pca_foreground": float("inf")}, "not a finite score"),
])
def test_option_values_no_photo_could_satisfy(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RenderOptions(**options).validate()
