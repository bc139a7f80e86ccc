"""Issue 20, item 2: a module that runs twice in one forward pass (every ``layerN.M.relu`` of a
torchvision ResNet, any shared module). On main the first call was captured silently and
Ablation-CAM's replacement hook replaced BOTH calls, so its weights came out near 2.0: a silently
wrong map. Now such a layer is refused for --cam before any photo, with a hint naming the module
around it that runs once; the hooks never mix calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

import oddimages
import tinymodels
from featviz.capture.calls import CallCounter, count_calls
from featviz.capture.hooks import GradientCapture
from featviz.capture.layers import resolve_layers
from featviz.cli.main import main
from featviz.errors import LayerError


def test_resnet_block_relus_are_counted_twice_and_hooks_go() -> None:
    model = torchvision.models.resnet18(weights=None).train()
    calls = count_calls(model, torch.zeros(1, 3, 32, 32))
    # torchvision's BasicBlock.forward applies self.relu after bn1 and after the addition
    assert calls["layer1.0.relu"] == calls["layer4.1.relu"] == 2
    assert calls["layer1.0"] == calls["relu"] == calls["layer1.0.conv1"] == 1
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_the_counter_removes_its_hooks_when_the_pass_raises() -> None:
    model = tinymodels.Broken()
    with pytest.raises(RuntimeError), CallCounter(model):
        model(torch.zeros(1, 3, 8, 8))
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_ablation_never_replaces_both_calls() -> None:
    """The replacement used to hit every call; now the second call stops the pass."""
    model = tinymodels.tiny_residual()
    ref = resolve_layers(model, ["relu"])[0]
    replaced: list[int] = []

    def replace(output: torch.Tensor) -> torch.Tensor:
        replaced.append(1)
        return torch.zeros_like(output)

    with pytest.raises(LayerError, match="runs more than once"), \
            GradientCapture(model, ref, with_grad=False, replace=replace) as recorder:
        recorder.run(torch.zeros(1, 3, 8, 8))
    assert replaced == [1]
    assert all(not m._forward_hooks for m in model.modules())


def test_cam_on_a_layer_called_twice_is_refused_before_any_photo(tmp_path: Path, tests_on_path: None) -> None:
    photo = oddimages.make_rgb_png(tmp_path / "a.png", size=(24, 20))
    common = ["--model", "tinymodels:tiny_residual", "--weights", "none", "--size", "8", "--crop", "16",
              "--cam", "ablationcam"]
    result = CliRunner().invoke(main, ["show", str(photo), "--layer", "relu", "--out", str(tmp_path / "out"),
                                       *common], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "layer relu runs 2 times in one forward pass" in result.stderr
    assert not (tmp_path / "out" / "a").exists()  # nothing was drawn
    fine = CliRunner().invoke(main, ["show", str(photo), "--layer", "block", "--out", str(tmp_path / "ok"), *common],
                              catch_exceptions=False)
    assert fine.exit_code == 0, fine.output


def test_the_hint_names_the_block_around_a_resnet_relu() -> None:
    from featviz.maps.explain import build_explainers

    model = torchvision.models.resnet18(weights=None)
    ref = resolve_layers(model, ["layer1.0.relu"])[0]
    with pytest.raises(LayerError) as error:
        build_explainers(model, [ref], ["ablationcam"], ["top"], None, torch.zeros(1, 3, 32, 32))
    assert "runs 2 times" in error.value.message and "--layer layer1.0 " in (error.value.hint or "")
