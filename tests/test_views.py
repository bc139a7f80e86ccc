"""Issue 6 views other than the report: depth sweep, channel statistics, tile scales, predictions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import featviz
from featviz.capture.layers import sweep_layers
from featviz.cli.main import main

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none"]


def picture(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def run(args: list[str]) -> object:
    return CliRunner().invoke(main, args, catch_exceptions=False)


# --- sweep -----------------------------------------------------------------------------------

def test_sweep_stages_for_alexnet_are_after_each_relu_and_pool() -> None:
    from torchvision.models import alexnet, resnet18

    assert sweep_layers(alexnet()) == [f"features.{i}" for i in (1, 2, 4, 5, 7, 9, 11, 12)]
    assert sweep_layers(resnet18()) == ["conv1", "layer1", "layer2", "layer3", "layer4"]


def test_sweep_is_one_forward_pass_with_every_stage(tmp_path: Path, cat_photo: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import featviz.output.pipeline as pipeline_module

    calls = []
    real = pipeline_module.capture

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "capture", counting)  # the name the pipeline calls
    sweep_picture, results = featviz.sweep(cat_photo, model="tinymodels:tiny_features", weights="none")
    # one pass to check the layers on a blank input, one for the photo
    assert len(calls) == 2
    assert [r.layer.path for r in results] == ["features.1", "features.2", "features.4"]
    assert sweep_picture.height > 224 and sweep_picture.width > 3 * 224


def test_sweep_command_writes_one_picture_per_image(tmp_path: Path, cat_photo: Path) -> None:
    result = run(["sweep", str(cat_photo), *TINY, "--layer", "0,3", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["ok"] == 1
    stages = document["results"][0]["stages"]
    assert [s["layer"] for s in stages] == ["features.0", "features.3"]
    assert stages[0]["shape"] == [8, 112, 112] and stages[1]["shape"] == [12, 56, 56]
    assert picture(tmp_path / "chelsea" / "sweep.png").mode == "RGB"


def test_sweep_usage_errors_exit_2(tmp_path: Path, cat_photo: Path) -> None:
    result = run(["sweep", str(cat_photo), *TINY, "--layer", "99", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "out of range" in result.output
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# --- channel statistics ----------------------------------------------------------------------

def test_channel_weights_csv_and_chart(tmp_path: Path, cat_photo: Path) -> None:
    result = run(["show", str(cat_photo), *TINY, "--layer", "3", "--save-raw", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "chelsea" / "features.3"
    acts = np.load(folder / "activations.npy")
    rows = list(csv.DictReader((folder / "channel_weights.csv").read_text().splitlines()))
    assert [int(r["channel"]) for r in rows] == list(range(acts.shape[0]))
    means = acts.mean(axis=(1, 2))
    weights = (means - means.min()) / (means.max() - means.min())
    assert np.allclose([float(r["mean"]) for r in rows], means, atol=1e-6)
    assert np.allclose([float(r["max"]) for r in rows], acts.max(axis=(1, 2)), atol=1e-6)
    assert np.allclose([float(r["weight"]) for r in rows], weights, atol=1e-6)
    ranks = {int(r["channel"]): int(r["rank"]) for r in rows}
    order = sorted(range(len(weights)), key=lambda c: (-weights[c], c))
    assert [ranks[c] for c in order] == list(range(1, len(order) + 1))
    chart = picture(folder / "channel_weights.png")
    assert chart.mode == "RGB" and chart.width >= 400
    summary = json.loads((folder / "summary.json").read_text())
    assert {"channel_weights.csv", "channel_weights.png"} <= set(summary["files"])


# --- tile scales -----------------------------------------------------------------------------

def _tiles(tmp_path: Path, photo: Path, *extra: str, layer: str = "3") -> tuple[np.ndarray, list[np.ndarray]]:
    out = tmp_path / "-".join(extra or ("plain",))
    result = run(["show", str(photo), *TINY, "--layer", layer, "--save-raw", "--size", "32", "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    folder = out / photo.stem / f"features.{layer}"
    acts = np.load(folder / "activations.npy")
    tiles = [np.asarray(picture(folder / "channels" / f"{c:04d}.png")) for c in range(acts.shape[0])]
    return acts, tiles


def _upsampled(acts: np.ndarray, size: int = 32) -> np.ndarray:
    return F.interpolate(torch.from_numpy(acts)[None], size=(size, size), mode="bilinear",
                         align_corners=True)[0].numpy()


def test_normalize_layer_uses_one_scale_for_all_channels(tmp_path: Path, cat_photo: Path) -> None:
    acts, tiles = _tiles(tmp_path, cat_photo, "--normalize", "layer")
    low, high = acts.min(), acts.max()
    expected = np.floor((_upsampled(acts) - low) / (high - low) * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.abs(np.stack(tiles).astype(int) - expected.astype(int)).max() <= 1
    # the strongest channel reaches white, a weak one does not
    strongest = int(np.argmax(acts.reshape(len(acts), -1).max(axis=1)))
    assert tiles[strongest].max() >= 254


def test_normalize_image_shares_the_scale_across_layers(tmp_path: Path, cat_photo: Path) -> None:
    out = tmp_path / "img"
    result = run(["show", str(cat_photo), *TINY, "--layer", "0,3", "--save-raw", "--size", "16",
                  "--normalize", "image", "--out", str(out)])
    assert result.exit_code == 0, result.output
    a0 = np.load(out / "chelsea" / "features.0" / "activations.npy")
    a3 = np.load(out / "chelsea" / "features.3" / "activations.npy")
    low, high = min(a0.min(), a3.min()), max(a0.max(), a3.max())
    for layer, acts in (("features.0", a0), ("features.3", a3)):
        expected = np.floor((_upsampled(acts, 16) - low) / (high - low) * 255 + 0.5).clip(0, 255)
        for c in (0, 1):
            tile = np.asarray(picture(out / "chelsea" / layer / "channels" / f"{c:04d}.png")).astype(int)
            assert np.abs(tile - expected[c]).max() <= 1


def test_clip_percentile_keeps_one_hot_pixel_from_washing_out_a_tile(tmp_path: Path) -> None:
    pixels = np.full((64, 64, 3), 90, dtype=np.uint8)
    pixels[:, 32:] = 130  # two halves a conv can tell apart
    pixels[10, 10] = 255  # one hot pixel
    photo = tmp_path / "hot.png"
    Image.fromarray(pixels).save(photo)
    acts, plain = _tiles(tmp_path, photo, "--no-crop", "--resize", "64", layer="0")
    _, clipped = _tiles(tmp_path, photo, "--no-crop", "--resize", "64", "--clip-percentile", "95", layer="0")
    flat = acts.reshape(len(acts), -1)
    count = flat.shape[1]
    high_rank = round(0.95 * count)  # nearest-rank percentiles of the channel's raw values
    low_rank = count + 1 - high_rank
    up = _upsampled(acts)
    for c in range(len(acts)):
        ordered = np.sort(flat[c])
        low, high = ordered[low_rank - 1], ordered[high_rank - 1]
        if high <= low:
            continue
        expected = np.floor((np.clip(up[c], low, high) - low) / (high - low) * 255 + 0.5)
        assert np.abs(clipped[c].astype(int) - expected).max() <= 1, c
    # the hot pixel no longer sets the scale: more of the tile reaches white than without clipping
    assert sum((t == 255).mean() for t in clipped) > sum((t == 255).mean() for t in plain)


def test_bad_scale_options_are_usage_errors(tmp_path: Path, cat_photo: Path) -> None:
    for args in (["--clip-percentile", "30"], ["--normalize", "video"]):
        result = run(["show", str(cat_photo), *TINY, "--out", str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)


# --- predictions -----------------------------------------------------------------------------

def test_predict_records_top5_softmax_of_the_full_forward(tmp_path: Path, cat_photo: Path) -> None:
    import tinymodels

    result = run(["show", str(cat_photo), *TINY, "--layer", "0", "--predict", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "chelsea" / "features.0" / "summary.json").read_text())
    model = tinymodels.tiny_features().eval()
    from featviz.inputs.images import load_image
    from featviz.models.build import Preprocess

    with torch.no_grad():
        probs = torch.softmax(model(Preprocess()(load_image(cat_photo))[None]), dim=1)[0]
    top = probs.topk(5)
    assert [p["index"] for p in summary["predictions"]] == top.indices.tolist()
    assert [p["probability"] for p in summary["predictions"]] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert summary["predictions"][0]["label"] == f"class {top.indices[0].item()}"
    assert any(line.startswith("prediction: ") for line in result.output.splitlines())


def test_predict_uses_imagenet_names_for_torchvision_models(tmp_path: Path, cat_photo: Path) -> None:
    result = featviz.visualize(cat_photo, model="alexnet", weights="none", layers=[0], predict=True)[0]
    labels = [p["label"] for p in result.extra["predictions"]]
    assert len(labels) == 5 and not any(label.startswith("class ") for label in labels)
    assert math.isclose(sum(p["probability"] for p in result.extra["predictions"]), sum(
        sorted(p["probability"] for p in result.extra["predictions"])))
