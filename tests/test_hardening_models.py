"""Issue 13, models and layers: broken or wrong factories, TorchScript layer paths, a model that
needs its weights' input size, ``--layer all`` without a ``features`` stack, Inception and
GoogLeNet built as torchvision builds them for pretrained weights, a download that never answers.

Each test failed on main before the fix it guards.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

import oddimages
from featviz.cli.main import main
from featviz.errors import WeightsError
from featviz.models.build import load_model
from featviz.output.export import SUMMARY
from featviz.output.pipeline import RenderOptions, Visualizer

pytestmark = pytest.mark.filterwarnings("error")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return oddimages.make_rgb_png(tmp_path / "photo.png", size=(40, 32), seed=3)


# --------------------------------------------------------------------------------------------
# 4. a factory that raises, or is no model factory: usage error, exit 2, its own message
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "words"), [
    ("os:system", "cannot be called without arguments"),
    ("builtins:exit", "raised SystemExit"),
    ("BROKEN", "raised ValueError: the checkpoint folder is not configured"),
    ("math:pi", "is a float, not a model factory"),
])
def test_bad_factories_are_usage_errors(spec: str, words: str, photo: Path, tmp_path: Path, user_module) -> None:
    if spec == "BROKEN":
        name = user_module("""
            def broken():
                raise ValueError("the checkpoint folder is not configured")
        """)
        spec = f"{name}:broken"
    result = run("show", photo, "--model", spec, "--weights", "none", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert words in error and spec in error
    assert "Hint:" in result.stderr and not (tmp_path / "out").exists()


def test_os_system_is_never_called(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photo: Path) -> None:
    import os

    called: list[object] = []
    monkeypatch.setattr(os, "system", lambda command: called.append(command))
    result = run("show", photo, "--model", "os:system", "--weights", "none", "--out", tmp_path / "out")
    assert result.exit_code == 2 and called == []


# --------------------------------------------------------------------------------------------
# 5. TorchScript models with layer paths
# --------------------------------------------------------------------------------------------


class SmallResNet(nn.Module):
    """ResNet's top level in miniature: flatten between the pool and fc in forward()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.layer1(self.relu(self.conv1(x)))), 1))


def script_to(model: nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script/save are deprecated
        torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path


@pytest.fixture
def scripted_resnet(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return script_to(SmallResNet(), tmp_path / "resnet.pt")


@pytest.fixture
def scripted_features(tmp_path: Path) -> Path:
    import tinymodels

    return script_to(tinymodels.tiny_features(), tmp_path / "features.pt")


def test_scripted_layer_path_of_a_stack_entry_works(scripted_features: Path, photo: Path, tmp_path: Path) -> None:
    import tinymodels

    result = run("show", photo, "--model", scripted_features, "--layer", "features.3", "--out", tmp_path / "out",
                 "--size", "8", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "photo" / "features.3" / SUMMARY).read_text())
    eager = Visualizer("tinymodels:tiny_features", "none", ["features.3"], options=RenderOptions(size=8)).run(photo)[0]
    assert summary["channel_mean"] == pytest.approx(eager.summary()["channel_mean"], rel=1e-5, abs=1e-6)
    assert tinymodels  # the factory the eager model came from


def test_scripted_path_inside_a_stack_entry_is_refused_cleanly(scripted_resnet: Path, photo: Path,
                                                               tmp_path: Path) -> None:
    result = run("show", photo, "--model", scripted_resnet, "--layer", "layer1.2", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "Error: layer layer1.2 cannot be captured in a TorchScript model" in result.stderr
    assert "Hint:" in result.stderr


def test_sweep_on_a_scripted_resnet(scripted_resnet: Path, photo: Path, tmp_path: Path) -> None:
    result = run("sweep", photo, "--model", scripted_resnet, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    stages = [s["layer"] for s in json.loads(result.stdout)["results"][0]["stages"]]
    assert stages == ["conv1", "layer1"]


def test_predict_and_all_on_a_scripted_resnet(scripted_resnet: Path, photo: Path, tmp_path: Path) -> None:
    result = run("show", photo, "--model", scripted_resnet, "--layer", "all", "--predict",
                 "--out", tmp_path / "out", "--size", "8", "--json")
    assert result.exit_code == 0, result.output
    layers = [r["layer"] for r in json.loads(result.stdout)["results"]]
    assert layers == ["conv1", "relu", "layer1"]  # not avgpool (1x1) nor fc
    summary = json.loads((tmp_path / "out" / "photo" / "conv1" / SUMMARY).read_text())
    assert len(summary["predictions"]) == 4


def test_a_scripted_stack_entry_after_the_forward_passes_flatten_is_explained(scripted_resnet: Path, photo: Path,
                                                                          tmp_path: Path) -> None:
    result = run("show", photo, "--model", scripted_resnet, "--layer", "fc", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "Error: layer fc of a TorchScript model cannot take the output of avgpool" in result.stderr
    assert "cannot run on a" not in result.stderr


# --------------------------------------------------------------------------------------------
# 6. a model that only runs at its weights' size (ViT SWAG at 384)
# --------------------------------------------------------------------------------------------


def test_layers_of_vit_at_the_weights_size() -> None:
    result = run("layers", "--model", "vit_b_16", "--weights", "IMAGENET1K_SWAG_E2E_V1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["input_size"] == [384, 384]
    conv = next(r for r in document["layers"] if r["path"] == "conv_proj")
    assert conv["output_shape"] == [768, 24, 24]


def test_a_model_that_cannot_run_at_the_listing_size_is_a_clean_error() -> None:
    result = run("layers", "--model", "vit_b_16", "--weights", "IMAGENET1K_SWAG_E2E_V1", "--crop", "224",
                 "--resize", "224")
    assert result.exit_code == 2, result.output
    assert "Error: vit_b_16 does not run on a 3x224x224 input" in result.stderr and "Traceback" not in result.output


# --------------------------------------------------------------------------------------------
# 7. --layer all and -1 without a features stack
# --------------------------------------------------------------------------------------------


def test_all_and_minus_one_without_a_features_stack(photo: Path, tmp_path: Path) -> None:
    result = run("show", photo, "--model", "tinymodels:tiny_residual", "--weights", "none", "--layer", "all",
                 "--out", tmp_path / "out", "--size", "8", "--json")
    assert result.exit_code == 0, result.output
    # tiny_residual's top-level relu runs twice: `all` lists each call (issue 20 item 2, hardening notes)
    assert [r["layer"] for r in json.loads(result.stdout)["results"]] == ["conv1", "relu@1", "relu@2", "block"]
    last = run("show", photo, "--model", "tinymodels:tiny_residual", "--weights", "none", "--layer", "-1",
               "--out", tmp_path / "out2", "--size", "8", "--json")
    assert last.exit_code == 0, last.output
    assert [r["layer"] for r in json.loads(last.stdout)["results"]] == ["block"]


def test_all_on_resnet18() -> None:
    loaded = load_model("resnet18", "none")
    visualizer = Visualizer("resnet18", "none", ["all", "-1"], loaded=loaded)
    assert [ref.path for ref in visualizer.layers] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                       "layer3", "layer4"]
    [last, first] = Visualizer("resnet18", "none", ["-1", "-8"], loaded=loaded).layers
    assert (last.path, last.index, first.path) == ("layer4", 7, "conv1")


def test_all_with_a_features_stack_is_unchanged() -> None:
    assert [r.path for r in Visualizer("alexnet", "none", ["all"]).layers] == [f"features.{i}" for i in range(13)]
    assert Visualizer("alexnet", "none", ["-1"]).layers[0].path == "features.12"


# --------------------------------------------------------------------------------------------
# 11. Inception v3 and GoogLeNet with --weights PATH, as torchvision builds them pretrained
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_weights_file_gives_the_pretrained_models_activations(name: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import get_model, get_model_weights

    torch.manual_seed(1)
    donor = get_model(name, weights=None, aux_logits=True, init_weights=False)
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    enum = get_model_weights(name)
    monkeypatch.setattr(type(enum.DEFAULT), "get_state_dict", lambda self, *a, **k: state)
    pretrained = get_model(name, weights=enum.DEFAULT).eval()  # torchvision's own pretrained code path
    assert pretrained.transform_input
    saved = dict(pretrained.state_dict())
    path = tmp_path / f"{name}.pth"
    torch.save(saved, path)
    loaded = load_model(name, str(path))
    assert loaded.module.transform_input
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    layer = "Conv2d_1a_3x3" if name == "inception_v3" else "conv1"
    with torch.no_grad():
        ours = _output_of(loaded.module.eval(), layer, x)
        theirs = _output_of(pretrained, layer, x)
    assert torch.equal(ours, theirs)


def _output_of(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    from featviz.capture.hooks import capture
    from featviz.capture.layers import resolve_layers

    refs = resolve_layers(model, [layer])
    return capture(model, refs, x)[layer]


# --------------------------------------------------------------------------------------------
# 14. a download through a network that accepts and never answers
# --------------------------------------------------------------------------------------------


def test_download_times_out_and_leaves_no_partial(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.models._api as api

    import featviz.models.build as models

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept, then say nothing
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    monkeypatch.undo()  # the conftest blocks every connect; this test allows loopback only
    real = socket.socket.connect

    def loopback_only(self: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
            raise OSError("network access is disabled in the tests")
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("FEATVIZ_DOWNLOAD_TIMEOUT", "0.5")
    original = api.load_state_dict_from_url
    monkeypatch.setattr(api, "load_state_dict_from_url",
                        lambda url, *a, **k: original(f"http://127.0.0.1:{port}/{url.rsplit('/', 1)[-1]}", *a, **k))
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            models.load_model("alexnet", "DEFAULT")
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=30)  # without a timeout the download would wait forever
    hung = loader.is_alive()
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()  # ends a hanging download, so the thread does not outlive the test
    server.close()
    loader.join(timeout=30)
    assert not hung, "the download did not time out"
    [error] = outcome
    assert isinstance(error, WeightsError), error
    assert "no answer from the server within 0.5 s" in error.message
    assert socket.getdefaulttimeout() is None
    assert list((tmp_path / "torch-home").rglob("*.partial")) == []
