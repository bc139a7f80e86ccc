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

from examplescripts import example_module
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


def test_torchvision_vit_statistics_match_its_reference() -> None:
    from vitmodels import tiny_torchvision_vit, torchvision_reference

    model = tiny_torchvision_vit()
    x = noise_photos(2)
    facts = TokenFactsRunner(model, (32, 32), statistics=True).measure(x)
    with torch.no_grad():
        _, attentions = torchvision_reference(model, x)
    layout = TokenLayout(prefix=1, grid=(4, 4), patch=(8, 8))
    assert facts[0].blocks == ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1")
    for b, a in enumerate(attentions):
        expected = reference_statistics(a.double().numpy(), layout)
        for i, photo in enumerate(facts):
            assert photo.statistics is not None and photo.flags is None
            for name, values in expected.items():
                np.testing.assert_allclose(photo.statistics[name][b].numpy(), values[i], rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


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


# --- end to end: the trained example through the CLI, export and the API ---------------------------

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ["--model", str(ROOT / "examples" / "vit_shapes.py") + ":build",
           "--weights", str(ROOT / "examples" / "vit_shapes.safetensors"), "--resize", "64", "--crop", "64"]
STATS = ("mean_distance_px", "entropy_nats", "prefix_mass")


def invoke(args: list[object]):
    from click.testing import CliRunner

    from featviz.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four held-out photos of the example's task (seed 123), 64×64 PNGs, plus one 96×64 photo."""

    from PIL import Image

    shapes = example_module("vit_shapes")
    folder = tmp_path_factory.mktemp("held-out")
    rng = np.random.default_rng(123)
    for i in range(4):
        Image.fromarray(shapes.photo(rng)[0]).save(folder / f"photo{i}.png")
    wide = tmp_path_factory.mktemp("wide")
    Image.fromarray(shapes.photo(rng, width=96, height=64)[0]).save(wide / "wide.png")
    return folder


@pytest.fixture(scope="module")
def example_model():
    from featviz.models.build import load_model

    return load_model(EXAMPLE[1], EXAMPLE[3]).module


def _inputs(model: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    """The network inputs of the photos, made here: 64×64 photos need no resize, normalised as the
    example's own to_tensor does (ImageNet mean and std, featviz's default for a factory)."""
    from PIL import Image

    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255
              for p in paths]
    return torch.stack([(x - mean[:, None, None]) / std[:, None, None] for x in pixels])


def test_export_writes_each_photo_and_the_run_mean_of_the_reference_statistics(
        held_out: Path, example_model: torch.nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(["export", held_out, *EXAMPLE, "--top-k", "1", "--vit-stats", "--artifacts", "--out", out])
    assert result.exit_code == 0, result.output
    assert "no --layer: drawing at blocks.3" in result.stderr
    assert f"attention statistics: {out / 'attention_statistics.json'}" in result.stderr
    photos = sorted(held_out.glob("*.png"))
    layout = TokenLayout(prefix=1, grid=(8, 8), patch=(8, 8))
    attentions, outputs = reference_blocks(example_model, _inputs(example_model, photos))
    expected = [reference_statistics(a, layout) for a in attentions]  # per block: name -> (N, heads)
    for i, photo in enumerate(photos):
        document = json.loads((out / photo.stem / "attention_statistics.json").read_text())
        assert document["photos"] == 1 and document["block_names"] == [f"blocks.{b}" for b in range(4)]
        for name in STATS:
            np.testing.assert_allclose(document[name], [e[name][i] for e in expected], atol=2e-5)
        artifacts = json.loads((out / photo.stem / "artifacts.json").read_text())
        assert artifacts["k"] == 3.0 and artifacts["drawn_blocks"] == [f"blocks.{b}" for b in range(4)]
        for b, block in enumerate(artifacts["blocks"]):
            norms = np.sqrt((outputs[b][i, 1:] ** 2).sum(-1))
            threshold = np.median(norms) + 3 * 1.482602218505602 * np.median(np.abs(norms - np.median(norms)))
            assert [(f["row"], f["col"]) for f in block["flagged"]] == [divmod(j, 8) for j in np.nonzero(
                norms > threshold)[0]]
        summary = json.loads((out / photo.stem / "blocks.3" / "summary.json").read_text())
        assert "../attention_statistics.json" in summary["files"] and "../artifacts.png" in summary["files"]
    average = json.loads((out / "attention_statistics.json").read_text())
    assert average["photos"] == 4 and (out / "attention_statistics.png").is_file()
    for name in STATS:
        np.testing.assert_allclose(average[name], [e[name].mean(0) for e in expected], atol=2e-5)
    # resumed: every photo skipped, the run mean still over all four (read back from their files)
    again = invoke(["export", held_out, *EXAMPLE, "--top-k", "1", "--vit-stats", "--artifacts", "--out", out,
                    "--skip-existing"])
    assert again.exit_code == 0 and "0 done, 4 skipped" in again.stderr
    assert json.loads((out / "attention_statistics.json").read_text()) == average


def test_pca_colours_are_the_run_basis_and_the_same_in_shards(held_out: Path, example_model: torch.nn.Module,
                                                               tmp_path: Path) -> None:
    from PIL import Image

    args = [*EXAMPLE, "--layer", "blocks.2", "--top-k", "1", "--pca-tokens", "--size", "64"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert invoke(["export", held_out, *args, "--out", whole]).exit_code == 0
    for shard in ("1/2", "2/2"):
        assert invoke(["export", held_out, *args, "--shard", shard, "--out", parts]).exit_code == 0
    photos = sorted(held_out.glob("*.png"))
    # the reference: one PCA over the patch tokens of all four photos after block 2, sign rule, min-max colours
    _, outputs = reference_blocks(example_model, _inputs(example_model, photos))
    tokens = outputs[2][:, 1:, :]  # (4, 64, D)
    rows = tokens.reshape(-1, tokens.shape[-1])
    centred = rows - rows.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred / len(rows))
    top = vectors[:, ::-1][:, :3].T
    top *= np.sign(top[np.arange(3), np.abs(top).argmax(1)])[:, None]
    scores = centred @ top.T
    colours = (scores - scores.min(0)) / (scores.max(0) - scores.min(0))
    colours = np.rint(colours * 255).reshape(4, 8, 8, 3)
    for i, photo in enumerate(photos):
        picture = np.asarray(Image.open(whole / photo.stem / "blocks.2" / "pca.png"))
        assert picture.shape == (64, 64, 3)  # --size 64: 8 px per patch
        assert np.abs(picture[4::8, 4::8].astype(int) - colours[i]).max() <= 1
        assert (parts / photo.stem / "blocks.2" / "pca.png").read_bytes() == \
            (whole / photo.stem / "blocks.2" / "pca.png").read_bytes()
        summary = json.loads((whole / photo.stem / "blocks.2" / "summary.json").read_text())
        assert summary["pca"]["fitted_tokens"] == 256 and summary["pca"]["file"] == "pca.png"
    # a run over other photos has another basis: --skip-existing redoes the photo and says why
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / photos[0].name).write_bytes(photos[0].read_bytes())
    single = invoke(["export", alone, *args, "--out", whole, "--skip-existing"])
    assert single.exit_code == 0 and "1 redone: the --pca-tokens basis" in single.stderr


def test_foreground_blacks_out_the_patches_at_or_below_the_threshold(held_out: Path, tmp_path: Path) -> None:
    from PIL import Image

    args = [*EXAMPLE, "--layer", "blocks.3", "--top-k", "1", "--pca-tokens", "--size", "64", "--out"]
    shown = invoke(["show", *sorted(held_out.glob("*.png")), *args, tmp_path / "a"])
    assert shown.exit_code == 0
    assert str(tmp_path / "a" / "photo0" / "blocks.3" / "pca.png") in shown.stdout.splitlines()
    assert invoke(["show", *sorted(held_out.glob("*.png")), *args, tmp_path / "b", "--pca-foreground", "0"]
                  ).exit_code == 0
    plain = np.asarray(Image.open(tmp_path / "a" / "photo0" / "blocks.3" / "pca.png"))[4::8, 4::8]
    masked = np.asarray(Image.open(tmp_path / "b" / "photo0" / "blocks.3" / "pca.png"))[4::8, 4::8]
    summary = json.loads((tmp_path / "b" / "photo0" / "blocks.3" / "summary.json").read_text())
    kept = masked.any(-1)
    assert kept.sum() == summary["pca"]["foreground"]["patches"] and 0 < kept.sum() < 64
    assert (masked[kept] == plain[kept]).all() and not masked[~kept].any()


def artifact_panels(drawn: np.ndarray, blocks: int, panel: tuple[int, int]) -> list[np.ndarray]:
    """The panels of an ``artifacts.png``, cut out by the layout it documents: ceil(sqrt(blocks))
    panels to a row, 8-px gaps, a 24-px title band on top, 36 px of caption under each row."""
    width, height = panel
    per_row = math.ceil(math.sqrt(blocks))
    rows = math.ceil(blocks / per_row)
    assert drawn.shape[:2] == (24 + rows * (height + 36 + 8) + 8, per_row * (width + 8) + 8)
    panels = []
    for b in range(blocks):
        x, y = 8 + (b % per_row) * (width + 8), 24 + 8 + (b // per_row) * (height + 36 + 8)
        panels.append(drawn[y:y + height, x:x + width])
    return panels


def outlined(shape: tuple[int, int], flagged: list[dict], left: int, top: int, step: int) -> np.ndarray:
    """bool (H, W): the one-pixel outline of each flagged patch, patch (r, c) covering the square of
    side ``step`` at (left + step·c, top + step·r)."""
    outline = np.zeros(shape, dtype=bool)
    for patch in flagged:
        x0, y0 = left + step * patch["col"], top + step * patch["row"]
        box = np.zeros_like(outline)
        box[y0:y0 + step, x0:x0 + step] = True
        box[y0 + 1:y0 + step - 1, x0 + 1:x0 + step - 1] = False
        outline |= box
    return outline


def test_artifact_outlines_are_crop_exact_on_a_wide_photo_in_every_blocks_panel(held_out: Path,
                                                                              tmp_path: Path) -> None:
    from PIL import Image

    wide = next(held_out.parent.glob("wide*/wide.png"))
    out = tmp_path / "out"
    result = invoke(["show", wide, *EXAMPLE, "--top-k", "1", "--artifacts", "0.5", "--out", out])
    assert result.exit_code == 0, result.output
    assert str(out / "wide" / "artifacts.png") in result.stdout.splitlines()  # listed without a ..
    blocks = json.loads((out / "wide" / "artifacts.json").read_text())["blocks"]
    flagged = [block["flagged"] for block in blocks]
    assert len(flagged) == 4 and all(flagged)
    assert len({json.dumps([(f["row"], f["col"]) for f in b]) for b in flagged}) > 1  # the blocks differ
    photo = np.asarray(Image.open(wide).convert("RGB")).astype(int)
    big = photo.repeat(2, axis=0).repeat(2, axis=1)  # 96x64 is under 192 px: each panel 2x, nearest
    magenta = (big == [255, 0, 255]).all(-1)
    drawn = np.asarray(Image.open(out / "wide" / "artifacts.png").convert("RGB")).astype(int)
    for b, panel in enumerate(artifact_panels(drawn, 4, (192, 128))):
        # resize 64 keeps 96x64, the 64-px centre crop starts at x = 16: patch (r, c) covers x 16+8c.., y 8r..
        # of the photo, x 32+16c.., y 16r.. of the 2x panel
        outline = outlined(big.shape[:2], flagged[b], left=32, top=0, step=16)
        changed = (big != panel).any(-1)
        assert (changed == (outline & ~magenta)).all(), f"block {b}"
        assert (panel[outline] == [255, 0, 255]).all()


def test_the_api_takes_the_options_and_writes_the_same_files(held_out: Path, tmp_path: Path) -> None:
    import featviz

    results = featviz.visualize(held_out / "photo1.png", EXAMPLE[1], weights=EXAMPLE[3], layers=["blocks.3"],
                                resize=64, crop=64, top_k=1, vit_stats=True, artifacts=2.0, pca_tokens=True,
                                out=tmp_path)
    assert [r.key for r in results] == ["photo1"]
    facts = results[0].token_facts
    assert facts is not None and facts.k == 2.0 and facts.statistics is not None
    assert results[0].pca is not None and results[0].pca.rgb.shape == (8, 8, 3)
    for name in ("attention_statistics.json", "attention_statistics.png", "artifacts.json", "artifacts.png",
                 "blocks.3/pca.png"):
        assert (tmp_path / "photo1" / name).is_file()


def test_the_visualizer_leaves_the_model_as_found_and_reuses_its_basis(held_out: Path) -> None:
    from featviz.output.pipeline import Visualizer

    photos = sorted(held_out.glob("*.png"))
    vis = Visualizer(EXAMPLE[1], EXAMPLE[3], ["blocks.3"], resize=64, crop=64,
                     options=RenderOptions(top_k=1, vit_stats=True, pca_tokens=True))
    model = vis.loaded.module
    fused = [block.attn.fused_attn for block in model.blocks]
    modes = [m.training for m in model.modules()]
    first = vis.run(photos[:2])
    digest = vis.pca_bases["blocks.3"].digest()
    again = vis.run(photos[2:3])  # a later run keeps the first run's basis: colours compare
    assert vis.pca_bases["blocks.3"].digest() == digest == again[0].settings["pca_basis"]
    assert first[0].pca is not None and again[0].pca is not None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert [block.attn.fused_attn for block in model.blocks] == fused
    assert [m.training for m in model.modules()] == modes
    vis.fit_token_pca(photos)  # an explicit fit over the photos the user chooses
    assert vis.pca_bases["blocks.3"].tokens == 4 * 64 and vis.pca_bases["blocks.3"].digest() != digest


def test_a_photo_whose_attention_is_not_probabilities_fails_alone(held_out: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from featviz.errors import FeatvizError
    from featviz.inputs.discover import find_images
    from featviz.output.export import Exporter
    from featviz.output.pipeline import Visualizer

    vis = Visualizer(EXAMPLE[1], EXAMPLE[3], ["blocks.3"], resize=64, crop=64,
                     options=RenderOptions(top_k=1, vit_stats=True))
    measure = vis.token_runner.measure
    bad = vis.prepare(held_out / "photo1.png").tensor

    def overflowing(batch: torch.Tensor):  # photo1 stands for a photo the model overflows on
        if any(torch.equal(x, bad) for x in batch):
            raise FeatvizError("the attention holds non-finite values or is not a float tensor")
        return measure(batch)

    monkeypatch.setattr(vis.token_runner, "measure", overflowing)
    report = Exporter(vis, tmp_path, batch_size=4).run(find_images([str(held_out)]).images)
    assert (report.ok, report.failed) == (3, 1)
    assert "photo1.png: --vit-stats/--artifacts: the attention holds non-finite values" in report.errors[0]
    assert json.loads((tmp_path / "attention_statistics.json").read_text())["photos"] == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "alexnet", "--weights", "none", "--vit-stats"], "--vit-stats measures every block"),
    (["--model", "alexnet", "--weights", "none", "--artifacts"], "--artifacts measures every block"),
    (["--model", "alexnet", "--weights", "none", "--pca-tokens"], "--pca-tokens colours the patch tokens"),
    ([*EXAMPLE, "--layer", "patch_embed.proj,blocks.0", "--pca-tokens"],
     "layer patch_embed.proj of .* is no token layer"),
    ([*EXAMPLE, "--pca-foreground", "0"], "--pca-tokens was not given"),
    ([*EXAMPLE, "--artifacts=nan"], "not a valid outlier factor"),
])
@pytest.mark.parametrize("command", ["show", "sweep"])
def test_bad_input_is_a_usage_error_before_any_photo_is_read(command: str, args: list[str], message: str,
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")  # read first, it would fail as an image error (exit 1)
    result = invoke([command, broken, *args, "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    import re

    assert re.search(message, result.stderr) and "Traceback" not in result.output
    assert not (tmp_path / "out" / "broken").exists()


def test_the_pca_fit_leaves_out_unreadable_and_non_finite_photos() -> None:
    from types import SimpleNamespace

    from featviz.capture.layers import LayerRef
    from featviz.errors import ImageError
    from featviz.output.tokenextras import fit_bases, readable_tokens

    generator = torch.Generator().manual_seed(5)
    grids = {"a": torch.randn(4, 3, 3, generator=generator), "b": torch.randn(4, 3, 3, generator=generator),
             "nan": torch.full((4, 3, 3), float("nan"))}

    def prepare(source: str):
        if source == "broken":
            raise ImageError("broken: not a picture")
        return SimpleNamespace(tensor=grids[source])

    tokens_of = readable_tokens(prepare, lambda batch, ref: batch)  # the "layer" hands the grid back
    ref = LayerRef("blocks.0", None, torch.nn.Identity())
    assert tokens_of("broken", ref) is None and tokens_of("nan", ref) is None
    run = fit_bases([ref], ["a", "broken", "nan", "b"], tokens_of)["blocks.0"]
    alone = fit_bases([ref], ["a", "b"], tokens_of)["blocks.0"]
    assert run.tokens == 18 and run.digest() == alone.digest()
    assert bool(torch.isfinite(run.basis.components).all())
