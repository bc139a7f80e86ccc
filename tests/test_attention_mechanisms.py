"""Tests for the attention a network learned and the attention definitions of issue 5: SE gates
(torchvision's ``SqueezeExcitation`` and users' own blocks), CBAM in its order, and FcaNet's
multi-spectral (DCT) channel attention, through the Python API, ``show``, ``export`` and
``layers``.

Every expected value is computed here from the papers' formulas, on tensors the test captured
or made itself; featviz's functions are never used to compute what they are checked against.
Models: the seeded ones of ``semodels`` and torchvision's with ``weights=None``, each torchvision
model built once for the module.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn
from torchvision.ops import SqueezeExcitation

import featviz
import semodels
from featviz.capture.gates import CHANNEL_KINDS, Gate, find_gates, gate_for, probe_input
from featviz.capture.layers import LayerRef
from featviz.cli.main import main
from featviz.errors import LayerError, UsageError
from featviz.maps.attention import (
    FCANET_TOP16,
    channel_attention,
    dct_basis,
    dct_basis_1d,
    dct_channel_attention,
    parse_frequencies,
    scale_frequencies,
)
from featviz.models.build import LoadedModel, Preprocess, load_model
from featviz.output.pipeline import LayerResult, RenderOptions, Visualizer

pytestmark = pytest.mark.filterwarnings("error")

TINY_SE = ["--model", "semodels:tiny_se", "--weights", "none"]
FIXED_CBAM = ["--model", "semodels:fixed_cbam", "--weights", "none"]
FIXED_DCT = ["--model", "semodels:fixed_dct", "--weights", "none"]

#: FcaNet's code, ``get_freq_indices('top16')``, typed in from the paper's repository.
PAPER_TOP16_X = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2]
PAPER_TOP16_Y = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2]

SE_COUNTS = {"efficientnet_b0": 16, "mobilenet_v3_small": 9, "regnet_y_400mf": 16}
SMALL = 64  # input side for torchvision's models: every SE block still sees a feature map
SMALL_ARGS = ["--resize", str(SMALL), "--crop", str(SMALL)]


# --------------------------------------------------------------------------------------------
# helpers: everything the tests compare against is computed here
# --------------------------------------------------------------------------------------------


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def read_png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def read_attention(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "attention.npz") as raw:
        return {name: raw[name] for name in raw.files}


def hand_minmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    low = x.amin(dim=dim, keepdim=True)
    high = x.amax(dim=dim, keepdim=True)
    return (x - low) / (high - low)


def hand_se_gate(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 act: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
                 scale: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> torch.Tensor:
    """SENet: g = scale(W2 act(W1 GAP(x) + b1) + b2), x (N, C, H, W) -> (N, C), in float64."""
    z = x.double().mean(dim=(2, 3))
    hidden = act(z @ w1.double().reshape(w1.shape[0], -1).T + b1.double())
    return scale(hidden @ w2.double().reshape(w2.shape[0], -1).T + b2.double())


def my_dct_basis(u: int, v: int, height: int, width: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II basis image, float64 (H, W), straight from the formula."""
    h = torch.arange(height, dtype=torch.float64)
    w = torch.arange(width, dtype=torch.float64)
    cu = math.sqrt((1.0 if u == 0 else 2.0) / height)
    cv = math.sqrt((1.0 if v == 0 else 2.0) / width)
    return cu * cv * torch.outer(torch.cos(math.pi * u * (h + 0.5) / height),
                                 torch.cos(math.pi * v * (w + 0.5) / width))


def my_full_dct(image: torch.Tensor) -> torch.Tensor:
    """(H, W) -> (H, W) coefficients: c[u, v] = sum_{h,w} image[h, w] B_{u,v}[h, w]."""
    height, width = image.shape
    return torch.tensor([[float((image.double() * my_dct_basis(u, v, height, width)).sum())
                          for v in range(width)] for u in range(height)], dtype=torch.float64)


class InputRecorder:
    """Our own forward pre-hooks: the input each module got on its LAST call."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.handles = [module.register_forward_pre_hook(self._hook(path)) for path, module in modules.items()]

    def _hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.inputs[path] = args[0].detach().clone()

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def recorder() -> Iterator[Callable[[dict[str, nn.Module]], InputRecorder]]:
    made: list[InputRecorder] = []

    def make(modules: dict[str, nn.Module]) -> InputRecorder:
        made.append(InputRecorder(modules))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture(scope="module")
def torchvision_model() -> Callable[[str], LoadedModel]:
    """torchvision models with ``weights=None``, each built once for this module."""
    cache: dict[str, LoadedModel] = {}

    def get(name: str) -> LoadedModel:
        if name not in cache:
            cache[name] = load_model(name, "none")
        return cache[name]

    return get


def tiny_se_gate_by_hand(x: torch.Tensor) -> torch.Tensor:
    """The tiny model's SE gate for its SE input ``x`` (N, 8, H, W), from the weights the test set."""
    return hand_se_gate(x, semodels.se_fc1_weight(), semodels.se_fc1_bias(),
                        semodels.se_fc2_weight(), semodels.se_fc2_bias())


def tile_boxes(count: int, size: int, canvas: np.ndarray, gap: int) -> tuple[list[tuple[int, int]],
                                                                             list[tuple[int, int]]]:
    """Top-left corners of the tiles of the left and right grids of ``se_reweight.png``:
    two grids of ceil(sqrt(K)) columns, 2-pixel padding, below a title strip."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid_w = columns * (size + 2) + 2
    grid_h = rows * (size + 2) + 2
    assert canvas.shape[1] == 2 * grid_w + gap
    header = canvas.shape[0] - grid_h
    assert header > 0
    left = [(2 + (i % columns) * (size + 2), header + 2 + (i // columns) * (size + 2)) for i in range(count)]
    right = [(x + grid_w + gap, y) for x, y in left]
    return left, right


# --------------------------------------------------------------------------------------------
# 1. SE gates of a tiny model whose SE weights the test sets
# --------------------------------------------------------------------------------------------


def test_tiny_se_model_has_the_weights_the_test_set() -> None:
    se = semodels.tiny_se().features[2]
    assert isinstance(se, SqueezeExcitation)
    assert torch.equal(se.fc1.weight.reshape(4, 8), semodels.se_fc1_weight())
    assert torch.equal(se.fc2.bias, semodels.se_fc2_bias())


def test_learned_gate_equals_squeeze_excitation_by_hand(cat_photo: Path, tmp_path: Path, recorder: Any) -> None:
    loaded = load_model("semodels:tiny_se", "none")
    se = loaded.module.features[2]
    size = 24
    visualizer = Visualizer(loaded=loaded, layers=["features.2"],
                            options=RenderOptions(channel="learned", size=size))
    inputs = recorder({"se": se})
    [result] = visualizer.run([cat_photo])

    x = inputs.inputs["se"]  # (1, 8, H, W): what the SE block got, captured by our own hook
    expected = tiny_se_gate_by_hand(x)[0]
    # the gates spread over (0, 1), in an order that is not the channel order
    assert float(expected.min()) < 0.1 and float(expected.max()) > 0.9
    order = sorted(range(8), key=lambda c: -float(expected[c]))
    assert order != list(range(8)) and order != list(range(8))[::-1]

    gate = torch.tensor(result.extra["gate"], dtype=torch.float64)
    assert gate.shape == (8,)
    torch.testing.assert_close(gate, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.channel_weights.double(), expected, atol=1e-6, rtol=1e-5)
    # before = the block's input, after = its output = gate * input
    assert result.before is not None
    torch.testing.assert_close(result.before, x[0])
    torch.testing.assert_close(result.activations.double(), expected[:, None, None] * x[0].double(),
                               atol=1e-6, rtol=1e-5)
    assert result.grid_channels == order  # the grid is sorted by gate, highest first

    # the files: summary, grid in gate order, se_reweight.png
    folder = tmp_path / "out"
    result.save(folder)
    summary = read_summary(folder)
    assert summary["se_block"] == "features.2"
    assert summary["gate_module"] == "features.2.scale_activation"
    assert summary["channel_attention"] == "learned"
    np.testing.assert_allclose(summary["gate"], expected.numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(summary["channel_weights"], expected.numpy(), atol=1e-6, rtol=1e-5)
    assert summary["top_channels"] == order
    assert "se_reweight.png" in summary["files"]

    _, grid = read_png(folder / "grid.png")
    columns = math.ceil(math.sqrt(8))
    for position, channel in enumerate(order):
        x0, y0 = 2 + (position % columns) * (size + 2), 2 + (position // columns) * (size + 2)
        _, tile = read_png(folder / "channels" / f"{channel:04d}.png")
        assert np.array_equal(grid[y0:y0 + size, x0:x0 + size], tile), f"grid position {position}"

    # se_reweight.png: before (left) and after (right), in gate order, on ONE shared scale
    mode, canvas = read_png(folder / "se_reweight.png")
    assert mode == "L"
    pixels = canvas.astype(int)
    left, right = tile_boxes(8, size, canvas, gap=16)
    before = F.interpolate(x.double(), size=(size, size), mode="bilinear", align_corners=True)[0]
    after = expected[:, None, None] * before
    both = torch.stack([before, after])
    low, high = float(both.min()), float(both.max())
    shared = ((both - low) / (high - low) * 255).numpy()
    for position, channel in enumerate(order):
        for half, corners in enumerate((left, right)):
            x0, y0 = corners[position]
            drawn = pixels[y0:y0 + size, x0:x0 + size]
            assert np.abs(drawn - shared[half, channel]).max() <= 1.01, (half, channel)
    # the channel the gate turned down most is visibly darker after the gate
    lowest = len(order) - 1
    (lx, ly), (rx, ry) = left[lowest], right[lowest]
    before_mean = pixels[ly:ly + size, lx:lx + size].mean()
    after_mean = pixels[ry:ry + size, rx:rx + size].mean()
    assert after_mean < 0.2 * before_mean


def test_learned_gate_through_the_cli(cat_photo: Path, tmp_path: Path, recorder: Any) -> None:
    """``featviz show --model mod:factory --channel learned``: the gates of an independent run of
    the same model (our own preprocessing, our own hook) are in summary.json."""
    from torchvision import transforms

    out = tmp_path / "out"
    result = cli("show", cat_photo, *TINY_SE, "--channel", "learned", "--layer", "features.2",
                 "--size", "16", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    folder = out / "chelsea" / "features.2"
    summary = read_summary(folder)

    model = semodels.tiny_se().eval()
    inputs = recorder({"se": model.features[2]})
    preprocess = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    with Image.open(cat_photo) as photo, torch.no_grad():
        model(preprocess(photo.convert("RGB"))[None])
    expected = tiny_se_gate_by_hand(inputs.inputs["se"])[0]

    np.testing.assert_allclose(summary["gate"], expected.numpy(), atol=1e-4)
    assert summary["se_block"] == "features.2"
    assert summary["channel_attention"] == "learned"
    gates = summary["gate"]
    assert summary["top_channels"] == sorted(range(8), key=lambda c: -gates[c])
    assert (folder / "se_reweight.png").is_file()
    assert "se_reweight.png" in summary["files"]


def test_se_reweight_only_with_learned_attention(cat_photo: Path, tmp_path: Path) -> None:
    loaded = load_model("semodels:tiny_se", "none")
    [result] = Visualizer(loaded=loaded, layers=["features.2"], options=RenderOptions(size=8)).run([cat_photo])
    assert result.before is None
    assert "gate" not in result.summary()
    with pytest.raises(UsageError):
        result.se_reweight()
    written = result.save(tmp_path / "out")
    assert not any(path.name == "se_reweight.png" for path in written)


# --------------------------------------------------------------------------------------------
# 2. users' own SE blocks are recognised; plain blocks are not
# --------------------------------------------------------------------------------------------


def test_user_se_blocks_are_found_and_their_gates_captured(cat_photo: Path, recorder: Any) -> None:
    loaded = load_model("semodels:user_se", "none")
    model = loaded.module
    blocks = channel_gates(model)
    assert [(b.path, b.source) for b in blocks] == [("features.2", "features.2.gate"),
                                                    ("features.4", "features.4.sigmoid")]
    assert blocks[0].module is model.features[2] and model.get_submodule(blocks[0].source) is model.features[2].gate

    visualizer = Visualizer(loaded=loaded, layers=["features.2", "features.4"],
                            options=RenderOptions(channel="learned", size=8))
    inputs = recorder({"conv": model.features[2], "linear": model.features[4]})
    conv_result, linear_result = visualizer.run([cat_photo])

    conv_se, linear_se = model.features[2], model.features[4]
    for result, key, path, fc1, fc2, channels in (
        (conv_result, "conv", "features.2", conv_se.reduce, conv_se.expand, 8),
        (linear_result, "linear", "features.4", linear_se.fc1, linear_se.fc2, 6),
    ):
        x = inputs.inputs[key]
        expected = hand_se_gate(x, fc1.weight.detach(), fc1.bias.detach(), fc2.weight.detach(), fc2.bias.detach())[0]
        gate = torch.tensor(result.extra["gate"], dtype=torch.float64)
        assert gate.shape == (channels,)
        torch.testing.assert_close(gate, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(result.before, x[0])
        assert result.extra["se_block"] == path


def test_se_input_is_captured_before_an_in_place_gate(cat_photo: Path, recorder: Any) -> None:
    """A block that multiplies its input in place (``x.mul_(g)``) must still show the features
    BEFORE the gate on the left of se_reweight."""

    class InPlaceSE(semodels.UserSE):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(self.gate(self.expand(self.act(self.reduce(self.pool(x))))))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), InPlaceSE(8))
    loaded = LoadedModel(model, "inplace", "none", Preprocess(), torch.device("cpu"))
    visualizer = Visualizer(loaded=loaded, layers=["2"], options=RenderOptions(channel="learned", size=8))
    inputs = recorder({"se": model[2]})
    [result] = visualizer.run([cat_photo])
    x = inputs.inputs["se"][0]
    torch.testing.assert_close(result.before, x)
    gate = torch.tensor(result.extra["gate"])
    torch.testing.assert_close(result.activations, gate[:, None, None] * x)


def channel_gates(model: nn.Module, example: torch.Tensor | None = None) -> list[Gate]:
    """The learned channel gates featviz finds in ``model`` (one probe pass on seeded noise)."""
    found = find_gates(model, probe_input(model, 32, 32) if example is None else example)
    return [gate for gate in found if gate.kind == "channel"]


class Chain(nn.Module):
    """Runs its children one after the other (not an ``nn.Sequential``); with ``scale``, returns
    its input times the chain's result, as an SE block does."""

    def __init__(self, *layers: nn.Module, scale: bool = False) -> None:
        super().__init__()
        self.scale = scale
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.children():
            y = layer(y)
        return x * y if self.scale else y


@pytest.mark.parametrize("layers", [
    pytest.param(lambda: [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()], id="conv-bn-relu"),
    pytest.param(lambda: [nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 8, 1), nn.ReLU()], id="no-sigmoid"),
    pytest.param(lambda: [nn.Conv2d(8, 2, 3), nn.ReLU(), nn.Conv2d(2, 8, 3), nn.Sigmoid()], id="3x3-convs"),
    pytest.param(lambda: [nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 2, 1), nn.Sigmoid()], id="one-projection"),
    pytest.param(lambda: [nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 1), nn.Sigmoid()], id="c-to-other-c"),
    pytest.param(lambda: [nn.Sigmoid()], id="lone-sigmoid"),
])
def test_plain_blocks_are_not_se_blocks(layers: Callable[[], list[nn.Module]]) -> None:
    """A block whose output is not its input times a gate is no SE block, sigmoid or not."""
    torch.manual_seed(0)
    assert channel_gates(nn.Sequential(nn.Conv2d(3, 8, 3), Chain(*layers()))) == []
    # the control: an SE block's chain, applied as x * chain(x), is found
    se = Chain(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 8, 1), nn.Sigmoid(), scale=True)
    assert [(g.path, g.source) for g in channel_gates(nn.Sequential(nn.Conv2d(3, 8, 3), se))] == [("1", "1.4")]


class GateBySequential(nn.Module):
    """SE done in the parent: ``x * self.se(x)`` with ``se`` an nn.Sequential ending in a sigmoid.
    The Sequential outputs the gate itself (N, C, 1, 1), never the reweighted features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 8, 1),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.se(x)


def test_a_sequential_gate_is_not_taken_for_a_whole_se_block() -> None:
    """Taking ``se`` for a block would draw its 1x1 gate as the features "after the gate"."""
    torch.manual_seed(0)
    model = GateBySequential()
    assert channel_gates(model) == []
    loaded = LoadedModel(model, "gate_by_sequential", "none", Preprocess(), torch.device("cpu"))
    with pytest.raises(LayerError, match="no squeeze-and-excitation blocks"):
        Visualizer(loaded=loaded, layers=["se"], options=RenderOptions(channel="learned"))


def test_no_se_block_in_resnet18() -> None:
    from torchvision.models import get_model

    model = get_model("resnet18", weights=None)
    assert find_gates(model, probe_input(model, 32, 32)) == []


def test_se_block_classes_are_recognised_directly() -> None:
    example = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    [se] = channel_gates(SqueezeExcitation(16, 4), example)  # a block at the root of the model
    assert (se.path, se.source, se.function) == ("", "scale_activation", "sigmoid")
    [user] = channel_gates(semodels.UserSE(16, 4), example)
    assert (user.path, user.source) == ("", "gate")


# --------------------------------------------------------------------------------------------
# 3. torchvision's SE models: every block found, every gate of shape C
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SE_COUNTS))
def test_every_torchvision_se_block_is_found_and_gated(name: str, torchvision_model: Callable[[str], LoadedModel],
                                                       cat_photo: Path, recorder: Any) -> None:
    loaded = torchvision_model(name)
    model = loaded.module
    instances = [path for path, module in model.named_modules() if isinstance(module, SqueezeExcitation)]
    assert len(instances) == SE_COUNTS[name]
    blocks = channel_gates(model, probe_input(model, SMALL, SMALL))
    assert [b.path for b in blocks] == instances
    assert all(b.source == f"{b.path}.scale_activation" for b in blocks)

    visualizer = Visualizer(loaded=loaded, layers=instances, options=RenderOptions(channel="learned", size=8),
                            resize=SMALL, crop=SMALL)
    assert [ref.path for ref in visualizer.layers] == instances
    inputs = recorder({path: model.get_submodule(path) for path in instances})
    results = visualizer.run([cat_photo])
    assert [r.layer.path for r in results] == instances
    for result in results:
        block = model.get_submodule(result.layer.path)
        channels = block.fc1.in_channels
        x = inputs.inputs[result.layer.path]
        assert x.shape[1] == channels
        gate = torch.tensor(result.extra["gate"], dtype=torch.float64)
        assert gate.shape == (channels,), result.layer.path
        assert result.activations.shape[0] == channels
        assert result.extra["se_block"] == result.layer.path
        expected = hand_se_gate(x, block.fc1.weight.detach(), block.fc1.bias.detach(),
                                block.fc2.weight.detach(), block.fc2.bias.detach(),
                                act=block.activation, scale=block.scale_activation)[0]
        torch.testing.assert_close(gate, expected, atol=1e-5, rtol=1e-4)
        assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0
        torch.testing.assert_close(result.before, x[0])
        torch.testing.assert_close(result.activations.double(), gate[:, None, None] * x[0].double(),
                                   atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# 4. --channel learned where there is no block; a layer that contains one
# --------------------------------------------------------------------------------------------


def test_learned_at_a_layer_without_a_block_names_the_nearest(torchvision_model: Callable[[str], LoadedModel]) -> None:
    loaded = torchvision_model("mobilenet_v3_small")
    with pytest.raises(LayerError) as caught:
        Visualizer(loaded=loaded, layers=["features.0"], options=RenderOptions(channel="learned"),
                   resize=SMALL, crop=SMALL)
    assert "features.0" in caught.value.message
    assert "squeeze-and-excitation" in caught.value.message
    assert caught.value.hint is not None and "features.1.block.1" in caught.value.hint


def test_learned_at_a_layer_without_a_block_exits_2(cat_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("show", cat_photo, "--model", "mobilenet_v3_small", "--weights", "none", *SMALL_ARGS,
                 "--channel", "learned", "--layer", "features.0", "--out", out, "--quiet")
    assert result.exit_code == 2
    assert "features.1.block.1" in result.stderr
    assert "Traceback" not in result.output
    assert not (out / "chelsea").exists()


def test_learned_on_a_model_without_se_blocks_exits_2(cat_photo: Path, tmp_path: Path) -> None:
    result = cli("show", cat_photo, "--model", "alexnet", "--weights", "none", *SMALL_ARGS, "--channel", "learned",
                 "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 2
    assert "alexnet has no squeeze-and-excitation blocks" in result.stderr


def test_learned_at_a_containing_layer_uses_the_block_inside(torchvision_model: Callable[[str], LoadedModel],
                                                             cat_photo: Path, tmp_path: Path) -> None:
    loaded = torchvision_model("mobilenet_v3_small")
    visualizer = Visualizer(loaded=loaded, layers=["features.1"], options=RenderOptions(channel="learned", size=8),
                            resize=SMALL, crop=SMALL)
    assert [ref.path for ref in visualizer.layers] == ["features.1.block.1"]
    [result] = visualizer.run([cat_photo])
    assert result.extra["se_block"] == "features.1.block.1"
    assert len(result.extra["gate"]) == 16
    # by index too: feature-stack layer 1 is features.1
    by_index = Visualizer(loaded=loaded, layers=[1], options=RenderOptions(channel="learned"), resize=SMALL, crop=SMALL)
    assert [r.path for r in by_index.layers] == ["features.1.block.1"]


def test_learned_at_a_layer_with_several_blocks_uses_the_last(torchvision_model: Callable[[str], LoadedModel]) -> None:
    model = torchvision_model("efficientnet_b0").module
    gates = channel_gates(model, probe_input(model, SMALL, SMALL))
    inside = [b.path for b in gates if b.path.startswith("features.2.")]
    assert inside == ["features.2.0.block.2", "features.2.1.block.2"]
    chosen = gate_for(gates, model, LayerRef("features.2", 2, model.features[2]), CHANNEL_KINDS, "efficientnet_b0",
                      "--channel learned")
    assert chosen.path == "features.2.1.block.2"


# --------------------------------------------------------------------------------------------
# 5. featviz layers marks the SE blocks
# --------------------------------------------------------------------------------------------


def test_layers_marks_se_blocks() -> None:
    expected = [path for path, module in semodels_free_mobilenet().named_modules()
                if isinstance(module, SqueezeExcitation)]
    assert len(expected) == 9

    listing = cli("layers", "--model", "mobilenet_v3_small", "--weights", "none", *SMALL_ARGS, "--all")
    assert listing.exit_code == 0, listing.output
    marked = [line.split()[1] if line.split()[0].isdigit() else line.split()[0]
              for line in listing.output.splitlines() if line.endswith("[SE block]")]
    assert marked == expected

    document = cli("layers", "--model", "mobilenet_v3_small", "--weights", "none", *SMALL_ARGS, "--all", "--json")
    assert document.exit_code == 0, document.output
    data = json.loads(document.output)
    assert data["se_blocks"] == expected
    assert [row["path"] for row in data["layers"] if row["se_block"]] == expected

    short = cli("layers", "--model", "mobilenet_v3_small", "--weights", "none", *SMALL_ARGS)
    assert short.exit_code == 0
    assert "9 squeeze-and-excitation blocks" in short.output

    plain = json.loads(cli("layers", "--model", "semodels:fixed_cbam", "--weights", "none", "--json").output)
    assert plain["se_blocks"] == []


def semodels_free_mobilenet() -> nn.Module:
    from torchvision.models import get_model

    return get_model("mobilenet_v3_small", weights=None)


# --------------------------------------------------------------------------------------------
# 6. CBAM, in its order
# --------------------------------------------------------------------------------------------


def cbam_by_hand(activations: torch.Tensor, spatial: str) -> dict[str, torch.Tensor]:
    """CBAM without its learned layers, for A (C, H, W): channel statistic mean_hw + max_hw,
    w its min-max over channels, F' = w A, spatial pooling of F' over channels."""
    a = activations.double()
    statistic = a.mean(dim=(1, 2)) + a.amax(dim=(1, 2))
    w = hand_minmax(statistic, 0)
    refined = w[:, None, None] * a
    maps = {"mean": refined.mean(dim=0), "max": refined.amax(dim=0),
            "meanmax": (refined.mean(dim=0) + refined.amax(dim=0)) / 2}
    return {"statistic": statistic, "w": w, "refined": refined, "spatial": maps[spatial],
            "channel_map": (w[:, None, None] * a).sum(dim=0)}


@pytest.mark.parametrize("spatial", [None, "mean", "max"])
def test_cbam_order_through_the_cli(spatial: str | None, cat_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = [] if spatial is None else ["--spatial", spatial]
    result = cli("show", cat_photo, *FIXED_CBAM, "--attention", "cbam", *extra, "--save-raw",
                 "--size", "16", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    folder = out / "chelsea" / "features.0"
    summary = read_summary(folder)
    expected = cbam_by_hand(semodels.random_activations(*semodels.CBAM_SHAPE, seed=11)[0], spatial or "meanmax")

    assert summary["attention_order"] == "cbam"
    assert summary["spatial_attention"] == (spatial or "meanmax")
    assert summary["channel_attention"] == "cbam"
    raw = read_attention(folder)
    assert raw["spatial"].shape == semodels.CBAM_SHAPE[1:]
    assert raw["channel"].shape == (semodels.CBAM_SHAPE[0],)
    np.testing.assert_allclose(raw["spatial"], expected["spatial"].numpy(), atol=1e-5)
    np.testing.assert_allclose(raw["channel"], expected["statistic"].numpy(), atol=1e-5)
    np.testing.assert_allclose(summary["channel_weights"], expected["w"].numpy(), atol=1e-6)
    assert summary["top_channels"] == sorted(range(6), key=lambda c: -float(expected["w"][c]))[:10]


def test_cbam_order_through_the_api(cat_photo: Path) -> None:
    loaded = load_model("semodels:fixed_cbam", "none")
    activations = semodels.random_activations(*semodels.CBAM_SHAPE, seed=11)[0]
    [cbam] = Visualizer(loaded=loaded, layers=[0], options=RenderOptions(attention="cbam", size=8)).run([cat_photo])
    [separate] = Visualizer(loaded=loaded, layers=[0], options=RenderOptions(size=8)).run([cat_photo])
    expected = cbam_by_hand(activations, "meanmax")

    torch.testing.assert_close(cbam.activations, activations)  # the captured A is ours
    torch.testing.assert_close(cbam.spatial_raw.double(), expected["spatial"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cbam.channel_weights.double(), expected["w"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cbam.channel_map_raw.double(), expected["channel_map"], atol=1e-5, rtol=1e-5)
    # what spatial_attention.png shows: the refined map, min-max scaled
    torch.testing.assert_close(cbam.spatial.double(), hand_minmax(expected["spatial"].flatten(), 0).reshape(5, 7),
                               atol=1e-5, rtol=1e-5)
    # the separate order's map is the mean over the RAW features, and differs
    torch.testing.assert_close(separate.spatial_raw.double(), activations.double().mean(dim=0), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(cbam.spatial, separate.spatial, atol=1e-3)
    assert not np.array_equal(np.asarray(cbam.spatial_overlay()), np.asarray(separate.spatial_overlay()))


@pytest.mark.parametrize("channel", ["dct", "learned"])
def test_cbam_order_refuses_other_channel_attention(channel: str, cat_photo: Path, tmp_path: Path) -> None:
    result = cli("show", cat_photo, *FIXED_CBAM, "--attention", "cbam", "--channel", channel,
                 "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 2
    assert "--attention cbam" in result.stderr
    assert not (tmp_path / "out" / "chelsea").exists()


# --------------------------------------------------------------------------------------------
# 7. FcaNet's DCT channel attention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(7, 7), (4, 6), (9, 5)])
def test_dct_basis_is_orthonormal_and_is_the_formula(height: int, width: int) -> None:
    bases = torch.stack([dct_basis(u, v, height, width).double().flatten()
                         for u in range(height) for v in range(width)])
    assert bases.shape == (height * width, height * width)
    torch.testing.assert_close(bases @ bases.T, torch.eye(height * width, dtype=torch.float64), atol=1e-5, rtol=0)
    for u, v in [(0, 0), (1, 0), (0, width - 1), (height - 1, 2)]:
        torch.testing.assert_close(dct_basis(u, v, height, width).double(), my_dct_basis(u, v, height, width),
                                   atol=1e-6, rtol=0)
    for frequency in range(width):
        expected = my_dct_basis(0, frequency, 1, width)[0]  # a 1 x W image is the 1-D basis
        torch.testing.assert_close(torch.tensor(dct_basis_1d(frequency, width), dtype=torch.float64), expected,
                                   atol=1e-12, rtol=0)


def test_dct_at_zero_frequency_is_the_se_squeeze() -> None:
    activations = torch.randn(2, 5, 6, 9, generator=torch.Generator().manual_seed(3))
    expected = math.sqrt(6 * 9) * activations.double().mean(dim=(2, 3))
    torch.testing.assert_close(dct_channel_attention(activations, [(0, 0)]).double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(channel_attention(activations, "dct", [(0, 0)]).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(7, 10), (6, 6)])
@pytest.mark.parametrize(("u", "v"), [(0, 0), (1, 0), (0, 3), (2, 3), (5, 5)])
def test_pure_cosine_peaks_at_its_frequency(height: int, width: int, u: int, v: int) -> None:
    h = torch.arange(height, dtype=torch.float64)[:, None]
    w = torch.arange(width, dtype=torch.float64)[None, :]
    cosine = torch.cos(math.pi * u * (h + 0.5) / height) * torch.cos(math.pi * v * (w + 0.5) / width)
    full = my_full_dct(cosine)
    assert divmod(int(full.abs().argmax()), width) == (u, v)  # our own DCT: the peak is (u, v)

    # featviz: one channel per frequency (below 7 pixels no frequency is rescaled), each holding
    # the cosine; channel g's statistic is the coefficient at frequency g
    frequencies = [(a, b) for a in range(height) for b in range(width)]
    assert scale_frequencies(frequencies, height, width) == frequencies
    stack = cosine.float().expand(len(frequencies), height, width)[None]
    statistic = dct_channel_attention(stack, frequencies)[0].double()
    torch.testing.assert_close(statistic, full.flatten(), atol=1e-4, rtol=0)
    assert frequencies[int(statistic.abs().argmax())] == (u, v)


def test_fcanet_top16_is_the_papers_and_scales_like_its_code() -> None:
    assert list(FCANET_TOP16) == list(zip(PAPER_TOP16_X, PAPER_TOP16_Y, strict=True))
    assert parse_frequencies("top16") == FCANET_TOP16
    for height, width in [(14, 14), (28, 28), (56, 56), (7, 7), (28, 14)]:
        expected = [(x * (height // 7), y * (width // 7)) for x, y in zip(PAPER_TOP16_X, PAPER_TOP16_Y, strict=True)]
        assert scale_frequencies(FCANET_TOP16, height, width) == expected, (height, width)


def test_dct_channel_groups_follow_fcanet() -> None:
    """C = 32 with 16 frequencies: channels 2g and 2g + 1 take frequency g (on 14x14: scaled x2)."""
    activations = torch.randn(1, 32, 14, 14, generator=torch.Generator().manual_seed(4))
    bases = [my_dct_basis(2 * x, 2 * y, 14, 14) for x, y in zip(PAPER_TOP16_X, PAPER_TOP16_Y, strict=True)]
    expected = torch.tensor([float((activations[0, c].double() * bases[c // 2]).sum()) for c in range(32)],
                            dtype=torch.float64)
    torch.testing.assert_close(channel_attention(activations, "dct")[0].double(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dct_channel_attention(activations)[0].double(), expected, atol=1e-4, rtol=1e-5)


def test_dct_through_the_cli_records_its_frequencies(cat_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("show", cat_photo, *FIXED_DCT, "--channel", "dct", "--dct-frequencies", "0,0;1,1",
                 "--save-raw", "--size", "8", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    folder = out / "chelsea" / "features.0"
    summary = read_summary(folder)
    assert summary["channel_attention"] == "dct"
    assert summary["dct_frequencies"] == [[0, 0], [1, 1]]
    assert summary["dct_frequencies_scaled"] == [[0, 0], [2, 2]]  # 14x14 layer: u * (14 // 7)

    a = semodels.random_activations(*semodels.DCT_SHAPE, seed=12)[0].double()
    dc, diagonal = my_dct_basis(0, 0, 14, 14), my_dct_basis(2, 2, 14, 14)
    expected = torch.tensor([float((a[c] * (dc if c < 16 else diagonal)).sum()) for c in range(32)],
                            dtype=torch.float64)
    np.testing.assert_allclose(read_attention(folder)["channel"], expected.numpy(), atol=1e-4)
    torch.testing.assert_close(expected[:16], 14 * a[:16].mean(dim=(1, 2)), atol=1e-9, rtol=0)  # DC = sqrt(HW) x GAP
    np.testing.assert_allclose(summary["channel_weights"], hand_minmax(expected, 0).numpy(), atol=1e-5)


def test_dct_default_frequencies_are_fcanet_top16(cat_photo: Path) -> None:
    loaded = load_model("semodels:fixed_dct", "none")
    [result] = Visualizer(loaded=loaded, layers=[0], options=RenderOptions(channel="dct", size=8)).run([cat_photo])
    assert result.extra["dct_frequencies"] == [list(f) for f in zip(PAPER_TOP16_X, PAPER_TOP16_Y, strict=True)]
    assert result.extra["dct_frequencies_scaled"] == [[2 * x, 2 * y]
                                                      for x, y in zip(PAPER_TOP16_X, PAPER_TOP16_Y, strict=True)]


@pytest.mark.parametrize("text", ["x", "1", "1,2,3", "a,b", "0,0;1,-1", "7,0", "0,0;2,9"])
def test_bad_dct_frequencies(text: str, cat_photo: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        parse_frequencies(text)
    result = cli("show", cat_photo, *FIXED_DCT, "--channel", "dct", "--dct-frequencies", text,
                 "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 2
    assert "DCT frequency" in result.stderr


def test_parse_frequencies() -> None:
    assert parse_frequencies("0,0;1,1") == ((0, 0), (1, 1))
    assert parse_frequencies(" 0, 1 ; 6,0; ") == ((0, 1), (6, 0))
    assert parse_frequencies("6,6") == ((6, 6),)  # the last cell of the 7x7 grid
    assert parse_frequencies(None) is None


def test_dct_frequencies_need_channel_dct(cat_photo: Path, tmp_path: Path) -> None:
    result = cli("show", cat_photo, *FIXED_DCT, "--dct-frequencies", "0,0;1,1", "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 2
    assert "--dct-frequencies needs --channel dct" in result.stderr
    with pytest.raises(UsageError):
        RenderOptions(channel="se", dct_frequencies=((0, 0),)).validate()


# --------------------------------------------------------------------------------------------
# 8. the same modes through featviz export
# --------------------------------------------------------------------------------------------


@pytest.fixture
def two_photos(tmp_path: Path, sample_photos: list[Path]) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    chosen = [p for p in sample_photos if p.stem in ("chelsea", "coffee")]
    assert len(chosen) == 2
    for photo in chosen:
        shutil.copy(photo, folder / photo.name)
    return folder


def read_manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_export_learned(two_photos: Path, tmp_path: Path, recorder: Any) -> None:
    out = tmp_path / "out"
    result = cli("export", two_photos, *TINY_SE, "--channel", "learned", "--layer", "features.2",
                 "--size", "8", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    records = read_manifest(out)
    assert sorted((r["key"], r["status"], r["layer"]) for r in records) == [
        ("chelsea", "ok", "features.2"), ("coffee", "ok", "features.2")]

    # the gates of each photo, by hand from our own run of the same model on featviz's input
    loaded = load_model("semodels:tiny_se", "none")
    visualizer = Visualizer(loaded=loaded, layers=["features.2"], options=RenderOptions(channel="learned"))
    inputs = recorder({"se": loaded.module.features[2]})
    for name in ("chelsea", "coffee"):
        prepared = visualizer.prepare(two_photos / f"{name}.jpg")
        with torch.no_grad():
            loaded.module.eval()(prepared.tensor[None])
        expected = tiny_se_gate_by_hand(inputs.inputs["se"])[0]
        folder = out / name / "features.2"
        summary = read_summary(folder)
        np.testing.assert_allclose(summary["gate"], expected.numpy(), atol=1e-6, rtol=1e-5)
        assert summary["se_block"] == "features.2"
        assert summary["top_channels"] == sorted(range(8), key=lambda c: -float(expected[c]))
        assert (folder / "se_reweight.png").is_file()
    assert read_summary(out / "chelsea" / "features.2")["gate"] != read_summary(out / "coffee" / "features.2")["gate"]


def test_export_cbam(two_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("export", two_photos, *FIXED_CBAM, "--attention", "cbam", "--save-raw", "--size", "8",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(r["status"] for r in read_manifest(out)) == ["ok", "ok"]
    expected = cbam_by_hand(semodels.random_activations(*semodels.CBAM_SHAPE, seed=11)[0], "meanmax")
    for name in ("chelsea", "coffee"):
        folder = out / name / "features.0"
        summary = read_summary(folder)
        assert (summary["attention_order"], summary["spatial_attention"], summary["channel_attention"]) == \
            ("cbam", "meanmax", "cbam")
        np.testing.assert_allclose(read_attention(folder)["spatial"], expected["spatial"].numpy(), atol=1e-5)
        np.testing.assert_allclose(summary["channel_weights"], expected["w"].numpy(), atol=1e-6)


def test_learned_and_cbam_results_are_layer_results(cat_photo: Path) -> None:
    """The Python API entry point: featviz.visualize with a factory spec and the new options."""
    import featviz

    [learned] = featviz.visualize(cat_photo, model="semodels:tiny_se", layers=["features.2"], weights="none",
                                  channel="learned", size=8)
    assert isinstance(learned, LayerResult)
    assert learned.extra["se_block"] == "features.2" and len(learned.extra["gate"]) == 8
    [cbam] = featviz.visualize(cat_photo, model="semodels:fixed_cbam", layers=[0], weights="none",
                               attention="cbam", spatial="mean", size=8)
    expected = cbam_by_hand(semodels.random_activations(*semodels.CBAM_SHAPE, seed=11)[0], "mean")
    torch.testing.assert_close(cbam.spatial_raw.double(), expected["spatial"], atol=1e-5, rtol=1e-5)


def test_layer_all_with_learned_channel_attention_means_every_se_block(cat_photo: Path) -> None:
    results = featviz.visualize(cat_photo, model="mobilenet_v3_small", weights="none", layers=["all"],
                                channel="learned", size=8)
    expected = [name for name, module in torchvision.models.mobilenet_v3_small().named_modules()
                if isinstance(module, torchvision.ops.SqueezeExcitation)]
    assert [r.layer.path for r in results] == expected
