"""Token and channels-last layers drawn as feature maps (featviz.capture.layouts), everywhere.

The expected maps are written out here from the model's own outputs with plain indexing
(``out[:, prefix:]`` reshaped row-major, ``out.permute(0, 3, 1, 2)``), the prefix count and the
grid as constants of each case, not read back through featviz; the token CAM is compared with
pytorch-grad-cam run with its ViT ``reshape_transform``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.ops.misc import Permute

from featviz.capture.hooks import describe_layers, feature_map_paths
from featviz.capture.layers import LayerRef
from featviz.capture.layouts import map_layout
from featviz.cli.main import main
from featviz.errors import LayerError
from featviz.maps.explain import ClassExplainer
from featviz.maps.targets import Target
from featviz.output.pipeline import Visualizer
from vitmodels import module_output, tiny_swin, tiny_timm_vit, tiny_torchvision_vit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _photo(rows: int, cols: int) -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _grid(out: torch.Tensor, prefix: int, rows: int, cols: int) -> torch.Tensor:
    """Independent reference: patch tokens laid row-major on the grid, (N, D, rows, cols)."""
    n, _, d = out.shape
    patches = out[:, prefix:, :]
    assert patches.shape[1] == rows * cols
    grid = torch.empty(n, d, rows, cols)
    for i in range(rows):
        for j in range(cols):
            grid[:, :, i, j] = patches[:, i * cols + j, :]
    return grid



CASES = [
    # (name, factory, layer, prefix, grid, input rows, cols)
    ("deit distilled", lambda: _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8), "blocks.1", 2,
     (4, 4), 32, 32),
    ("dinov2 registers", lambda: _timm("vit_small_patch14_reg4_dinov2", img_size=224, embed_dim=48, num_heads=2),
     "blocks.0.norm1", 5, (16, 16), 224, 224),
    ("non-square", lambda: tiny_timm_vit(img_size=(32, 48)), "blocks.1", 1, (4, 6), 32, 48),
    ("torchvision vit", tiny_torchvision_vit, "encoder.layers.encoder_layer_1", 1, (4, 4), 32, 32),
]


def _timm(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, depth=2, num_classes=5, **kwargs).eval()


@pytest.mark.parametrize(("name", "factory", "path", "prefix", "grid", "rows", "cols"), CASES,
                         ids=[c[0] for c in CASES])
def test_token_layers_are_drawn_on_the_patch_grid(name, factory, path, prefix, grid, rows, cols) -> None:
    model = factory()
    x = torch.randn(2, 3, rows, cols, generator=torch.Generator().manual_seed(0))
    out = module_output(model, path, x)
    assert out.shape[1] == prefix + grid[0] * grid[1]
    layout = map_layout(model, LayerRef(path, None, model.get_submodule(path)), tuple(out.shape), (rows, cols))
    assert layout is not None and layout.kind == "tokens"
    assert (layout.tokens.prefix, layout.tokens.grid) == (prefix, grid)
    torch.testing.assert_close(layout.to_map(out), _grid(out, prefix, *grid), rtol=0, atol=0)
    assert layout.record()["tokens"]["grid"] == list(grid)


def test_show_export_on_a_deit_block(tmp_path: Path) -> None:
    """show --save-raw on DeiT (class + distillation token): activations.npy is D×rows×cols equal to
    the block's patch tokens; summary.json records the tokens; channel PNGs and statistics are made."""
    photo = tmp_path / "p.png"
    _photo(40, 40).save(photo)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["show", str(photo), "--model", "timm:deit_tiny_distilled_patch16_224",
                                       "--weights", "none", "--resize", "32", "--crop", "32", "--model-kwargs",
                                       '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}',
                                       "--layer", "blocks.1", "--save-raw", "--top-k", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    folder = out / "p" / "blocks.1"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["tokens"] == {"prefix": 2, "grid": [4, 4], "patch": [8, 8]}
    raw = np.load(folder / "activations.npy")
    assert raw.shape == (192, 4, 4)
    vis = Visualizer("timm:deit_tiny_distilled_patch16_224", "none", ["blocks.1"], resize=32, crop=32,
                     model_kwargs={"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5})
    x = vis.prepare(photo).tensor[None]
    expected = _grid(module_output(vis.loaded.module, "blocks.1", x), 2, 4, 4)[0]
    np.testing.assert_allclose(raw, expected.numpy(), atol=1e-5)
    channels = sorted(p.name for p in (folder / "channels").glob("*.png")) if (folder / "channels").is_dir() else []
    assert len(channels) == 3, sorted(p.name for p in folder.rglob("*"))


SWIN_CASES = [
    ("torchvision swin", tiny_swin, ["features.7", "norm", "features.0.2",
                                                                         "features.1.0.norm1"]),
    ("timm swin", lambda: _timm_swin(), ["layers.3", "norm", "patch_embed", "layers.1.blocks.0.norm1"]),
]


def _seeded(factory) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


def _timm_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1), img_size=64,
                             window_size=2, embed_dim=16, num_heads=(1, 1, 1, 1), num_classes=5).eval()


@pytest.mark.parametrize(("name", "factory", "paths"), SWIN_CASES, ids=[c[0] for c in SWIN_CASES])
def test_channels_last_layers_are_permuted(name, factory, paths) -> None:
    model = factory()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for path in paths:
        out = module_output(model, path, x)
        assert out.dim() == 4
        layout = map_layout(model, LayerRef(path, None, model.get_submodule(path)), tuple(out.shape), (64, 64))
        assert layout is not None and layout.kind == "channels_last", path
        mapped = layout.to_map(out)
        n, h, w, c = out.shape
        assert mapped.shape == (n, c, h, w)
        assert torch.equal(mapped[0, :, 1, 0], out[0, 1, 0, :])
        assert layout.record() == {"layout": "channels_last"}
    conv = "features.0.0" if name.startswith("torchvision") else "patch_embed.proj"
    out = module_output(model, conv, x)
    assert map_layout(model, LayerRef(conv, None, model.get_submodule(conv)), tuple(out.shape), (64, 64)).kind == "nchw"


def test_swin_through_the_pipeline_records_the_layout() -> None:
    vis = Visualizer("vitmodels:tiny_swin", "none", ["features.7", "features.5"], resize=64, crop=64)
    results = vis.run(_photo(64, 64))
    assert [tuple(r.activations.shape) for r in results] == [(128, 2, 2), (64, 4, 4)]
    assert all(r.summary()["layout"] == "channels_last" for r in results)
    x = vis.prepare(_photo(64, 64)).tensor[None]
    expected = module_output(vis.loaded.module, "features.7", x)[0].permute(2, 0, 1)
    torch.testing.assert_close(results[0].activations, expected)


def test_undecidable_layouts_are_errors() -> None:
    """A 4-D output outside Swin's channels-last trunk, and one after an unknown Permute: refused."""
    model = tiny_swin()
    with pytest.raises(LayerError, match="cannot tell which axis holds the channels"):
        map_layout(model, LayerRef("avgpool", None, model.avgpool), (1, 128, 1, 1), (64, 64))
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), Permute([0, 2, 1, 3]), nn.Identity())
    with pytest.raises(LayerError, match="neither NCHW->NHWC nor back"):
        map_layout(odd, LayerRef("2", None, odd[2]), (1, 4, 4, 4), (6, 6))


def test_permute_inside_a_sequential_decides(tmp_path: Path) -> None:
    """torchvision ConvNeXt's block shape: a Permute to NHWC, LayerNorm and Linear, a Permute back."""
    block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), Permute([0, 2, 3, 1]), nn.LayerNorm(6), nn.Linear(6, 6),
                          Permute([0, 3, 1, 2]))
    kinds = [map_layout(block, LayerRef(str(k), None, block[k]), (1, 6, 8, 8), (8, 8)).kind for k in range(5)]
    assert kinds == ["nchw", "channels_last", "channels_last", "channels_last", "nchw"]


def test_cnn_layers_are_unchanged() -> None:
    model = _seeded(torchvision.models.resnet18)
    layout = map_layout(model, LayerRef("layer4", None, model.layer4), (1, 512, 2, 2), (64, 64))
    assert layout is not None and layout.kind == "nchw" and layout.record() == {}
    assert map_layout(model, LayerRef("fc", None, model.fc), (1, 1000), (64, 64)) is None


def test_layers_listing_and_layer_all_include_transformer_blocks() -> None:
    model = tiny_timm_vit()
    example = torch.zeros(1, 3, 32, 32)
    rows = {row["path"]: row for row in describe_layers(model, example)}
    assert rows["blocks.1"]["map_shape"] == [32, 4, 4] and rows["blocks.1"]["tokens"] == {"prefix": 1, "grid": [4, 4]}
    assert feature_map_paths(model, example) == ["blocks.0", "blocks.1"]
    swin = tiny_swin()
    paths = feature_map_paths(swin, torch.zeros(1, 3, 64, 64))
    assert paths == [f"features.{k}" for k in range(8)]
    listing = CliRunner().invoke(main, ["layers", "--model", "vitmodels:tiny_swin", "--weights", "none", "--crop",
                                        "64", "--resize", "64"])
    assert listing.exit_code == 0, listing.output
    assert "features.7  Sequential    2x2x128 -> 128x2x2 (channels-last)" in listing.output


def _reshape(prefix: int, rows: int, cols: int):
    """pytorch-grad-cam's ViT reshape_transform, with this model's prefix and grid."""
    def transform(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), rows, cols, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return transform


def _minmax(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1)


@pytest.mark.parametrize(("method", "peer"), [("gradcam", GradCAM), ("layercam", LayerCAM)])
def test_token_cam_equals_pytorch_grad_cam(method, peer) -> None:
    """Seeded DeiT-tiny (2 blocks, 64 px, class + distillation token) at blocks[-1].norm1: featviz's
    raw map equals pytorch-grad-cam's with reshape_transform, to 1e-4 after min-max."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=2, img_size=64,
                              num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path, cls = "blocks.1.norm1", 7
    ref = LayerRef(path, None, model.get_submodule(path))
    batch = ClassExplainer(model, ref, [method], [Target(index=cls)]).explain(x)
    ours = np.stack([per[0].map.numpy() for per in batch.per_image])
    assert ours.shape == (2, 4, 4) and batch.layout.kind == "tokens"
    assert all(not module._forward_hooks for module in model.modules())
    explainer = peer(model, [model.get_submodule(path)], reshape_transform=_reshape(2, 4, 4))
    targets = [ClassifierOutputTarget(cls)] * 2
    try:
        outputs = explainer.activations_and_grads(x)
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        recorded = explainer.activations_and_grads
        theirs = np.maximum(explainer.get_cam_image(x, model.get_submodule(path), targets,
                                                    recorded.activations[0].numpy(),
                                                    recorded.gradients[0].numpy(), False), 0)
    finally:
        explainer.activations_and_grads.release()
    assert float(theirs.max() - theirs.min()) > 0
    np.testing.assert_allclose(_minmax(ours.astype(np.float64)), _minmax(theirs.astype(np.float64)), atol=1e-4)


def test_ablation_cam_on_tokens_keeps_the_prefix_tokens() -> None:
    """Ablation-CAM zeroes one embedding channel of the patch tokens; reference by hand with a hook
    that edits out[:, 1:, k] only (the class token untouched)."""
    model = tiny_timm_vit()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    path, cls = "blocks.1", 3
    ref = LayerRef(path, None, model.blocks[1])
    batch = ClassExplainer(model, ref, ["ablationcam"], [Target(index=cls)], cam_batch=8).explain(x)
    weights = batch.per_image[0][0].weights
    with torch.no_grad():
        base = float(model(x)[0, cls])
        expected = []
        for k in (0, 5, 31):
            def zero(module, inputs, out, k=k):
                out = out.clone()
                out[:, 1:, k] = 0
                return out
            handle = model.blocks[1].register_forward_hook(zero)
            try:
                ablated = float(model(x)[0, cls])
            finally:
                handle.remove()
            expected.append((base - ablated) / base)
    np.testing.assert_allclose(weights[[0, 5, 31]].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_show_layer_all_with_gradcam_on_a_vit(tmp_path: Path) -> None:
    """--layer all takes every block; --cam gradcam runs on each token layer; the maps are 4×4."""
    photo = tmp_path / "p.png"
    _photo(32, 32).save(photo)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["show", str(photo), "--model", "timm:vit_tiny_patch16_224", "--weights", "none",
                                       "--resize", "32", "--crop", "32", "--model-kwargs",
                                       '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}',
                                       "--layer", "all", "--cam", "gradcam", "--save-raw", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for block in ("blocks.0", "blocks.1"):
        folder = out / "p" / block
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["tokens"]["grid"] == [4, 4] and summary["cams"][0]["method"] == "gradcam"
        with np.load(folder / "cam.npz") as npz:
            assert all(npz[name].shape == (4, 4) for name in npz.files)


def test_atlas_of_a_vit_block_ranks_patches(tmp_path: Path) -> None:
    """The atlas of a token layer: per embedding channel the photos whose patch token peaks
    highest, with the patch's grid cell, equal to a brute-force pass over the photos."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["atlas", str(folder), "--out", str(out), "--model", "vitmodels:tiny_timm_vit",
                                       "--weights", "none", "--resize", "32", "--crop", "32", "--layer", "blocks.1",
                                       "--top", "2", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "blocks.1" / "atlas.json").read_text())
    assert document["shape"] == [32, 4, 4]
    vis = Visualizer("vitmodels:tiny_timm_vit", "none", ["blocks.1"], resize=32, crop=32)
    grids = {p.stem: _grid(module_output(vis.loaded.module, "blocks.1", vis.prepare(p).tensor[None]), 1, 4, 4)[0]
             for p in sorted(folder.iterdir())}
    for c in (0, 7, 31):
        ranked = sorted(((float(g[c].max()), key, int(g[c].argmax())) for key, g in grids.items()),
                        key=lambda e: (-e[0], e[1]))[:2]
        kept = document["channels"][c]
        assert [(e["key"], e["y"] * 4 + e["x"]) for e in kept] == [(key, flat) for _, key, flat in ranked]
        assert [e["score"] for e in kept] == pytest.approx([s for s, _, _ in ranked], rel=1e-5)


def test_torchvision_vit_blocks_are_the_feature_stack() -> None:
    """torchvision ViT: indices, --layer all and sweep reach encoder.layers.encoder_layer_K."""
    from featviz.capture.layers import resolve_layers, sweep_layers

    model = tiny_torchvision_vit()
    blocks = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert sweep_layers(model) == ["conv_proj", *blocks]
    maps = feature_map_paths(model, torch.zeros(1, 3, 32, 32))
    assert maps == ["conv_proj", *blocks, "encoder.ln"]
    assert [r.path for r in resolve_layers(model, ["-2"], feature_maps=maps)] == [blocks[1]]


def test_dynamic_img_size_reads_the_grid_of_each_input() -> None:
    """timm dynamic_img_size on a 40×24 input: patch_embed is NHWC by its own output_fmt, the block's
    tokens sit on a 5×3 grid (rows 40/8, columns 24/8), not the 4×4 it was built with."""
    model = tiny_timm_vit(img_size=32, dynamic_img_size=True)
    x = torch.randn(1, 3, 40, 24, generator=torch.Generator().manual_seed(4))
    embed = module_output(model, "patch_embed", x)
    layout = map_layout(model, LayerRef("patch_embed", None, model.patch_embed), tuple(embed.shape), (40, 24))
    assert embed.shape == (1, 5, 3, 32) and layout.kind == "channels_last"
    out = module_output(model, "blocks.1", x)
    layout = map_layout(model, LayerRef("blocks.1", None, model.blocks[1]), tuple(out.shape), (40, 24))
    assert layout.tokens.grid == (5, 3)
    torch.testing.assert_close(layout.to_map(out), _grid(out, 1, 5, 3), rtol=0, atol=0)
