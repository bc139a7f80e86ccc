"""The trained CBAM example (issue 11, "proof on a network that learned something"): the shipped
weights' spatial gate peaks on the shape, the channel gates differ between classes, and the
training script still trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from examplescripts import example_module
from featviz.cli.main import main
from featviz.output.pipeline import RenderOptions, Visualizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "cbam_shapes.py"
WEIGHTS = ROOT / "examples" / "cbam_shapes.safetensors"
HELD_OUT = 60


@pytest.fixture(scope="module")
def held_out() -> list[tuple[Image.Image, int, tuple[int, int, int, int]]]:
    """Photos 80x64 the network never saw (another seed), the disc inside the centre 64x64 that
    --resize 64 --crop 64 keeps, so the crop box is (8, 0, 72, 64), not the whole photo."""
    shapes = example_module("cbam_shapes")
    rng = np.random.default_rng(123)
    margin = shapes.RADIUS + 1
    photos = []
    for _ in range(HELD_OUT):
        pixels, label, box = shapes.photo(rng, width=80, height=64,
                                          region=(8 + margin, margin, 72 - margin, 64 - margin))
        photos.append((Image.fromarray(pixels), label, box))
    return photos


def test_the_learned_spatial_gate_peaks_on_the_shape_and_channel_gates_tell_the_classes_apart(held_out) -> None:
    visualizer = Visualizer(f"{SCRIPT}:build", str(WEIGHTS), ["cbam2"], resize=64, crop=64,
                            options=RenderOptions(channel="learned", spatial="learned", size=8))
    hits, gates, labels = 0, [], []
    for photo, label, (left, top, right, bottom) in held_out:
        result = visualizer.run(photo)[0]
        assert result.extra["spatial_gate"] == "cbam2.spatial" and result.layer.path == "cbam2.channel"
        gate = result.spatial_raw  # (16, 16), the gate as the network computed it
        height, width = gate.shape
        row, col = divmod(int(gate.argmax()), width)
        box = result.box  # crop-exact: the centre of the argmax cell, in photo pixels
        assert (box.left, box.top, box.right, box.bottom) == (8.0, 0.0, 72.0, 64.0)
        x = box.left + (col + 0.5) * (box.right - box.left) / width
        y = box.top + (row + 0.5) * (box.bottom - box.top) / height
        hits += left <= x <= right and top <= y <= bottom
        gates.append(torch.tensor(result.extra["gate"]))
        labels.append(label)
    assert hits / HELD_OUT >= 0.9, f"the spatial gate peaked on the shape in {hits} of {HELD_OUT} photos"
    # channel gates differ between classes: each photo's gate is nearest to its own class's mean
    stacked, targets = torch.stack(gates), torch.tensor(labels)
    means = torch.stack([stacked[targets == k].mean(0) for k in range(3)])
    nearest = torch.cdist(stacked, means).argmin(dim=1)
    assert float((nearest == targets).float().mean()) >= 0.8  # measured: 54 of 60 (chance: 1 in 3)
    assert float(torch.cdist(means, means).masked_select(~torch.eye(3, dtype=torch.bool)).min()) > 0.3


def test_the_cli_loads_the_example_by_path_and_writes_the_learned_pictures(held_out, tmp_path: Path) -> None:
    photo = tmp_path / "shapes.png"
    held_out[0][0].save(photo)
    result = CliRunner().invoke(main, ["show", str(photo), "--model", "examples/cbam_shapes.py:build", "--weights",
                                       "examples/cbam_shapes.safetensors", "--resize", "64", "--crop", "64",
                                       "--layer", "cbam2", "--channel", "learned", "--spatial", "learned",
                                       "--save-raw", "--size", "16", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "shapes" / "cbam2.channel"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["gate_kind"] == "channel" and summary["spatial_gate_kind"] == "spatial"
    spatial = np.load(folder / "attention.npz")["spatial"]
    assert spatial.shape == (16, 16) and 0 < spatial.min() and spatial.max() < 1
    assert (folder / "spatial_attention.png").is_file() and (folder / "se_reweight.png").is_file()


def test_the_training_script_still_trains_into_the_shipped_layout() -> None:
    shapes = example_module("cbam_shapes")
    shipped = load_file(str(WEIGHTS))
    torch.manual_seed(0)
    untrained = {k: v.clone() for k, v in shapes.build().state_dict().items()}
    trained = shapes.train(steps=8, batch=8).state_dict()
    assert {k: tuple(v.shape) for k, v in trained.items()} == {k: tuple(v.shape) for k, v in shipped.items()}
    assert not torch.equal(trained["cbam2.spatial.conv.weight"], untrained["cbam2.spatial.conv.weight"])
    again = shapes.train(steps=8, batch=8).state_dict()  # the seed fixes the run
    assert all(torch.equal(trained[k], again[k]) for k in trained)
