"""Issue 18's models end to end, and the checks against the world that the other ViT tests leave out.

Every model is built by name through featviz (``--weights none``: random, seeded), run through
:class:`featviz.output.pipeline.Visualizer` or the CLI, and compared with what the test computes
itself from the model's own facts (``num_prefix_tokens``, ``patch_embed.grid_size``, torchvision's
one class token) and a hand-written forward of the blocks (tests/vitmodels.py), never with
featviz's token layout or formulas:

* timm DeiT distilled (2 prefix tokens): heads, rollout and relevance;
* ``vit_small_patch14_reg4_dinov2`` at 224 px (5 prefix tokens, a 16×16 grid): heads and rollout;
* torchvision ``vit_b_16``: heads through its forced per-head weights, and rollout;
* torchvision ``swin_t`` and timm's Swin-T: channels-last maps; ``--heads`` and rollout refused
  with the sentence saying windowed attention is not drawn and what is;
* a non-square input through the CLI (rows and columns not swapped, unlike DINO's reference code);
* fused vs unfused attention: same token-layer maps and token Grad-CAM;
* token Grad-CAM against torch-cam's ``reshape_transform`` (torch-cam ≥ 0.5 takes one).

Measured on the shared, loaded 2-core machine (2026-12-03, one thread): each model test takes
about 2-7 s, most of it building the full-size model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchcam.methods as torchcam_methods
from click.testing import CliRunner
from PIL import Image
from torch import nn

from featviz.capture.layers import LayerRef
from featviz.cli.main import main
from featviz.maps.explain import ClassExplainer
from featviz.maps.targets import Target
from featviz.output.options import RenderOptions
from featviz.output.pipeline import Visualizer
from vitmodels import module_output, timm_reference, tiny_timm_vit, torchvision_reference

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _rollout_row(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout, the class token's row: (N, T), written out here."""
    t = attentions[0].shape[-1]
    joint = torch.eye(t, dtype=torch.float64).repeat(attentions[0].shape[0], 1, 1)
    for a in attentions:
        hat = 0.5 * a.detach().double().mean(dim=1) + 0.5 * torch.eye(t, dtype=torch.float64)
        joint = (hat / hat.sum(dim=-1, keepdim=True)) @ joint
    return joint[:, 0]


def _relevance_row(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s rule, the class token's row: (N, T)."""
    t = attentions[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64).repeat(attentions[0].shape[0], 1, 1)
    for a, g in zip(attentions, gradients, strict=True):
        r = r + (g.double() * a.detach().double()).clamp(min=0).mean(dim=1) @ r
    return r[:, 0]


def _on_grid(row: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Token values (..., T) -> (..., rows, cols): keys ``prefix ..`` row-major, by plain indexing."""
    out = torch.empty(*row.shape[:-1], *grid, dtype=row.dtype)
    for i in range(grid[0]):
        for j in range(grid[1]):
            out[..., i, j] = row[..., prefix + i * grid[1] + j]
    return out


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_deit_distilled_heads_rollout_and_relevance() -> None:
    """Full DeiT-tiny distilled (12 blocks, class + distillation token) at 64 px: the maps equal
    the hand-written forward's, the distillation token dropped as key 1 (the model's own
    ``num_prefix_tokens``), the logits the mean of both heads as timm's eval forward has them."""
    vis = Visualizer("timm:deit_tiny_distilled_patch16_224", "none", ["blocks.11"], resize=64, crop=64,
                     model_kwargs={"img_size": 64, "num_classes": 5},
                     options=RenderOptions(heads=True, cam=["rollout", "relevance"], target=["top"]))
    model = vis.loaded.module
    prefix, grid = model.num_prefix_tokens, tuple(model.patch_embed.grid_size)
    assert (prefix, grid) == (2, (4, 4)) and model.dist_token is not None
    prepared = vis.prepare(_photo(64, 64))
    (result,) = vis.forward([prepared])[0]
    logits, attentions = timm_reference(model, prepared.tensor[None])
    cls = int(logits.argmax())
    gradients = torch.autograd.grad(logits[0, cls], attentions)
    assert result.heads is not None and result.heads.shape == (3, 4, 4)
    torch.testing.assert_close(result.heads, _on_grid(attentions[-1][0, :, 0].detach(), prefix, grid),
                               atol=1e-5, rtol=1e-4)
    maps = {cam.method: cam for cam in result.cams}
    assert maps["relevance"].target == cls
    torch.testing.assert_close(maps["rollout"].map.double(), _on_grid(_rollout_row(attentions)[0], prefix, grid),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps["relevance"].map.double(),
                               _on_grid(_relevance_row(attentions, list(gradients))[0], prefix, grid),
                               atol=1e-5, rtol=1e-4)
    assert result.summary()["tokens"] == {"prefix": 2, "grid": [4, 4], "patch": [16, 16]}
    assert _no_hooks(model) and all(block.attn.fused_attn for block in model.blocks)


def test_dinov2_with_registers_at_224_px() -> None:
    """``vit_small_patch14_reg4_dinov2`` built for 224 px: 1 class + 4 register tokens, 16×16
    patches of 14 px. The heads (6 of them) and rollout are the class token's row over keys 5..260,
    which the test takes from the model's facts; the heads' patch mass is what the class token
    does not send to the prefix (registers included)."""
    vis = Visualizer("timm:vit_small_patch14_reg4_dinov2", "none", ["blocks.11"], resize=224, crop=224,
                     model_kwargs={"img_size": 224, "num_classes": 4},
                     options=RenderOptions(heads=True, cam=["rollout"]))
    model = vis.loaded.module
    prefix, grid = model.num_prefix_tokens, tuple(model.patch_embed.grid_size)
    assert (prefix, grid, model.num_reg_tokens) == (5, (16, 16), 4)
    prepared = vis.prepare(_photo(224, 224, seed=1))
    (result,) = vis.forward([prepared])[0]
    with torch.no_grad():
        _, attentions = timm_reference(model, prepared.tensor[None])
    assert attentions[-1].shape == (1, 6, 261, 261)
    assert result.heads is not None and result.heads.shape == (6, 16, 16)
    torch.testing.assert_close(result.heads, _on_grid(attentions[-1][0, :, 0], prefix, grid), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.heads.sum(dim=(1, 2)), 1 - attentions[-1][0, :, 0, :prefix].sum(-1),
                               atol=1e-5, rtol=1e-4)
    (rollout,) = [cam for cam in result.cams if cam.method == "rollout"]
    assert rollout.map.shape == (16, 16) and rollout.target is None
    torch.testing.assert_close(rollout.map.double(), _on_grid(_rollout_row(attentions)[0], prefix, grid),
                               atol=1e-5, rtol=1e-4)


def test_torchvision_vit_b_16_heads_through_forced_per_head_weights() -> None:
    """torchvision ``vit_b_16`` (12 layers of 12 heads, width 768) built for 64 px (4×4 patches of
    16): its encoder asks for need_weights=False; featviz forces per-head weights for the pass, so
    the 12 heads equal a hand-written softmax from each layer's in_proj; the model answers as
    before afterwards."""
    vis = Visualizer("vit_b_16", "none", ["encoder.layers.encoder_layer_11"], resize=64, crop=64,
                     model_kwargs={"image_size": 64},
                     options=RenderOptions(heads=True, cam=["rollout"]))
    model = vis.loaded.module
    assert (model.patch_size, model.hidden_dim, len(model.encoder.layers)) == (16, 768, 12)
    prepared = vis.prepare(_photo(64, 64, seed=2))
    x = prepared.tensor[None]
    with torch.no_grad():
        before = model(x)
    (result,) = vis.forward([prepared])[0]
    with torch.no_grad():
        logits, attentions = torchvision_reference(model, x)
        after = model(x)
    torch.testing.assert_close(logits, before, atol=1e-4, rtol=1e-4)
    assert result.heads is not None and result.heads.shape == (12, 4, 4)
    torch.testing.assert_close(result.heads, _on_grid(attentions[-1][0, :, 0], 1, (4, 4)), atol=1e-5, rtol=1e-4)
    (rollout,) = [cam for cam in result.cams if cam.method == "rollout"]
    torch.testing.assert_close(rollout.map.double(), _on_grid(_rollout_row(attentions)[0], 1, (4, 4)),
                               atol=1e-5, rtol=1e-4)
    assert torch.equal(before, after) and _no_hooks(model)



SWINS = [("swin_t", "features.7", "features.1.0.attn"),
         ("timm:swin_tiny_patch4_window7_224", "layers.3", "layers.0.blocks.0")]


@pytest.mark.parametrize(("name", "layer", "inner"), SWINS, ids=["torchvision swin_t", "timm swin-t"])
def test_swin_is_drawn_channels_last_and_its_attention_refused(name: str, layer: str, inner: str,
                                                               tmp_path: Path) -> None:
    """Full Swin-T at 224 px: the last stage, (1, 7, 7, 768) channels-last, becomes 768 channels of
    7×7 (the module's own output permuted, here by indexing); --heads and --cam rollout are refused
    before any photo is read, saying windowed attention is not drawn and what featviz draws instead."""
    vis = Visualizer(name, "none", [layer], resize=224, crop=224)
    prepared = vis.prepare(_photo(224, 224, seed=3))
    (result,) = vis.forward([prepared])[0]
    raw = module_output(vis.loaded.module, layer, prepared.tensor[None])
    assert raw.shape == (1, 7, 7, 768) and result.activations.shape == (768, 7, 7)
    for c in (0, 100, 767):
        torch.testing.assert_close(result.activations[c], raw[0, :, :, c])
    assert result.summary()["layout"] == "channels_last"
    for asked in (["--heads"], ["--cam", "rollout"]):
        out = tmp_path / "out"
        run = CliRunner().invoke(main, ["show", str(tmp_path / "missing.jpg"), "--model", name, "--weights", "none",
                                        "--layer", inner.rpartition(".")[0] if asked == ["--heads"] else layer,
                                        *asked, "--out", str(out)])
        assert run.exit_code == 2, run.output
        assert "uses windowed self-attention" in run.output and "no attention of a class token" in run.output
        assert "Hint: featviz draws its blocks' outputs as feature maps (--layer)" in run.output
        assert "--cam gradcam" in run.output and "Traceback" not in run.output and not out.exists()


def test_a_non_square_input_through_the_cli(tmp_path: Path) -> None:
    """A 48×32 photo (wide) into a timm ViT with dynamic_img_size, not cropped: 4 rows × 6 columns
    of 8-px patches. attention_heads.npy[h, i, j] is key 1 + 6·i + j of the class token's row (DINO's
    visualize_attention.py would reshape it 6×4, swapping width and height); the pictures keep the
    photo's size."""
    photo = tmp_path / "wide.png"
    _photo(48, 32, seed=4).save(photo)
    kwargs = {"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5, "dynamic_img_size": True}
    args = ["--model", "timm:vit_tiny_patch16_224", "--weights", "none", "--resize", "32", "--no-crop",
            "--model-kwargs", json.dumps(kwargs), "--layer", "blocks.1"]
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["show", str(photo), *args, "--heads", "--cam", "rollout", "--save-raw",
                                    "--out", str(out)])
    assert run.exit_code == 0, run.output
    folder = out / "wide" / "blocks.1"
    raw = np.load(folder / "attention_heads.npy")
    assert raw.shape == (3, 4, 6)
    vis = Visualizer("timm:vit_tiny_patch16_224", "none", ["blocks.1"], resize=32, no_crop=True, model_kwargs=kwargs)
    x = vis.prepare(photo).tensor[None]
    assert x.shape == (1, 3, 32, 48)
    with torch.no_grad():
        _, attentions = timm_reference(vis.loaded.module, x)
    a = attentions[-1][0, :, 0].numpy()
    for i, j in [(0, 5), (3, 0), (2, 4), (1, 1)]:
        np.testing.assert_allclose(raw[:, i, j], a[:, 1 + 6 * i + j], atol=1e-5)
    with np.load(folder / "cam.npz") as npz:
        rollout = npz["rollout:none"]
    assert rollout.shape == (4, 6)
    np.testing.assert_allclose(rollout, _on_grid(_rollout_row(attentions), 1, (4, 6))[0].numpy(), atol=1e-5)
    assert Image.open(folder / "heads" / "mean.png").size == (48, 32)
    assert json.loads((folder / "summary.json").read_text())["tokens"]["grid"] == [4, 6]


def test_fused_and_unfused_attention_give_the_same_token_maps_and_token_gradcam() -> None:
    """timm's fused attention (its default) and the unfused path: the same token layer drawn as a
    feature map, and the same token Grad-CAM at blocks.1.norm1 (the attention maps themselves:
    tests/test_vitexplain.py)."""
    fused = tiny_timm_vit()
    unfused = copy.deepcopy(fused)
    for block in unfused.blocks:
        block.attn.fused_attn = False
    assert all(block.attn.fused_attn for block in fused.blocks)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    results = []
    for model in (fused, unfused):
        ref = LayerRef("blocks.1.norm1", None, model.blocks[1].norm1)
        results.append(ClassExplainer(model, ref, ["gradcam"], [Target(index=3)]).explain(x))
    assert results[0].layout is not None and results[0].layout.kind == "tokens"
    assert results[0].activations is not None and results[0].activations.shape == (2, 32, 4, 4)
    torch.testing.assert_close(results[0].activations, results[1].activations, atol=1e-5, rtol=1e-4)
    for ours, theirs in zip(results[0].per_image, results[1].per_image, strict=True):
        assert float(ours[0].map.max()) > 0
        torch.testing.assert_close(ours[0].map, theirs[0].map, atol=1e-5, rtol=1e-4)
    assert all(block.attn.fused_attn for block in fused.blocks)


def _minmax(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_token_cam_equals_torchcam_with_its_reshape_transform(method: str) -> None:
    """Seeded DeiT-tiny distilled (2 blocks, 64 px) at blocks.1.norm1: featviz's token Grad-CAM and
    LayerCAM equal torch-cam's, given a reshape_transform that drops the 2 prefix tokens and lays
    the patches on the 4×4 grid, to 1e-4 after min-max (pytorch-grad-cam: tests/test_token_layers.py)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=2, img_size=64,
                              num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path, cls = "blocks.1.norm1", 4
    batch = ClassExplainer(model, LayerRef(path, None, model.get_submodule(path)), [method],
                           [Target(index=cls)]).explain(x)
    ours = np.stack([per[0].map.numpy() for per in batch.per_image]).astype(np.float64)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 2:, :].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)

    peer = {"gradcam": torchcam_methods.GradCAM, "layercam": torchcam_methods.LayerCAM}[method]
    with peer(model, path, input_shape=(3, 64, 64), reshape_transform=reshape) as extractor:
        scores = model(x)
        theirs = extractor([cls, cls], scores, normalized=False)[0]
    model.zero_grad(set_to_none=True)
    theirs_np = np.maximum(theirs.detach().numpy().astype(np.float64), 0)
    assert theirs_np.shape == (2, 4, 4) and float(theirs_np.max() - theirs_np.min()) > 0
    np.testing.assert_allclose(_minmax(ours), _minmax(theirs_np), atol=1e-4)
    assert _no_hooks(model)


TINY = ["--model", "timm:vit_tiny_patch16_224", "--weights", "none", "--resize", "32", "--crop", "32",
        "--model-kwargs", '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}']


@pytest.mark.parametrize(("args", "error", "hint"), [
    (["--model", "alexnet", "--weights", "none", "--layer", "features.10", "--cam", "rollout"],
     "alexnet has no self-attention blocks", "--cam gradcam (or another CAM method) on a convolutional layer"),
    (["--model", "resnet18", "--weights", "none", "--layer", "layer4", "--cam", "relevance"],
     "resnet18 has no self-attention blocks", "for a CNN, use --cam gradcam"),
    ([*TINY, "--layer", "head", "--heads"], "layer head is no transformer block: attention maps are drawn at a block "
     "(blocks.0, blocks.1)", "use --layer blocks.1"),
    ([*TINY, "--layer", "blocks.1", "--heads", "--heads-threshold", "0"], "--heads-threshold 0.0 is out of range",
     "(0, 1]"),
    (["--model", "vitmodels:functional_vit", "--weights", "none", "--resize", "32", "--crop", "32", "--layer",
      "blocks.1", "--cam", "rollout"],
     "featviz cannot capture the attention of vitmodels:functional_vit: its attention modules (blocks.0 "
     "(SdpaAttention)", "featviz draws its blocks' outputs as feature maps (--layer)"),
], ids=["rollout on a CNN", "relevance on a CNN", "no block", "threshold 0", "capture fails"])
def test_bad_requests_name_the_blocks_or_the_cause_before_any_photo(args: list[str], error: str, hint: str,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["show", str(tmp_path / "missing.jpg"), *args, "--out", str(out)])
    assert run.exit_code == 2, run.output
    error_line, hint_line = run.output.strip().splitlines()[:2]
    assert error_line.startswith("Error: ") and error in error_line, run.output
    assert hint_line.startswith("Hint: ") and hint in hint_line, run.output
    assert "Traceback" not in run.output and "missing.jpg" not in run.output and not out.exists()


@pytest.mark.parametrize(("model", "layer"), [
    (["--model", "vitmodels:tiny_timm_vit"], "blocks.1"),
    (["--model", "vitmodels:tiny_timm_vit"], "blocks.1.norm1"),
    (["--model", "timm:deit_tiny_distilled_patch16_224", "--model-kwargs",
      '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}'], "blocks.1"),
], ids=["vit block", "vit norm1", "deit block"])
def test_the_atlas_box_of_a_token_is_its_own_patch(model: list[str], layer: str, tmp_path: Path) -> None:
    """The atlas's box of a token layer's entry is the patch where the token lives (not its
    receptive field, the whole photo after the first attention): for 64-px photos resized to
    32 px, token (y, x) of 8-px patches is photo pixels [16x, 16y, 16x + 16, 16y + 16]. Before,
    the positive surrogate gave the patch, the whole photo or an empty box depending on the layer."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _photo(64, 64, seed=10 + i).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["atlas", str(folder), "--out", str(out), *model, "--weights", "none", "--resize",
                                    "32", "--crop", "32", "--layer", layer, "--top", "2", "-q"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    document = json.loads((out / layer / "atlas.json").read_text())
    entries = [entry for channel in document["channels"] for entry in channel]
    assert len(entries) == 2 * len(document["channels"]) and len({(e["y"], e["x"]) for e in entries}) > 1
    for entry in entries:
        y, x = entry["y"], entry["x"]
        assert entry["box"] == [16.0 * x, 16.0 * y, 16.0 * x + 16, 16.0 * y + 16], entry
