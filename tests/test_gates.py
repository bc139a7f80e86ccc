"""Learned attention recognised by structure (issue 11): every timm attention module, torchvision's
SqueezeExcitation and BAM as its authors wrote it. The gates featviz reports must equal each
module's own gate, captured here independently (the test's own hooks and patches)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import timm.layers.cbam
import timm.layers.global_context
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from timm.layers import GatherExcite
from torch import nn

from featviz.capture.gates import find_gates, probe_input
from featviz.cli.main import main
from featviz.errors import LayerError, UsageError
from featviz.models.build import LoadedModel, Preprocess
from featviz.output.pipeline import RenderOptions, Visualizer

SIDE = 64


# --- BAM, as in its authors' code (Jongchan/attention-module, MODELS/bam.py) -----------------

class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):
    def __init__(self, gate_channel: int, reduction_ratio: int = 16, num_layers: int = 1) -> None:
        super().__init__()
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", Flatten())
        gate_channels = [gate_channel] + [gate_channel // reduction_ratio] * num_layers + [gate_channel]
        for i in range(len(gate_channels) - 2):
            self.gate_c.add_module(f"gate_c_fc_{i}", nn.Linear(gate_channels[i], gate_channels[i + 1]))
            self.gate_c.add_module(f"gate_c_bn_{i + 1}", nn.BatchNorm1d(gate_channels[i + 1]))
            self.gate_c.add_module(f"gate_c_relu_{i + 1}", nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(gate_channels[-2], gate_channels[-1]))

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        avg_pool = F.avg_pool2d(in_tensor, in_tensor.size(2), stride=in_tensor.size(2))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(in_tensor)


class SpatialGate(nn.Module):
    def __init__(self, gate_channel: int, reduction_ratio: int = 16, dilation_conv_num: int = 2,
                 dilation_val: int = 4) -> None:
        super().__init__()
        reduced = gate_channel // reduction_ratio
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(gate_channel, reduced, kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(reduced))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module(f"gate_s_conv_di_{i}", nn.Conv2d(reduced, reduced, kernel_size=3,
                                                                       padding=dilation_val, dilation=dilation_val))
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(reduced))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(reduced, 1, kernel_size=1))

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        return self.gate_s(in_tensor).expand_as(in_tensor)


class BAM(nn.Module):
    def __init__(self, gate_channel: int) -> None:
        super().__init__()
        self.channel_att = ChannelGate(gate_channel)
        self.spatial_att = SpatialGate(gate_channel)

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor


def bam_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(), BAM(32), nn.Conv2d(32, 16, 3))
    for module in model.modules():  # BN statistics and weights away from the identity
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.uniform_(0.1, 0.5)  # so that the ReLUs after them pass something
    return model.eval()


# --- the models, and each module's own gate captured by the test ------------------------------

def resnet10t(attn: Any) -> Callable[[], nn.Module]:
    # zero_init_last=False: otherwise each block's last BN starts at 0 and a gate sees only zeros
    return lambda: timm.create_model("resnet10t", block_args={"attn_layer": attn}, zero_init_last=False)


def hook_output(path: str, shape: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Callable[..., Any]:
    """Capture the output of ``path`` (a submodule) in the test's own forward pass."""
    def capture(model: nn.Module, batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = model.get_submodule(path).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
        try:
            with torch.no_grad():
                model(batch)
        finally:
            handle.remove()
        return shape(seen[0])
    return capture


def patch_first_call(namespace: Any, name: str, shape: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    """Capture the first result of ``namespace.name(...)`` (a functional gate) in the test's pass."""
    def capture(model: nn.Module, batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
        original, seen = getattr(namespace, name), []

        def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(*args, **kwargs)
            seen.append(out.detach().clone())
            return out
        with monkeypatch.context() as patch:
            patch.setattr(namespace, name, spy)
            with torch.no_grad():
                model(batch)
        return shape(seen[0])
    return capture


def bam_gate(model: nn.Module, batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """σ(M_c * M_s) from the outputs of BAM's two branches (as its forward computes it)."""
    c = hook_output("2.channel_att")(model, batch, monkeypatch)
    s = hook_output("2.spatial_att")(model, batch, monkeypatch)
    return torch.sigmoid(c * s)


def flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def spatial(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], SIDE // 4, SIDE // 4)


# id: (model, option, layer, expected owner, owner class, kind, function, the module's own gate)
CASES: dict[str, tuple[Any, ...]] = {
    "se": (resnet10t("se"), "channel", "layer1", "layer1.0.se", "SEModule", "channel", "sigmoid",
           hook_output("layer1.0.se.gate", flat)),
    "ese": (resnet10t("ese"), "channel", "layer1.0.se", "layer1.0.se", "EffectiveSEModule", "channel", "hardsigmoid",
            hook_output("layer1.0.se.gate", flat)),
    "eca": (resnet10t("eca"), "channel", "layer1", "layer1.0.se", "EcaModule", "channel", "sigmoid",
            hook_output("layer1.0.se.gate", flat)),
    "ceca": (resnet10t("ceca"), "channel", "layer1", "layer1.0.se", "CecaModule", "channel", "sigmoid",
             hook_output("layer1.0.se.gate", flat)),
    "cbam-channel": (resnet10t("cbam"), "channel", "layer1", "layer1.0.se.channel", "ChannelAttn", "channel",
                     "sigmoid", hook_output("layer1.0.se.channel.gate", flat)),
    "cbam-spatial": (resnet10t("cbam"), "spatial", "layer1", "layer1.0.se.spatial", "SpatialAttn", "spatial",
                     "sigmoid", hook_output("layer1.0.se.spatial.gate", spatial)),
    "lcbam-channel": (resnet10t("lcbam"), "channel", "layer1.0.se", "layer1.0.se.channel", "LightChannelAttn",
                      "channel", "sigmoid", patch_first_call(timm.layers.cbam.F, "sigmoid", flat)),
    "lcbam-spatial": (resnet10t("lcbam"), "spatial", "layer1.0.se", "layer1.0.se.spatial", "LightSpatialAttn",
                      "spatial", "sigmoid", hook_output("layer1.0.se.spatial.gate", spatial)),
    "ge": (resnet10t(partial(GatherExcite, use_mlp=False)), "channel", "layer1", "layer1.0.se", "GatherExcite",
           "channel", "sigmoid", hook_output("layer1.0.se.gate", flat)),
    "ge-extent": (resnet10t(partial(GatherExcite, use_mlp=False, extent=2)), "channel", "layer1", "layer1.0.se",
                  "GatherExcite", "3d", "sigmoid", hook_output("layer1.0.se.gate", lambda t: t.mean(dim=(2, 3)))),
    "gc": (resnet10t("gc"), "channel", "layer1", "layer1.0.se", "GlobalContext", "channel", "sigmoid",
           hook_output("layer1.0.se.gate", flat)),
    "gca-context": (resnet10t("gca"), "spatial", "layer1", "layer1.0.se", "GlobalContext", "context", "softmax",
                    patch_first_call(timm.layers.global_context.F, "softmax",
                                     lambda t: spatial(t) / spatial(t).flatten(1).amax(1)[:, None, None])),
    "bam-channel": (bam_net, "channel", "2", "2", "BAM", "3d", "sigmoid",
                    lambda *a: bam_gate(*a).mean(dim=(2, 3))),
    "bam-spatial": (bam_net, "spatial", "2", "2", "BAM", "3d", "sigmoid",
                    lambda *a: bam_gate(*a).mean(dim=1)),
}


def photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_gates_equal_the_modules_own_gate(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build, option, layer, owner, cls, kind, function, own_gate = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    loaded = LoadedModel(model, case, "none", Preprocess(resize=SIDE, crop=SIDE), torch.device("cpu"))
    options = RenderOptions(size=8, save_raw=True, **({"channel": "learned"} if option == "channel" else
                                                      {"spatial": "learned"}))
    visualizer = Visualizer(loaded=loaded, layers=[layer], options=options)
    result = visualizer.run(photo(tmp_path))[0]
    batch = visualizer.preprocess(Image.open(photo(tmp_path)).convert("RGB"))[None]
    expected = own_gate(model, batch, monkeypatch)[0].double()
    if option == "channel":
        assert result.layer.path == owner and type(result.layer.module).__name__ == cls
        assert result.extra["gate_kind"] == kind and result.extra["se_block"] == owner
        actual = torch.tensor(result.extra["gate"], dtype=torch.float64)
        assert result.before is not None
    else:
        assert result.extra["spatial_gate"] == owner and result.extra["spatial_gate_kind"] == kind
        actual = result.spatial_raw.double()
        assert float(actual.min()) >= 0 and float(actual.max()) <= 1
        torch.testing.assert_close(result.spatial.double(), actual.clamp(0, 1))  # drawn as computed, no rescaling
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert float(expected.std()) > 1e-4  # a gate that varies, so the comparison means something
    gate = next(g for g in find_gates(model, probe_input(model, SIDE, SIDE)) if g.path == owner and g.kind == kind)
    assert gate.function == function and gate.offset == (1.0 if cls == "BAM" else 0.0)
    if kind == "3d":  # --save-raw holds the full gate
        data = np.load(result.save(tmp_path / "out")[0].parent / "attention.npz")
        assert data["gate_3d"].shape == tuple(result.activations.shape)


@pytest.mark.parametrize("name, owner, cls, branches, own", [
    ("skresnet18", "layer1.0.conv1", "SelectiveKernel", 2, "layer1.0.conv1.attn"),  # (N, R, C, 1, 1)
    ("resnest14d", "layer1.0.conv2", "SplitAttn", 2, "layer1.0.conv2.rsoftmax")])  # (N, R * C)
def test_branch_attention_is_recognised_with_its_branch_weights(name: str, owner: str, cls: str, branches: int,
                                                               own: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    gates = find_gates(model, probe_input(model, SIDE, SIDE))
    assert {type(g.module).__name__ for g in gates} == {cls} and {g.kind for g in gates} == {"branch"}
    first = gates[0]
    assert first.path == owner and first.branches == branches and first.function == "softmax"
    loaded = LoadedModel(model, name, "none", Preprocess(resize=SIDE, crop=SIDE), torch.device("cpu"))
    visualizer = Visualizer(loaded=loaded, layers=["layer1.0"], options=RenderOptions(channel="learned", size=8))
    result = visualizer.run(photo(tmp_path))[0]
    assert result.layer.path == owner and result.before is None
    batch = visualizer.preprocess(Image.open(photo(tmp_path)).convert("RGB"))[None]
    expected = hook_output(own)(model, batch, monkeypatch).reshape(1, branches, -1)[0]  # (R, C)
    torch.testing.assert_close(result.raw_gates["branch_weights"], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.channel_weights, expected[0], atol=1e-6, rtol=1e-5)  # w = branch 0's share
    files = {path.name: path for path in result.save(tmp_path / "out")}
    rows = files["branch_weights.csv"].read_text().splitlines()
    assert rows[0] == "channel,branch_0,branch_1" and len(rows) == 1 + expected.shape[1]
    assert [float(v) for v in rows[5].split(",")[1:]] == pytest.approx(expected[:, 4].tolist(), abs=1e-5)
    with Image.open(files["branch_weights.png"]) as picture:
        assert picture.size == (8 * expected.shape[1], 16 * branches)


def test_plain_models_have_no_gates_and_errors_name_the_nearest(tmp_path: Path) -> None:
    plain = timm.create_model("resnet10t")
    assert find_gates(plain, probe_input(plain, SIDE, SIDE)) == []
    model = timm.create_model("resnet10t", block_args={"attn_layer": "cbam"})
    loaded = LoadedModel(model, "cbam-net", "none", Preprocess(resize=SIDE, crop=SIDE), torch.device("cpu"))
    with pytest.raises(LayerError, match="layer conv1 is not and does not contain") as error:
        Visualizer(loaded=loaded, layers=["conv1"], options=RenderOptions(spatial="learned"))
    assert "layer1.0.se.spatial" in error.value.hint
    loaded_plain = LoadedModel(plain, "plain", "none", Preprocess(resize=SIDE, crop=SIDE), torch.device("cpu"))
    with pytest.raises(LayerError, match="has no learned spatial gates"):
        Visualizer(loaded=loaded_plain, layers=["layer1"], options=RenderOptions(spatial="learned"))
    with pytest.raises(UsageError, match="not both"):
        Visualizer(loaded=loaded, layers=["all"], options=RenderOptions(spatial="learned", channel="learned"))
    with pytest.raises(UsageError, match="cannot use --spatial learned"):
        RenderOptions(spatial="learned", attention="cbam").validate()
    every = Visualizer(loaded=loaded, layers=["all"], options=RenderOptions(spatial="learned"))
    assert [r.path for r in every.layers] == [f"layer{i}.0.se.spatial" for i in range(1, 5)]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_cli_marks_attention_modules_and_draws_learned_spatial_gates(tmp_path: Path) -> None:
    kwargs = '{"block_args": {"attn_layer": "cbam"}}'
    runner = CliRunner()
    result = runner.invoke(main, ["layers", "--model", "timm:resnet10t", "--model-kwargs", kwargs, "--weights",
                                  "none", "--all", "--json", "--crop", str(SIDE), "--resize", str(SIDE)])
    marks = json.loads(result.output)["attention_modules"]
    assert marks["layer1.0.se.channel"] == ["channel"] and marks["layer4.0.se.spatial"] == ["spatial"]
    out = tmp_path / "out"
    result = runner.invoke(main, ["show", str(photo(tmp_path)), "--model", "timm:resnet10t", "--model-kwargs", kwargs,
                                  "--weights", "none", "--layer", "layer2", "--spatial", "learned", "--channel",
                                  "learned", "--save-raw", "--size", "8", "--out", str(out), "--crop", str(SIDE),
                                  "--resize", str(SIDE)])
    assert result.exit_code == 0, result.output
    folder = out / "noise" / "layer2.0.se.channel"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["spatial_attention"] == "learned" and summary["spatial_gate"] == "layer2.0.se.spatial"
    data = np.load(folder / "attention.npz")
    assert data["spatial"].shape == (8, 8) and 0 < data["spatial"].min() and data["spatial"].max() < 1
    assert (folder / "spatial_attention.png").is_file() and (folder / "se_reweight.png").is_file()
    result = runner.invoke(main, ["show", str(photo(tmp_path)), "--model", "timm:resnet10t", "--weights", "none",
                                  "--layer", "layer2", "--spatial", "learned", "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "has no learned spatial gates" in result.output
    assert not (tmp_path / "o2").exists()


def test_a_failing_probe_is_a_layer_error_and_leaves_no_hooks() -> None:
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.gate = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv(x) * self.gate(x.mean(1, keepdim=True))  # the gate runs, then the model fails
            raise RuntimeError("this model always fails")

    model = Breaks().train()
    with pytest.raises(LayerError, match="cannot look for learned attention.*always fails"):
        find_gates(model, probe_input(model, 8, 8))
    assert model.training and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
