"""Which layers (``--layer``, ``featviz layers``) and what is captured from them: the seed's own
loop is the reference, hooks never outlive a forward pass, and the pass stops early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import featviz
import tinymodels
from featviz.capture.hooks import ActivationCapture, capture
from featviz.capture.layers import feature_stack, resolve_layers
from featviz.cli.main import main
from featviz.errors import LayerError
from featviz.models.build import load_model
from featviz.output.pipeline import Visualizer
from seedscript import photo_tensor, seed_loop

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def alexnet():
    """AlexNet with random weights (seed 0): built once for this file."""
    return load_model("alexnet", "none", seed=0)


def invoke(args: list[object]):
    return CliRunner().invoke(main, [str(a) for a in args])


def all_hooks(model: nn.Module) -> list[object]:
    hooks: list[object] = []
    for module in model.modules():
        hooks += list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
    return hooks


# --- activations equal the seed's loop --------------------------------------------------------

@pytest.mark.parametrize("k", [0, 3, 10])
def test_alexnet_activations_equal_the_seed_loop(alexnet, cat_photo: Path, k: int) -> None:
    visualizer = Visualizer(layers=[k], loaded=alexnet)
    result = visualizer.run(cat_photo)[0]
    x = photo_tensor(cat_photo)
    expected = seed_loop(alexnet.module.eval(), x, k)[0]
    assert result.layer.path == f"features.{k}" and result.layer.index == k
    assert result.activations.dtype == torch.float32
    assert result.activations.shape == expected.shape
    torch.testing.assert_close(result.activations, expected, rtol=0, atol=0)


@pytest.mark.parametrize("k", [0, 2, 3])
def test_tiny_activations_equal_the_seed_loop(cat_photo: Path, k: int) -> None:
    results = featviz.visualize(cat_photo, model="tinymodels:tiny_features", layers=[k], weights="none")
    model = tinymodels.tiny_features().eval()
    expected = seed_loop(model, photo_tensor(cat_photo), k)[0]
    torch.testing.assert_close(results[0].activations, expected, rtol=0, atol=0)


def test_several_layers_in_one_pass_equal_the_seed_loop_each(alexnet) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    layers = resolve_layers(alexnet.module, ["0,3", "-1", "features.8"])
    captured = capture(alexnet.module, layers, x)
    for ref in layers:
        torch.testing.assert_close(captured[ref.path], seed_loop(alexnet.module.eval(), x, ref.index),
                                   rtol=0, atol=0)


# --- the in-place ReLU trap (Captum issue 156) ------------------------------------------------

@pytest.mark.parametrize("other", [1, 3])
def test_conv_output_is_not_rectified_by_the_inplace_relu_after_it(alexnet, other: int) -> None:
    model = alexnet.module
    assert isinstance(model.features[1], nn.ReLU) and model.features[1].inplace
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    layers = resolve_layers(model, [0, other])
    captured = capture(model, layers, x)
    conv = captured["features.0"]
    assert conv.min() < 0  # un-rectified
    torch.testing.assert_close(conv, seed_loop(model.eval(), x, 0), rtol=0, atol=0)
    torch.testing.assert_close(captured[f"features.{other}"], seed_loop(model.eval(), x, other), rtol=0, atol=0)
    if other == 1:
        torch.testing.assert_close(captured["features.1"], torch.relu(conv), rtol=0, atol=0)

    # the trap is real: without the hook's own copy the ReLU overwrites the captured output
    with ActivationCapture(model, layers, copy=False) as recorder:
        shared = recorder.run(x)["features.0"]
    assert shared.min() >= 0


def test_inplace_relu_trap_on_the_tiny_model_through_the_cli(tmp_path: Path, cat_photo: Path) -> None:
    import numpy as np

    result = invoke(["show", cat_photo, "--model", "tinymodels:tiny_features", "--layer", "0",
                     "--layer", "1,3", "--save-raw", "--channels", "0", "--size", "8", "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    conv = np.load(tmp_path / "chelsea" / "features.0" / "activations.npy")
    relu = np.load(tmp_path / "chelsea" / "features.1" / "activations.npy")
    assert conv.min() < 0
    assert np.array_equal(relu, np.maximum(conv, 0))
    expected = seed_loop(tinymodels.tiny_features().eval(), photo_tensor(cat_photo), 0)[0].numpy()
    assert np.array_equal(conv, expected)


# --- hooks and training flags -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hooks_are_gone_and_flags_restored_after_a_failing_forward(mode: str) -> None:
    model = tinymodels.Broken()
    model.train(mode == "train")
    model.features[1].train(mode != "train")  # mixed flags must come back exactly
    flags = [m.training for m in model.modules()]
    user_hook = model.features[0].register_forward_hook(lambda *args: None)
    layers = resolve_layers(model, ["0", "head"])

    with pytest.raises(RuntimeError):
        with ActivationCapture(model, layers) as recorder:
            assert len(all_hooks(model)) == 3  # the user's and ours, while running
            recorder.run(torch.zeros(1, 3, 16, 16))

    assert [m.training for m in model.modules()] == flags
    assert list(model.features[0]._forward_hooks) == [user_hook.id]  # the user's own stays
    user_hook.remove()
    assert all_hooks(model) == []


def test_hooks_are_gone_after_a_successful_pass_and_the_model_is_unchanged() -> None:
    model = tinymodels.tiny_features().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, resolve_layers(model, ["all"]), torch.randn(2, 3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    assert all_hooks(model) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_capture_runs_in_eval_mode_with_no_grad() -> None:
    seen = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["training"] = self.training
            seen["grad"] = torch.is_grad_enabled()
            return x

    model = Holder(nn.Sequential(nn.Conv2d(3, 2, 1), Probe())).train()
    capture(model, resolve_layers(model, [1]), torch.zeros(1, 3, 4, 4))
    assert seen == {"training": False, "grad": False}
    assert model.training


def test_broken_model_is_a_clear_error_in_the_cli(tmp_path: Path, cat_photo: Path) -> None:
    result = invoke(["show", cat_photo, "--model", "tinymodels:Broken", "--layer", "head", "--out", tmp_path])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: tinymodels:Broken cannot run")
    assert "Traceback" not in result.output


# --- the forward pass stops after the last requested layer ------------------------------------

class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the forward pass ran past the last requested layer")


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Guarded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), Counter(), nn.ReLU(), Counter(), Boom())
        self.head = Boom()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize(("specs", "calls"), [(["0"], (0, 0)), (["1"], (1, 0)), (["2,0"], (1, 0)), (["3"], (1, 1))])
def test_forward_stops_after_the_last_requested_layer(specs: list[str], calls: tuple[int, int]) -> None:
    model = Guarded()
    captured = capture(model, resolve_layers(model, specs), torch.randn(1, 3, 8, 8))
    assert set(captured) >= {f"features.{s}" for s in specs[0].split(",")}
    assert (model.features[1].calls, model.features[3].calls) == calls


def test_forward_stops_early_for_all_layers_of_the_tiny_model() -> None:
    model = tinymodels.tiny_features()
    model.classifier = Boom()
    captured = capture(model, resolve_layers(model, ["all"]), torch.randn(1, 3, 32, 32))
    assert list(captured)[:5] == [f"features.{i}" for i in range(5)]


def test_torchscript_stack_stops_early_too(tmp_path: Path) -> None:
    import warnings

    class Stop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("ran past the last requested layer")

    model = Holder(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), Stop()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(tmp_path / "m.pt"))
    loaded = load_model(str(tmp_path / "m.pt"), "DEFAULT")
    x = torch.randn(1, 3, 8, 8)
    captured = capture(loaded.module, resolve_layers(loaded.module, [0, 1]), x)
    expected = model.features[0](x)
    torch.testing.assert_close(captured["features.0"], expected, rtol=0, atol=1e-6)
    assert captured["features.0"].min() < 0
    torch.testing.assert_close(captured["features.1"], torch.relu(expected), rtol=0, atol=1e-6)


class Holder(nn.Module):
    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_cli_never_runs_the_broken_head_for_an_early_layer(tmp_path: Path, cat_photo: Path) -> None:
    result = invoke(["show", cat_photo, "--model", "tinymodels:Broken", "--layer", "0", "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "chelsea" / "features.0" / "summary.json").is_file()


# --- resolving --layer ------------------------------------------------------------------------

def paths(refs) -> list[str]:
    return [ref.path for ref in refs]


def test_resolve_indices_paths_negative_all_and_duplicates() -> None:
    model = tinymodels.tiny_features()
    assert paths(resolve_layers(model, ["0,3"])) == ["features.0", "features.3"]
    assert paths(resolve_layers(model, [3, "0"])) == ["features.3", "features.0"]  # order kept
    assert paths(resolve_layers(model, ["-1"])) == ["features.4"]
    assert [r.index for r in resolve_layers(model, ["-5", "features.2"])] == [0, 2]
    assert paths(resolve_layers(model, ["0", "features.0", " 0 "])) == ["features.0"]
    assert paths(resolve_layers(model, ["all"])) == [f"features.{i}" for i in range(5)]
    assert paths(resolve_layers(model, ["classifier"])) == ["classifier"]
    assert resolve_layers(model, ["classifier"])[0].index is None
    ref = resolve_layers(model, ["3"])[0]
    assert ref.module is model.features[3] and ref.type_name == "Conv2d"


def test_resolve_top_level_children_without_features() -> None:
    model = tinymodels.tiny_residual()
    assert [p for p, _ in feature_stack(model)] == ["conv1", "relu", "block", "pool", "fc"]
    assert paths(resolve_layers(model, ["2", "block.0"])) == ["block", "block.0"]
    assert resolve_layers(model, ["block.0"])[0].index is None


@pytest.mark.parametrize(("model", "spec", "words"), [
    ("tiny_features", "5", ["layer 5 is out of range", "0..4", "-5..-1"]),
    ("tiny_features", "-6", ["layer -6 is out of range", "0..4"]),
    ("tiny_residual", "9", ["top-level layers 0..4"]),
    ("tiny_features", "featurs.3", ["no module named 'featurs.3'", "features.3"]),
    ("tiny_residual", "blok.0", ["no module named 'blok.0'", "block.0"]),
    ("tiny_features", ",", ["no layer was given"]),
])
def test_resolve_errors(model: str, spec: str, words: list[str]) -> None:
    module = getattr(tinymodels, model)()
    with pytest.raises(LayerError) as caught:
        resolve_layers(module, [spec], model_name=model)
    for word in words:
        assert word in str(caught.value)


def test_a_layer_without_a_feature_map_is_refused_before_any_photo() -> None:
    with pytest.raises(LayerError, match=r"layer fc \(Linear\) outputs shape \(1, 3\), not a feature map"):
        Visualizer("tinymodels:tiny_residual", "none", ["fc"])


# --- featviz layers ---------------------------------------------------------------------------

def test_layers_json_matches_a_manual_forward() -> None:
    result = invoke(["layers", "--model", "tinymodels:tiny_residual", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    model = tinymodels.tiny_residual().eval()
    with torch.no_grad():  # TinyResidual.forward, step by step
        x = torch.zeros(1, 3, 224, 224)
        conv1 = model.conv1(x)
        relu = model.relu(conv1)
        block = model.block(relu)
        pool = model.pool(model.relu(relu + block))
        fc = model.fc(torch.flatten(pool, 1))
    expected = [
        {"index": 0, "path": "conv1", "type": "Conv2d", "output_shape": list(conv1.shape[1:])},
        {"index": 1, "path": "relu", "type": "ReLU", "output_shape": list(relu.shape[1:])},
        {"index": 2, "path": "block", "type": "Sequential", "output_shape": list(block.shape[1:])},
        {"index": 3, "path": "pool", "type": "AdaptiveAvgPool2d", "output_shape": list(pool.shape[1:])},
        {"index": 4, "path": "fc", "type": "Linear", "output_shape": list(fc.shape[1:])},
    ]
    assert document["model"] == "tinymodels:tiny_residual"
    assert document["input_size"] == [224, 224]
    keys = ("index", "path", "type", "output_shape")
    assert [{k: row[k] for k in keys} for row in document["layers"]] == expected
    assert expected[3]["output_shape"] == [6, 1, 1] and expected[4]["output_shape"] == [3]


def test_layers_all_lists_nested_modules() -> None:
    result = invoke(["layers", "--model", "tinymodels:tiny_residual", "--json", "--all", "--crop", "32"])
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in json.loads(result.stdout)["layers"]}
    assert list(rows) == ["conv1", "relu", "block", "block.0", "block.1", "pool", "fc"]
    assert rows["block.0"]["index"] is None and rows["block.1"]["type"] == "BatchNorm2d"
    assert rows["block.1"]["output_shape"] == [6, 32, 32]


def test_layers_table_for_alexnet() -> None:
    result = invoke(["layers", "--model", "alexnet"])  # DEFAULT weights: nothing is downloaded
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "alexnet: input 3x224x224"
    assert lines[1].split() == ["index", "path", "type", "output", "shape"]
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == list(range(13))
    assert [r[1] for r in rows] == [f"features.{i}" for i in range(13)]
    import torchvision

    features = torchvision.models.alexnet(weights=None).features
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for i, layer in enumerate(features):
            x = layer(x)
            assert rows[i][2] == type(layer).__name__
            assert rows[i][3] == "x".join(map(str, x.shape[1:]))
    assert rows[0][2:] == ["Conv2d", "64x55x55"] and rows[12][2:] == ["MaxPool2d", "256x6x6"]
    assert "Downloading" not in result.output


def test_layers_with_weights_that_do_not_fit(tmp_path: Path) -> None:
    torch.save(tinymodels.tiny_residual().state_dict(), tmp_path / "w.pt")
    result = invoke(["layers", "--model", "tinymodels:tiny_features", "--weights", tmp_path / "w.pt"])
    assert result.exit_code == 2
    assert "do not fit" in result.stderr and "Traceback" not in result.output
