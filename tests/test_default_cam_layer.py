"""Class maps without ``--layer`` (issue 17): featviz draws them at the last feature map before
global pooling, as its peers do, and says which on stderr.

The reference is a peer: torch-cam's ``locate_candidate_layer`` (the last module whose output is
(N, C, H, W) with H x W > 1, found by hooking every module) for ResNet and the tiny models, and
pytorch-grad-cam's convention ``model.features[-1]`` for AlexNet. Models are built with
``weights=None``; nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchcam.methods._utils import locate_candidate_layer
from torchvision.models import get_model

import featviz
from featviz.capture.hooks import feature_map_paths
from featviz.capture.layers import default_cam_layer
from featviz.cli.main import main
from featviz.errors import LayerError
from featviz.models.build import LoadedModel, Preprocess
from featviz.output.pipeline import RenderOptions, Visualizer
from tinymodels import tiny_features

SMALL = ["--resize", "64", "--crop", "64", "--size", "16", "--top-k", "1", "--quiet"]


def _default(model: nn.Module, side: int) -> str:
    return default_cam_layer(model, feature_map_paths(model, torch.zeros(1, 3, side, side)), "m").path


def _plain_cnn() -> nn.Module:
    """conv, relu, conv, relu, global pool, flatten, linear: children "0" .. "6"."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return get_model("resnet18", weights=None).eval()


@pytest.mark.parametrize("side, expected", [(224, "layer4"), (64, "layer4"), (32, "layer3")])
def test_resnet18_agrees_with_torchcam(resnet18: nn.Module, side: int, expected: str) -> None:
    """At 32 px ResNet-18's layer4 is 1x1, so both step back to layer3."""
    assert locate_candidate_layer(resnet18, (3, side, side)) == expected
    assert _default(resnet18, side) == expected


@pytest.mark.parametrize("build, peer, expected", [(_plain_cnn, "3", "3"),
                                                   (tiny_features, "features", "features.4")])
def test_tiny_models_agree_with_torchcam(build: type[nn.Module], peer: str, expected: str) -> None:
    """torch-cam may name the ``features`` container, whose output is its last child's tensor."""
    model = build().eval()
    assert locate_candidate_layer(model, (3, 32, 32)) == peer
    assert _default(model, 32) == expected
    named = model.get_submodule(peer)
    assert named is model.get_submodule(expected) or list(named.children())[-1] is model.get_submodule(expected)


def test_alexnet_takes_features_last_like_pytorch_grad_cam() -> None:
    """pytorch-grad-cam's examples use ``model.features[-1]`` for AlexNet and VGG (torch-cam takes
    ``avgpool``, whose adaptive 6x6 pool leaves the 224 px map as it is)."""
    model = get_model("alexnet", weights=None)
    ref = default_cam_layer(model, feature_map_paths(model, torch.zeros(1, 3, 224, 224)), "alexnet")
    assert (ref.path, ref.index) == ("features.12", 12)
    assert ref.module is model.features[-1]


def test_no_feature_map_is_an_error_with_a_hint() -> None:
    """Token outputs (N, T, D) or only 1x1 maps: featviz does not guess."""
    tokens = nn.Sequential(nn.Flatten(2), nn.Linear(64, 8))
    with pytest.raises(LayerError) as caught:
        default_cam_layer(tokens, feature_map_paths(tokens, torch.zeros(1, 3, 8, 8)), "tokens")
    assert "cannot tell which layer of tokens" in caught.value.message
    assert caught.value.hint is not None and "--layer" in caught.value.hint


def _loaded(model: nn.Module) -> LoadedModel:
    return LoadedModel(model, "plain", "none", Preprocess(resize=32, crop=32), torch.device("cpu"))


def test_visualizer_chooses_and_records_the_default_layer(cat_photo: Path) -> None:
    model = _plain_cnn()
    visualizer = Visualizer(loaded=_loaded(model), options=RenderOptions(cam=("gradcam",), size=8))
    assert [ref.path for ref in visualizer.layers] == ["3"]
    assert visualizer.default_layer is not None and visualizer.default_layer.path == "3"
    assert all(not module._forward_hooks for module in model.modules())
    [result] = visualizer.run([cat_photo])
    assert result.layer.path == "3"


def test_without_cam_or_with_a_layer_nothing_is_chosen() -> None:
    model = _plain_cnn()
    plain = Visualizer(loaded=_loaded(model), options=RenderOptions(size=8))
    assert [ref.path for ref in plain.layers] == ["0"] and plain.default_layer is None
    named = Visualizer(loaded=_loaded(model), layers=["2"], options=RenderOptions(cam=("gradcam",), size=8))
    assert [ref.path for ref in named.layers] == ["2"] and named.default_layer is None


def test_visualize_with_cam_uses_the_last_feature_map(cat_photo: Path, tests_on_path: None) -> None:
    [result] = featviz.visualize(cat_photo, model="tinymodels:tiny_features", weights="none", cam="gradcam",
                                 resize=40, crop=32, size=8)
    assert result.layer.path == "features.4"


@pytest.mark.parametrize("command", ["show", "export"])
def test_cli_cam_without_layer_draws_at_layer4_and_says_so(command: str, cat_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [command, str(cat_photo), "--model", "resnet18", "--weights", "none",
                                       "--cam", "gradcam", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: --cam without --layer: drawing class maps at layer4 (layer 7," in result.stderr
    [written] = out.rglob("summary.json")  # show: OUT/chelsea/layer4, export: OUT/sample_images/chelsea/layer4
    assert written.parent.name == "layer4"
    summary = json.loads(written.read_text())
    assert [cam["method"] for cam in summary["cams"]] == ["gradcam"]


def test_cli_with_layer_or_without_cam_says_nothing(cat_photo: Path, tmp_path: Path, tests_on_path: None) -> None:
    for extra, folder in ((["--cam", "gradcam", "--layer", "1"], "features.1"), ([], "features.0")):
        out = tmp_path / folder
        result = CliRunner().invoke(main, ["show", str(cat_photo), "--model", "tinymodels:tiny_features",
                                           "--weights", "none", *extra, *SMALL, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "note:" not in result.stderr
        assert (out / "chelsea" / folder / "summary.json").is_file()


VIT = ["--model", "timm:vit_tiny_patch16_224", "--weights", "none", "--resize", "32", "--crop", "32",
       "--model-kwargs", '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}']


def test_transformer_maps_without_layer_use_the_last_block(cat_photo: Path, tmp_path: Path) -> None:
    """Rollout and relevance end at the last block; a ViT's patch embedding (its one (N, C, H, W)
    output) would be refused as no transformer block."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["show", str(cat_photo), *VIT, "--cam", "rollout", "--size", "8", "--top-k", "1",
                                       "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "drawing class maps at blocks.1 (layer 1, the last transformer block)" in result.stderr
    assert (out / "chelsea" / "blocks.1" / "summary.json").is_file()


def test_default_cam_layer_takes_the_last_block_when_given_blocks() -> None:
    model = _plain_cnn()
    ref = default_cam_layer(model, ["0"], "plain", blocks=["0", "2"])
    assert (ref.path, ref.index) == ("2", 2) and ref.module is model[2]
