"""Issue 20, item 2 (rest): pick one call of a module that runs more than once in a pass.

Every ``layerN.M.relu`` of a torchvision ResNet runs twice per BasicBlock (after ``bn1`` and
after the addition); any shared module does the same. On main, show/export/sweep/atlas drew the
FIRST call silently and only ``--cam`` refused. Now ``--layer layer1.0.relu@2`` picks the second
call (1-based) for the activation views and the CAM family alike, and a double-called layer
named without a call is refused before any photo, with a hint naming both ways out.

References here are independent of featviz's hooks: a forward hook written in the test counts
the calls and keeps (or replaces) the one wanted.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import tinymodels
from featviz.capture.calls import check_calls, count_calls
from featviz.capture.hooks import capture, describe_layers
from featviz.capture.layers import resolve_layers, sweep_layers
from featviz.errors import LayerError
from featviz.maps.explain import build_explainers

pytestmark = pytest.mark.filterwarnings("error")

SIDE = 32  # ResNet-18 at 32 px: layer1 runs at 8x8, 64 channels


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _photos(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(7))


def _calls_of(model: nn.Module, module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every call's output of ``module`` in one pass, by a hook written here."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_second_call_is_captured_and_the_first_is_not(resnet: nn.Module) -> None:
    x = _photos()
    refs = resolve_layers(resnet, ["layer1.0.relu@2", "layer1.0.relu@1"])
    assert [(r.path, r.module_path, r.call) for r in refs] == [("layer1.0.relu@2", "layer1.0.relu", 2),
                                                              ("layer1.0.relu@1", "layer1.0.relu", 1)]
    got = capture(resnet, refs, x)
    first, second = _calls_of(resnet, resnet.layer1[0].relu, x)
    assert torch.equal(got["layer1.0.relu@2"], second)
    assert torch.equal(got["layer1.0.relu@1"], first)
    assert not torch.equal(first, second)
    assert _no_hooks(resnet)


def test_an_index_takes_a_call_too() -> None:
    model = tinymodels.tiny_residual()  # top-level children: conv1, relu (runs twice), block, pool, fc
    [ref] = resolve_layers(model, ["1@2"])
    assert (ref.path, ref.index, ref.call) == ("relu@2", 1, 2)


def test_gradcam_at_the_second_call_differentiates_only_that_call(resnet: nn.Module) -> None:
    x = _photos(1)
    [ref] = resolve_layers(resnet, ["layer1.0.relu@2"])
    explainer = build_explainers(resnet, [ref], ["gradcam"], ["3"], None, x)[ref.path]
    featviz_weights = explainer.explain(x).per_image[0][0].weights

    kept: dict[str, torch.Tensor] = {}
    calls = [0]

    def keep_second(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        calls[0] += 1
        if calls[0] == 2:
            out.retain_grad()
            kept["out"] = out

    handle = resnet.layer1[0].relu.register_forward_hook(keep_second)
    try:
        resnet(x.clone().requires_grad_(True))[0, 3].backward()
    finally:
        handle.remove()
    reference = kept["out"].grad[0].mean(dim=(1, 2))  # Grad-CAM: the gradient's spatial mean per channel
    resnet.zero_grad(set_to_none=True)
    assert featviz_weights is not None
    torch.testing.assert_close(featviz_weights, reference, rtol=1e-4, atol=1e-6)


def test_ablation_cam_at_the_second_call_replaces_only_that_call(resnet: nn.Module) -> None:
    """Ablation-CAM: w_k = (y - y_k) / y, y_k the class logit with channel k of the layer set to 0.
    The reference zeroes channel k in the second call's output only, one forward per channel."""
    x = _photos(1)
    [ref] = resolve_layers(resnet, ["layer1.0.relu@2"])
    explainer = build_explainers(resnet, [ref], ["ablationcam"], ["5"], None, x, cam_batch=16)[ref.path]
    cams = explainer.explain(x).per_image[0]
    featviz_weights = cams[0].weights
    assert _no_hooks(resnet)

    def logit_with(channel: int | None) -> float:
        calls = [0]

        def zero_in_second(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor | None:
            calls[0] += 1
            if calls[0] != 2 or channel is None:
                return None
            changed = out.clone()
            changed[:, channel] = 0
            return changed

        handle = resnet.layer1[0].relu.register_forward_hook(zero_in_second)
        try:
            with torch.no_grad():
                return float(resnet(x)[0, 5])
        finally:
            handle.remove()

    y = logit_with(None)
    checked = list(range(0, 64, 4))  # 16 of the 64 channels: one reference forward each
    reference = torch.tensor([(y - logit_with(k)) / y for k in checked])
    assert featviz_weights is not None
    torch.testing.assert_close(featviz_weights[checked], reference, rtol=1e-4, atol=1e-5)
    # on main the replacement hit both calls: weights near 2.0; here they are the second call's
    assert float(featviz_weights.abs().mean()) < 1.0


def test_a_double_called_layer_without_a_call_is_refused_with_both_ways_out(resnet: nn.Module) -> None:
    calls = count_calls(resnet, _photos(1))
    with pytest.raises(LayerError) as error:
        check_calls(calls, resolve_layers(resnet, ["layer1", "layer1.0.relu"]), "resnet18")
    message, hint = error.value.message, error.value.hint or ""
    assert message.startswith("layer layer1.0.relu runs 2 times in one forward pass of resnet18")
    assert "--layer layer1.0.relu@K, K = 1..2 (e.g. --layer layer1.0.relu@2)" in hint
    assert "--layer layer1.0 (the module around it, which runs once)" in hint
    check_calls(calls, resolve_layers(resnet, ["layer1.0.relu@1", "layer1.0.relu@2", "layer1.0"]), "resnet18")


@pytest.mark.parametrize(("spec", "words"), [
    ("layer1.0.relu@3", "layer1.0.relu runs 2 times in one forward pass of resnet18, so it has no call 3"),
    ("layer1.0.conv1@2", "layer1.0.conv1 runs 1 time in one forward pass of resnet18, so it has no call 2"),
])
def test_a_call_the_module_does_not_make_is_refused(resnet: nn.Module, spec: str, words: str) -> None:
    with pytest.raises(LayerError, match=words):
        check_calls(count_calls(resnet, _photos(1)), resolve_layers(resnet, [spec]), "resnet18")


@pytest.mark.parametrize("spec", ["layer1.0.relu@0", "layer1.0.relu@x", "layer1.0.relu@"])
def test_a_bad_call_number_is_refused(resnet: nn.Module, spec: str) -> None:
    with pytest.raises(LayerError, match="@ must be followed by a call number, counted from 1"):
        resolve_layers(resnet, [spec])


def test_a_module_really_named_with_an_at_sign() -> None:
    """PyTorch allows "@" in a module's name; such a name is taken as it is, unless it also
    reads as a call of another module: then featviz refuses to guess."""
    alone = nn.Sequential()
    alone.add_module("conv@2", nn.Conv2d(3, 2, 1))
    [ref] = resolve_layers(alone, ["conv@2"])
    assert (ref.path, ref.call, ref.module_path) == ("conv@2", None, "conv@2")
    both = nn.Sequential()
    both.add_module("conv", nn.Conv2d(3, 2, 1))
    both.add_module("conv@2", nn.Conv2d(2, 2, 1))
    with pytest.raises(LayerError, match="is ambiguous"):
        resolve_layers(both, ["conv@2"])


def test_all_and_the_sweep_list_each_call() -> None:
    model = tinymodels.tiny_residual()
    calls = count_calls(model, torch.zeros(1, 3, 16, 16))
    assert calls["relu"] == 2
    refs = resolve_layers(model, ["all"], calls=calls)
    assert [r.path for r in refs] == ["conv1", "relu@1", "relu@2", "block", "pool", "fc"]
    assert [r.path for r in resolve_layers(model, ["all"])] == ["conv1", "relu", "block", "pool", "fc"]
    assert sweep_layers(model, calls) == ["conv1", "block"]  # relu is no sweep stage
    assert sweep_layers(torchvision.models.resnet18(weights=None), {"layer1": 2}) == [
        "conv1", "layer1@1", "layer1@2", "layer2", "layer3", "layer4"]


def test_layers_rows_say_how_often_each_module_runs(resnet: nn.Module) -> None:
    rows = {row["path"]: row for row in describe_layers(resnet, _photos(1), include_all=True)}
    assert rows["layer1.0.relu"]["calls"] == rows["layer4.1.relu"]["calls"] == 2
    assert rows["layer1.0"]["calls"] == rows["relu"]["calls"] == 1
    assert _no_hooks(resnet)


def test_hooks_go_when_the_pass_raises() -> None:
    model = tinymodels.Broken()
    refs = resolve_layers(model, ["features.1@1"])
    with pytest.raises(RuntimeError):
        capture(model, refs, torch.zeros(1, 3, 8, 8), stop_early=False)
    assert _no_hooks(model)


def test_optimize_drives_the_picked_call() -> None:
    """``featviz optimize --layer relu@2``: the differentiable capture sees the second call only."""
    from featviz.capture.drive import DrivenLayer
    from featviz.optimize.engine import OptimizeSettings, check_units

    model = tinymodels.tiny_residual().eval()  # batch norm on its running statistics, as featviz runs it
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    [ref] = resolve_layers(model, ["relu@2"])
    with DrivenLayer(model, ref, redirect=False) as driven:
        got = driven.run(x.clone().requires_grad_(True))
    assert got is not None and torch.equal(got.detach(), _calls_of(model, model.relu, x)[1])
    assert _no_hooks(model)
    with pytest.raises(LayerError, match="runs 2 times"):
        check_units(model, resolve_layers(model, ["relu"])[0], [0], OptimizeSettings(size=16), torch.device("cpu"))


def test_receptive_fields_of_a_picked_call(resnet: nn.Module) -> None:
    """The atlas's receptive fields at ``layer1.0.relu@2``: a BasicBlock returns its relu's second
    call, so that call's field is the block's; the first call (after conv1 + bn1) sees less."""
    from featviz.maps.receptive import ReceptiveFields

    fields = ReceptiveFields(resnet, separable=False)
    positions = [(0, 0), (3, 4)]
    second = fields.fields("layer1.0.relu@2", (SIDE, SIDE), positions)
    assert second == fields.fields("layer1.0", (SIDE, SIDE), positions)
    first = fields.fields("layer1.0.relu@1", (SIDE, SIDE), positions)
    assert first == fields.fields("layer1.0.bn1", (SIDE, SIDE), positions)
    inner = first[(3, 4)]
    outer = second[(3, 4)]
    assert (outer.bottom - outer.top) > (inner.bottom - inner.top)
