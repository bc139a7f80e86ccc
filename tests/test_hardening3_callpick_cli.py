"""Issue 20, item 2 (rest), through the Visualizer and the commands: show, export, sweep and atlas
refuse a double-called layer named without a call (exit 2, before any photo), draw the picked
call (``layer1.0.relu@2``) and record it; ``featviz layers --all`` says how often a module runs.

ResNet-18 (``weights=None``) at 32 px keeps these fast; the reference is a plain forward hook
(``vitmodels.module_calls``) that records every call of ``layer1.0.relu``; the second is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import oddimages
from featviz.cli.main import main
from featviz.errors import LayerError
from featviz.output.pipeline import Visualizer, sweep_visualizer
from vitmodels import module_calls

pytestmark = pytest.mark.filterwarnings("error")

SMALL = ["--model", "resnet18", "--weights", "none", "--resize", "32", "--crop", "32"]


def _second_call(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    calls = module_calls(model, module, x)
    assert len(calls) == 2
    return calls[1]


def test_the_api_draws_the_picked_call() -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    visualizer = Visualizer("resnet18", "none", ["layer1.0.relu@2"], resize=32, crop=32)
    [result] = visualizer.run(photo)
    model = visualizer.loaded.module
    expected = _second_call(model, model.layer1[0].relu, visualizer.preprocess(photo)[None])
    assert torch.equal(result.activations, expected[0])
    summary = result.summary()
    assert summary["layer"]["path"] == "layer1.0.relu@2"
    assert summary["layer"]["call"] == 2 and summary["layer"]["module"] == "layer1.0.relu"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_api_refuses_a_double_called_layer_without_a_call() -> None:
    with pytest.raises(LayerError, match="runs 2 times") as error:
        Visualizer("resnet18", "none", ["layer1.0.relu"], resize=32, crop=32)
    assert "layer1.0.relu@2" in (error.value.hint or "") and "--layer layer1.0 " in (error.value.hint or "")


class SharedStage(nn.Module):
    """A top-level block called twice: the sweep's default stage list holds it once per call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.block(self.conv1(x)))), 1))


def shared_stage() -> nn.Module:
    return SharedStage()


def test_all_and_the_sweep_default_expand_to_each_call(tests_on_path: None) -> None:
    spec = "test_hardening3_callpick_cli:shared_stage"
    everything = Visualizer(spec, "none", ["all"], resize=16, crop=16)
    assert [r.path for r in everything.layers] == ["conv1", "block@1", "block@2"]
    swept = sweep_visualizer(spec, "none", None, resize=16, crop=16)
    assert [r.path for r in swept.layers] == ["conv1", "block@1", "block@2"]


@pytest.mark.parametrize("command", ["show", "export", "sweep", "atlas"])
def test_every_command_refuses_before_any_photo(command: str, tmp_path: Path) -> None:
    photo = tmp_path / "a.png"
    photo.write_bytes(b"not a picture: reading it would print an error naming a.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [command, str(photo), "--layer", "layer1.0.relu", "--out", str(out), *SMALL],
                                catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Error: layer layer1.0.relu runs 2 times in one forward pass of resnet18" in result.stderr
    assert "--layer layer1.0.relu@K, K = 1..2" in result.stderr
    assert "--layer layer1.0 (the module around it" in result.stderr
    assert "Traceback" not in result.output and "a.png" not in result.output
    assert not out.exists() or not any(out.rglob("*.png"))


def test_show_records_the_call_and_draws_it(tmp_path: Path) -> None:
    photo = oddimages.make_rgb_png(tmp_path / "a.png", size=(40, 36))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["show", str(photo), "--layer", "layer1.0.relu@2", "--out", str(out),
                                       "--save-raw", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = out / "a" / "layer1.0.relu@2"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["layer"]["call"] == 2 and summary["layer"]["module"] == "layer1.0.relu"
    visualizer = Visualizer("resnet18", "none", ["layer1.0.relu@2"], resize=32, crop=32)
    model = visualizer.loaded.module
    expected = _second_call(model, model.layer1[0].relu, visualizer.prepare(photo).tensor[None])[0]
    assert np.array_equal(np.load(folder / "activations.npy"), expected.numpy())
    [line] = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert line["layer"] == "layer1.0.relu@2" and line["call"] == 2


def test_cam_at_the_picked_call_from_the_command_line(tmp_path: Path) -> None:
    photo = oddimages.make_rgb_png(tmp_path / "a.png", size=(40, 36))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(photo), "--layer", "layer1.0.relu@2", "--out", str(out),
                                       "--cam", "gradcam", "--target", "3", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [line] = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert line["layer"] == "layer1.0.relu@2" and line["call"] == 2 and line["output"].endswith("/layer1.0.relu@2")
    summary = json.loads((out / line["output"] / "summary.json").read_text())
    assert summary["layer"]["call"] == 2
    assert [c["method"] for c in summary["cams"]] == ["gradcam"] and len(summary["cams"][0]["weights"]) == 64


def test_layers_all_marks_modules_that_run_more_than_once() -> None:
    result = CliRunner().invoke(main, ["layers", "--all", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip().startswith("layer1.0")}
    assert "[runs 2×]" in rows["layer1.0.relu"]
    assert "runs" not in rows["layer1.0.conv1"] and "runs" not in rows["layer1.0"]
    as_json = json.loads(CliRunner().invoke(main, ["layers", "--all", "--json", *SMALL]).output)
    calls = {row["path"]: row["calls"] for row in as_json["layers"]}
    assert calls["layer1.0.relu"] == 2 and calls["layer1.0.conv1"] == 1


def test_atlas_ranks_by_the_picked_call(tmp_path: Path) -> None:
    """``featviz atlas --layer layer1.0.relu@2``: channel 0's best score per photo is the maximum
    of channel 0 in the second call's output, taken by the test's own hook."""
    photos = [oddimages.make_rgb_png(tmp_path / f"p{i}.png", size=(40, 36), seed=i) for i in range(2)]
    out = tmp_path / "atlas"
    result = CliRunner().invoke(main, ["atlas", *map(str, photos), "--layer", "layer1.0.relu@2", "--out", str(out),
                                       "--top", "2", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "layer1.0.relu@2" / "atlas.json").read_text())
    assert document["layer"] == "layer1.0.relu@2"
    visualizer = Visualizer("resnet18", "none", ["layer1.0.relu@2"], resize=32, crop=32)
    model = visualizer.loaded.module
    expected = {}
    for photo in photos:
        second = _second_call(model, model.layer1[0].relu, visualizer.prepare(photo).tensor[None])
        expected[str(photo)] = float(second[0, 0].max())
    got = {entry["input"]: entry["score"] for entry in document["channels"][0]}
    assert got == pytest.approx(expected, rel=1e-6)
