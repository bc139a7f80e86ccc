"""Models, weights and preprocessing: what ``--model``, ``--weights``, ``--seed`` and
``--resize/--crop/--no-crop`` build, checked against torchvision and hand computations.

Nothing here downloads: pretrained weights are either refused (TORCH_HOME is an empty folder
and sockets are blocked, see conftest) or put into that cache folder by the test itself.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms as T

import tinymodels
from featviz.cli.main import main
from featviz.errors import ModelError, UsageError, WeightsError
from featviz.models.build import CropBox, Preprocess, load_model, resolve_device
from seedscript import seed_loop

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


# --- helpers ----------------------------------------------------------------------------------


def other_tiny_features(seed: int = 123) -> tinymodels.TinyFeatures:
    """A TinyFeatures whose weights differ from what ``tiny_features()`` builds."""
    torch.manual_seed(seed)
    return tinymodels.TinyFeatures().eval()


def example_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(1, 3, 64, 64, generator=generator)


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- weights files ----------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["state_dict", "checkpoint_state_dict", "checkpoint_model", "dataparallel"])
def test_weights_file_layouts_load_the_same_weights(tmp_path: Path, layout: str) -> None:
    reference = other_tiny_features()
    state = reference.state_dict()
    if layout == "state_dict":
        saved: object = state
    elif layout == "checkpoint_state_dict":
        saved = {"epoch": 3, "state_dict": state, "optimizer": {"lr": torch.tensor(0.1)}}
    elif layout == "checkpoint_model":
        saved = {"model": state, "epoch": 3}
    else:
        saved = {f"module.{key}": value for key, value in state.items()}
    path = tmp_path / f"{layout}.pth"
    torch.save(saved, path)

    loaded = load_model("tinymodels:tiny_features", str(path))

    assert loaded.weights == str(path)
    assert loaded.source == "factory"
    for key, value in state.items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    x = example_batch()
    loaded.module.eval()
    for k in (0, 3):
        assert torch.equal(seed_loop(loaded.module, x, k), seed_loop(reference, x, k))
    # and the file really changed something: the model as built differs
    as_built = tinymodels.tiny_features().eval()
    assert not torch.equal(seed_loop(as_built, x, 0), seed_loop(reference, x, 0))


def test_weights_file_layouts_give_the_same_activations_through_the_cli(tmp_path: Path, cat_photo: Path) -> None:
    state = other_tiny_features().state_dict()
    files = {
        "plain": state,
        "under_state_dict": {"state_dict": state},
        "under_model": {"model": state},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
    }
    arrays = {}
    for name, content in [*files.items(), ("as_built", None)]:
        out = tmp_path / f"out-{name}"
        args = ["show", cat_photo, "--model", "tinymodels:tiny_features", "--layer", "3", "--channels", "0",
                "--save-raw", "--out", out, "-q"]
        if content is not None:
            torch.save(content, tmp_path / f"{name}.pt")
            args += ["--weights", tmp_path / f"{name}.pt"]
        result = invoke(args)
        assert result.exit_code == 0, result.output
        arrays[name] = np.load(out / "chelsea" / "features.3" / "activations.npy")
    for name in files:
        assert np.array_equal(arrays[name], arrays["plain"]), name
    assert not np.array_equal(arrays["as_built"], arrays["plain"])


def test_weights_that_do_not_fit_name_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "residual.pt"
    torch.save(tinymodels.tiny_residual().state_dict(), path)
    with pytest.raises(WeightsError) as caught:
        load_model("tinymodels:tiny_features", str(path))
    text = str(caught.value)
    assert str(path) in text
    assert "missing" in text and "features.0.weight" in text
    assert "unexpected" in text and "conv1.weight" in text
    assert "\n" not in text


def test_weights_with_wrong_shapes_name_the_mismatch(tmp_path: Path) -> None:
    state = tinymodels.tiny_features().state_dict()
    state["classifier.weight"] = torch.zeros(7, 12)
    state["classifier.bias"] = torch.zeros(7)
    path = tmp_path / "wide-head.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"shape mismatch.*classifier\.(weight|bias)"):
        load_model("tinymodels:tiny_features", str(path))


@pytest.mark.parametrize("kind", ["random_bytes", "pickled_object", "no_tensors", "empty"])
def test_garbage_weights_files_are_refused_with_the_file_named(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "pickled_object":  # a whole model object, plain pickle: weights_only must refuse
        with open(path, "wb") as handle:
            pickle.dump({"model": tinymodels.TinyFeatures}, handle, protocol=4)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "note": "no weights here"}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(WeightsError) as caught:
        load_model("tinymodels:tiny_features", str(path))
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("tinymodels:tiny_features", str(tmp_path / "nowhere.pt"))


def test_unknown_weights_name_lists_the_available_ones() -> None:
    with pytest.raises(WeightsError) as caught:
        load_model("alexnet", "IMAGENET1K_V9")
    assert "IMAGENET1K_V9" in caught.value.message
    assert "IMAGENET1K_V1" in caught.value.hint and "none" in caught.value.hint


def refuse_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail name lookups at once too (conftest blocks connect), so no resolver timeout is waited."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("name lookups are disabled in the tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_pretrained_weights_not_cached_say_where_and_what_to_do(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_dns(monkeypatch)
    with pytest.raises(WeightsError) as caught:
        load_model("alexnet", "DEFAULT")
    error = caught.value
    filename = os.path.basename(torchvision.models.AlexNet_Weights.DEFAULT.url)
    assert filename in error.message
    assert os.environ["TORCH_HOME"] in error.message and "TORCH_HOME" in error.message
    assert "--weights none" in error.hint and "--weights PATH" in error.hint
    assert not (Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / filename).exists()
    # torch.hub announces downloads on stdout; that must not reach featviz's stdout (--json)
    assert "Downloading" not in capsys.readouterr().out


def _cache_squeezenet(seed: int = 5) -> dict[str, torch.Tensor]:
    """Put a (random, seeded) squeezenet1_1 state dict where torchvision looks for its weights."""
    torch.manual_seed(seed)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / os.path.basename(weights.url))
    return state


def test_cached_pretrained_weights_load_offline_with_their_preprocessing() -> None:
    rng_before = torch.get_rng_state()
    state = _cache_squeezenet()
    torch.set_rng_state(rng_before)
    loaded = load_model("squeezenet1_1")  # DEFAULT
    for key, value in state.items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    assert loaded.weights == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert loaded.categories is not None and len(loaded.categories) == 1000
    assert loaded.preprocess == Preprocess(resize=256, crop=224, mean=tuple(MEAN), std=tuple(STD),
                                           interpolation="bilinear")


def test_corrupt_cached_weights_say_they_could_not_be_loaded() -> None:
    filename = os.path.basename(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url)
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / filename).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=f"{filename} could not be loaded"):
        load_model("squeezenet1_1", "IMAGENET1K_V1")


# --- random weights and seeds -----------------------------------------------------------------

def test_seed_controls_random_weights_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(999)
    rng_before = torch.get_rng_state()
    first = load_model("squeezenet1_1", "none", seed=0)
    again = load_model("squeezenet1_1", "none", seed=0)
    other = load_model("squeezenet1_1", "none", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)

    def conv(loaded) -> torch.Tensor:
        return loaded.module.features[0].weight

    assert torch.equal(conv(first), conv(again))
    assert not torch.equal(conv(first), conv(other))
    assert first.weights == "none (seed 0)" and other.weights == "none (seed 1)"
    # independent: torchvision's own build under the same seed gives the same initialisation
    torch.manual_seed(1)
    expected = torchvision.models.squeezenet1_1(weights=None)
    for (name, mine), (_, theirs) in zip(other.module.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name


def test_cli_seed_changes_random_weights_and_repeats(tmp_path: Path, cat_photo: Path) -> None:
    arrays = []
    for run, seed in enumerate((0, 0, 1)):
        out = tmp_path / f"run{run}"
        result = invoke(["show", cat_photo, "--model", "squeezenet1_1", "--weights", "none", "--seed", seed, "--layer",
                         "0",
                         "--channels", "0-1", "--size", "8", "--save-raw", "--out", out, "-q"])
        assert result.exit_code == 0, result.output
        arrays.append(np.load(out / "chelsea" / "features.0" / "activations.npy"))
    assert np.array_equal(arrays[0], arrays[1])
    assert not np.allclose(arrays[0], arrays[2])


def test_model_names_case_insensitive_and_unknown_names_get_close_matches() -> None:
    assert load_model("SqueezeNet1_1", "none").name == "squeezenet1_1"
    with pytest.raises(ModelError) as caught:
        load_model("alexnt", "none")
    assert "alexnt" in caught.value.message
    assert "alexnet" in caught.value.hint
    with pytest.raises(ModelError) as caught:
        load_model("resnet5", "none")
    assert "resnet50" in caught.value.hint


# --- preprocessing ----------------------------------------------------------------------------

def _portrait(cat_photo: Path) -> Image.Image:
    return Image.open(cat_photo).convert("RGB").transpose(Image.Transpose.ROTATE_90)


@pytest.mark.parametrize("weights", [
    torchvision.models.ResNet50_Weights.IMAGENET1K_V2,          # resize 232, bilinear
    torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1,   # resize 256, bicubic
], ids=["resnet50-v2", "efficientnet-b0"])
@pytest.mark.parametrize("photo", ["landscape", "portrait", "small"])
def test_preprocess_equals_the_weights_own_transforms(weights, photo: str, cat_photo: Path) -> None:
    pil = Image.open(cat_photo).convert("RGB")
    if photo == "portrait":
        pil = _portrait(cat_photo)
    elif photo == "small":
        pil = pil.resize((120, 90))
    preset = weights.transforms()
    ours = Preprocess.from_transforms(preset)
    expected = preset(pil)
    actual = ours(pil)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape == (3, 224, 224)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_from_transforms_reads_the_preset_parameters() -> None:
    preset = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert Preprocess.from_transforms(preset) == Preprocess(resize=232, crop=224, mean=tuple(MEAN),
                                                            std=tuple(STD), interpolation="bilinear")
    preset = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.transforms()
    assert Preprocess.from_transforms(preset).interpolation == "bicubic"


@pytest.mark.parametrize("photo", ["landscape", "portrait"])
def test_default_preprocess_is_the_seed_pipeline(photo: str, cat_photo: Path) -> None:
    pil = Image.open(cat_photo).convert("RGB") if photo == "landscape" else _portrait(cat_photo)
    seed = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    torch.testing.assert_close(Preprocess()(pil), seed(pil), rtol=0, atol=1e-6)


def test_overrides() -> None:
    base = Preprocess()
    assert base.with_overrides(resize=300, crop=100) == Preprocess(resize=300, crop=100)
    assert base.with_overrides(no_crop=True).crop is None
    assert base.with_overrides(crop=100, no_crop=True).crop is None
    assert base.with_overrides() == base
    # --no-crop: the network sees the whole resized photo
    assert Preprocess(crop=None).input_size(400, 300) == (256, 341)
    assert Preprocess(crop=None).input_size(300, 400) == (341, 256)
    assert Preprocess(resize=None, crop=None).input_size(400, 300) == (300, 400)


def _box(box: CropBox) -> tuple[float, float, float, float]:
    return box.left, box.top, box.right, box.bottom


def test_crop_box_by_hand() -> None:
    pre = Preprocess()  # resize 256, crop 224
    # Landscape 400x300: shorter side 300 -> 256, so 400 -> int(256 * 400 / 300) = 341.
    # Crop 224 of 341 x 256: left = round((341 - 224) / 2) = round(58.5) = 58 (Python rounds
    # half to even, as torchvision does), top = (256 - 224) / 2 = 16. Back in photo pixels the
    # scale is 341/400 across and 256/300 down.
    expected = (58 * 400 / 341, 16 * 300 / 256, (58 + 224) * 400 / 341, (16 + 224) * 300 / 256)
    assert _box(pre.crop_box(400, 300)) == pytest.approx(expected, abs=1e-9)
    assert _box(pre.crop_box(400, 300)) == pytest.approx((68.035, 18.75, 330.792, 281.25), abs=1e-3)
    # Portrait 300x400: the same with the axes swapped.
    expected = (16 * 300 / 256, 58 * 400 / 341, (16 + 224) * 300 / 256, (58 + 224) * 400 / 341)
    assert _box(pre.crop_box(300, 400)) == pytest.approx(expected, abs=1e-9)
    # --no-crop: the whole photo
    assert _box(Preprocess(crop=None).crop_box(400, 300)) == (0.0, 0.0, 400.0, 300.0)
    # A crop larger than the resized photo pads: 400x300 -> 133x100, crop 150 pads
    # (150 - 133) // 2 = 8 on the left and (150 - 100) // 2 = 25 on top.
    box = Preprocess(resize=100, crop=150).crop_box(400, 300)
    assert _box(box) == pytest.approx((-8 * 400 / 133, -25 * 3, 142 * 400 / 133, 125 * 3), abs=1e-9)
    assert box.as_list() == [round(v, 3) for v in _box(box)]


@pytest.mark.parametrize("size", [(400, 300), (300, 400)])
def test_crop_box_is_where_the_tensor_comes_from(size: tuple[int, int]) -> None:
    """A ramp photo whose red value says its x and green its y: the first and last input
    pixels' values tell which photo pixels the network sees."""
    width, height = size
    xs = np.linspace(0, 255, width)
    ys = np.linspace(0, 255, height)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.rint(xs)[None, :]
    pixels[..., 1] = np.rint(ys)[:, None]
    pre = Preprocess()
    tensor = pre(Image.fromarray(pixels))
    values = tensor * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    step_x, step_y = 255 / (width - 1), 255 / (height - 1)
    # photo coordinate (pixel centres at i + 0.5) of each input column's / row's centre
    col = values[0, 112, :].numpy() * 255 / step_x + 0.5
    row = values[1, :, 112].numpy() * 255 / step_y + 0.5
    box = pre.crop_box(width, height)
    cell_x, cell_y = (box.right - box.left) / 224, (box.bottom - box.top) / 224
    assert col[112] == pytest.approx(box.left + 112.5 * cell_x, abs=1.0)
    assert row[112] == pytest.approx(box.top + 112.5 * cell_y, abs=1.0)
    assert col[10] == pytest.approx(box.left + 10.5 * cell_x, abs=1.0)
    assert row[10] == pytest.approx(box.top + 10.5 * cell_y, abs=1.0)
    assert col[213] == pytest.approx(box.left + 213.5 * cell_x, abs=1.0)
    assert row[213] == pytest.approx(box.top + 213.5 * cell_y, abs=1.0)


# --- a user's own model -----------------------------------------------------------------------

def test_factory_model() -> None:
    loaded = load_model("tinymodels:tiny_features", "DEFAULT")
    assert isinstance(loaded.module, tinymodels.TinyFeatures)
    assert loaded.source == "factory" and loaded.weights == "as built"
    assert loaded.preprocess == Preprocess()
    x = example_batch()
    expected = tinymodels.tiny_features().eval()
    assert torch.equal(seed_loop(loaded.module.eval(), x, 3), seed_loop(expected, x, 3))
    # a class is a factory too
    assert isinstance(load_model("tinymodels:TinyResidual", "DEFAULT").module, tinymodels.TinyResidual)


def test_factory_from_the_current_folder_leaves_sys_path_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package in the current folder is found (as ``python -m`` would find it), also when the
    factory imports more of it while building, and ``sys.path`` is as it was afterwards."""
    import sys

    package = tmp_path / "cwdpkg_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "parts.py").write_text("import torch\nLAYER = lambda: torch.nn.Conv2d(3, 4, 3)\n")
    (package / "net.py").write_text(
        "import torch\n"
        "def build():\n"
        "    from cwdpkg_models.parts import LAYER  # imported while building\n"
        "    return torch.nn.Sequential(LAYER())\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in {"", str(tmp_path)}])
    before = list(sys.path)
    try:
        loaded = load_model("cwdpkg_models.net:build", "none")
        assert isinstance(loaded.module[0], torch.nn.Conv2d)
        assert sys.path == before
    finally:
        for name in [n for n in sys.modules if n.startswith("cwdpkg_models")]:
            del sys.modules[name]


@pytest.mark.parametrize(("spec", "words"), [
    ("tinymodels:not_a_module", ["returned str", "not a torch.nn.Module"]),
    ("tinymodels:tiny_feature", ["no attribute 'tiny_feature'", "tiny_features"]),
    ("tinymodelz:tiny_features", ["cannot import 'tinymodelz'"]),
])
def test_factory_errors(spec: str, words: list[str]) -> None:
    with pytest.raises(ModelError) as caught:
        load_model(spec, "DEFAULT")
    for word in words:
        assert word in str(caught.value)


def _script(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script/save are deprecated
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def test_torchscript_model_file(tmp_path: Path, cat_photo: Path) -> None:
    eager = other_tiny_features()
    path = _script(eager, tmp_path / "tiny.pt")
    loaded = load_model(str(path), "DEFAULT")
    assert loaded.source == "torchscript" and loaded.weights == "as saved"
    assert loaded.preprocess == Preprocess()

    import featviz

    results = featviz.visualize(cat_photo, model=str(path), layers=[0, 3], weights="DEFAULT")
    x = Preprocess()(Image.open(cat_photo).convert("RGB"))[None]
    for result, k in zip(results, (0, 3), strict=True):
        assert result.layer.path == f"features.{k}"
        assert result.layer.type_name == type(eager.features[k]).__name__
        torch.testing.assert_close(result.activations, seed_loop(eager, x, k)[0], rtol=0, atol=1e-6)
    assert results[0].activations.min() < 0  # captured before the in-place ReLU ran

    out = tmp_path / "out"
    result = invoke(["show", cat_photo, "--model", path, "--layer", "3", "--out", out, "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "chelsea" / "features.3" / "grid.png").is_file()


def test_not_a_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(tinymodels.tiny_features().state_dict(), path)
    with pytest.raises(ModelError, match="is not a TorchScript model") as caught:
        load_model(str(path), "DEFAULT")
    assert "--weights" in caught.value.hint
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.pt"), "DEFAULT")


def test_torchscript_with_a_weights_file(tmp_path: Path) -> None:
    path = _script(tinymodels.tiny_features(), tmp_path / "tiny.pt")
    state_path = tmp_path / "other.pt"
    torch.save(other_tiny_features().state_dict(), state_path)
    loaded = load_model(str(path), str(state_path))
    x = example_batch()
    torch.testing.assert_close(loaded.module.features(x), other_tiny_features().features(x), rtol=0, atol=0)


# --- devices ----------------------------------------------------------------------------------

def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA .*not available"):
            resolve_device("cuda")
        with pytest.raises(UsageError):
            resolve_device("cuda:1")
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()):
            assert resolve_device("auto") == torch.device("cpu")
