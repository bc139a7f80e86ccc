"""timm models (issue 11): ``--model timm:NAME``, ``--model-kwargs``, weights (none, pretrained
from the Hugging Face cache, .pth and .safetensors files), timm's own preprocessing geometry,
feature_info stages, class names, and the errors. Offline: nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

import featviz.models.timm_models
from featviz.capture.layers import feature_stack, sweep_layers
from featviz.cli.main import main
from featviz.errors import ModelError, UsageError, WeightsError
from featviz.models.build import load_model
from featviz.output.pipeline import RenderOptions, Visualizer

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _ramp(width: int, height: int) -> Image.Image:
    """Red says x and green says y, so a tensor pixel tells where in the photo it came from."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.rint(np.linspace(0, 255, width))[None, :]
    pixels[..., 1] = np.rint(np.linspace(0, 255, height))[:, None]
    pixels[..., 2] = (np.arange(width)[None, :] * 7 + np.arange(height)[:, None] * 13) % 256  # texture
    return Image.fromarray(pixels)


# resnet10t's own config: bicubic, crop_pct 0.875, crop_mode center, 176 px; the overlays change
# crop_pct, crop_mode and the interpolation through timm's pretrained_cfg_overlay.
CONFIGS = {
    "center-bicubic": None,
    "squash": {"crop_mode": "squash", "crop_pct": 0.9, "input_size": (3, 160, 160)},
    "center-bilinear-1.0": {"crop_pct": 1.0, "interpolation": "bilinear", "input_size": (3, 128, 128)},
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("size", [(400, 300), (300, 410), (97, 61)])
def test_preprocessing_equals_timms_transform_and_the_crop_box_is_where_pixels_come_from(
        config: str, size: tuple[int, int]) -> None:
    kwargs = {"pretrained_cfg_overlay": CONFIGS[config]} if CONFIGS[config] else None
    loaded = load_model("timm:resnet10t", "none", model_kwargs=kwargs)
    transform = create_transform(**resolve_data_config({}, model=loaded.module))
    photo = _ramp(*size)
    expected = transform(photo)
    actual = loaded.preprocess(photo)
    assert actual.shape == expected.shape
    std = torch.tensor(loaded.preprocess.std)[:, None, None]
    assert float(((actual - expected) * std).abs().max()) <= 1 / 255 + 1e-6  # within one grey level
    # where the pixels came from, read off the ramp: input pixel centre i + 0.5 lies at
    # box.left + (i + 0.5) * box width / crop in the photo
    width, height = size
    crop = actual.shape[-1]
    mean = torch.tensor(loaded.preprocess.mean)[:, None, None]
    values = (expected * std + mean) * 255
    box = loaded.preprocess.crop_box(width, height)
    cell_x, cell_y = (box.right - box.left) / crop, (box.bottom - box.top) / crop
    middle = crop // 2
    for i in (3, middle, crop - 4):
        x = float(values[0, middle, i]) / (255 / (width - 1)) + 0.5
        y = float(values[1, i, middle]) / (255 / (height - 1)) + 0.5
        assert x == pytest.approx(box.left + (i + 0.5) * cell_x, abs=1.0)
        assert y == pytest.approx(box.top + (i + 0.5) * cell_y, abs=1.0)


def test_model_kwargs_reach_the_constructor_and_layers_follow_feature_info() -> None:
    loaded = load_model("timm:resnet10t", "none", model_kwargs={"num_classes": 7, "block_args": {"attn_layer": "se"}})
    assert loaded.module.fc.out_features == 7
    assert type(loaded.module.layer1[0].se).__name__ == "SEModule"
    assert loaded.categories is None  # 7 classes are not ImageNet's
    stages = [path for path, _ in feature_stack(loaded.module)]
    assert stages == [entry["module"] for entry in loaded.module.feature_info] == \
        ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert sweep_layers(loaded.module) == stages
    assert load_model("timm:resnet10t", "none").categories[281] == "tabby, tabby cat"


def test_seeded_random_weights_repeat_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first = load_model("timm:resnet10t", "none", seed=3).module.conv1[0].weight
    again = load_model("timm:resnet10t", "none", seed=3).module.conv1[0].weight
    other = load_model("timm:resnet10t", "none", seed=4).module.conv1[0].weight
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dict_files_load_into_timm_and_torchvision_models(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("resnet10t", num_classes=5)
    for parameter in source.parameters():
        torch.nn.init.normal_(parameter)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_model("timm:resnet10t", str(path), model_kwargs={"num_classes": 5})
    assert torch.equal(loaded.module.fc.weight, source.fc.weight)
    assert loaded.weights == str(path)
    # torchvision, from safetensors too
    net = torchvision.models.get_model("squeezenet1_1", weights=None)
    save_file(net.state_dict(), tmp_path / "sq.safetensors")
    loaded = load_model("squeezenet1_1", str(tmp_path / "sq.safetensors"))
    assert torch.equal(loaded.module.features[0].weight, net.features[0].weight)


def test_safetensors_whose_keys_do_not_fit_are_refused_like_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    state = dict(timm.create_model("resnet10t").state_dict())
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["fc.weight"] = torch.zeros(3, 512)
    save_file(state, path)
    with pytest.raises(WeightsError, match=r"do not fit ResNet: 1 missing key\(s\) such as fc.bias; 1 unexpected key"
                                           r"\(s\) such as extra.weight; 1 shape mismatch\(es\) such as fc.weight "
                                           r"\(3, 512\) vs \(1000, 512\)"):
        load_model("timm:resnet10t", str(path))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="cannot be read as a safetensors file"):
        load_model("timm:resnet10t", str(tmp_path / "bad.safetensors"))
    result = cli("layers", "--model", "timm:resnet10t", "--weights", path)
    assert result.exit_code == 2 and "do not fit ResNet" in result.output and "Traceback" not in result.output


def test_pretrained_weights_offline_say_where_timm_looks(tmp_path: Path, cat_photo: Path) -> None:
    """HF_HUB_OFFLINE with an empty Hugging Face home: the error names that cache."""
    home = tmp_path / "hf-home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "featviz", "show", str(cat_photo), "--model", "timm:resnet10t",
                           "--weights", "pretrained", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Error: timm's pretrained weights for resnet10t are not in the Hugging Face cache")
    assert str(home / "hub") in lines[0] and "timm/resnet10t.c3_in1k" in lines[0]
    assert lines[1].startswith("Hint: ") and "Traceback" not in done.stderr


def test_errors_unknown_name_bad_kwargs_bad_weights_and_no_timm(monkeypatch: pytest.MonkeyPatch, cat_photo: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model timm:resnet10x") as error:
        load_model("timm:resnet10x", "none")
    assert "timm:resnet10t" in error.value.hint
    with pytest.raises(UsageError, match="rejects --model-kwargs: .*unexpected keyword argument 'colour'"):
        load_model("timm:resnet10t", "none", model_kwargs={"colour": 1})
    with pytest.raises(WeightsError, match="none, pretrained or a file"):
        load_model("timm:resnet10t", "IMAGENET1K_V1")
    for args, words in [(["--model", "timm:resnet10x"], "did you mean timm:resnet10t"),
                        (["--model", "timm:resnet10t", "--model-kwargs", "{bad"], "is not JSON"),
                        (["--model", "timm:resnet10t", "--model-kwargs", '{"colour": 1}'], "unexpected keyword")]:
        result = cli("show", cat_photo, *args, "--weights", "none", "--out", tmp_path)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # before any image
    monkeypatch.setattr(featviz.models.timm_models, "timm", None)
    with pytest.raises(ModelError, match="needs timm") as error:
        load_model("timm:resnet10t", "none")
    assert 'pip install "featviz[timm]"' in error.value.hint


def test_show_sweep_layers_and_api_run_a_timm_model(cat_photo: Path, tmp_path: Path) -> None:
    kwargs = '{"block_args": {"attn_layer": "eca"}}'
    result = cli("show", cat_photo, "--model", "timm:resnet10t", "--model-kwargs", kwargs, "--weights", "none",
                 "--layer", "2", "--size", "8", "--predict", "--json", "--out", tmp_path / "show")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "show" / "chelsea" / "layer2" / "summary.json").read_text())
    assert summary["model"] == "timm:resnet10t" and summary["weights"] == "none (seed 0)"
    assert summary["input_size"] == [176, 176] and summary["activation_shape"] == [128, 22, 22]
    assert summary["predictions"][0]["label"] in load_model("timm:resnet10t", "none").categories
    result = cli("sweep", cat_photo, "--model", "timm:resnet10t", "--model-kwargs", kwargs, "--weights", "none",
                 "--json", "--out", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    stages = [s["layer"] for s in json.loads(result.output)["results"][0]["stages"]]
    assert stages == ["act1", "layer1", "layer2", "layer3", "layer4"]
    result = cli("layers", "--model", "timm:resnet10t", "--weights", "none", "--json")
    rows = json.loads(result.output)["layers"]
    assert [(r["index"], r["path"]) for r in rows] == list(enumerate(stages))
    assert rows[4]["output_shape"] == [512, 6, 6]
    visualizer = Visualizer("timm:resnet10t", "none", ["layer1"], model_kwargs={"num_classes": 3},
                            options=RenderOptions(size=8))
    assert visualizer.run(cat_photo)[0].activations.shape == (64, 44, 44)
