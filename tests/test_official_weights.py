"""torchvision's own weight files work offline: a file under its official name (or named with
--weights NAME --weights-file PATH) gets those weights' class names and preprocessing.

The files here are random state dicts (seeded) saved under official names: nothing is
downloaded, so their SHA-256 differs from the official one, which featviz notes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.models.build import load_model
from featviz.models.official import recognise, sha256_matches

V1, V2 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mobilenet_v2 (3.5 M parameters, 14 MB) with seeded random weights, as a state dict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path_factory.mktemp("weights") / "state.pth"
    torch.save(model.state_dict(), path)
    return path


def named(source: Path, folder: Path, name: str) -> Path:
    target = folder / name
    target.symlink_to(source)
    return target


def test_official_file_name_gives_imagenet_names_and_the_weights_preprocessing(
        tmp_path: Path, state_dict_file: Path, cat_photo: Path) -> None:
    assert Path(V2.url).name == "mobilenet_v2-7ebf99e0.pth"
    weights = named(state_dict_file, tmp_path, "mobilenet_v2-7ebf99e0.pth")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["show", str(cat_photo), "--model", "mobilenet_v2", "--weights", str(weights),
                                       "--layer", "0", "--channels", "0", "--size", "8", "--predict", "--out", str(out),
                                       "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "chelsea" / "features.0" / "summary.json").read_text(encoding="utf-8"))
    assert summary["weights"] == f"MobileNet_V2_Weights.IMAGENET1K_V2 from {weights}"
    labels = [p["label"] for p in summary["predictions"]]
    assert len(labels) == 5 and set(labels) <= set(V2.meta["categories"])
    # IMAGENET1K_V2's preprocessing: shorter side to 232 (the generic pipeline uses 256), crop 224
    assert (V2.transforms().resize_size, V2.transforms().crop_size) == ([232], [224])
    with Image.open(cat_photo) as photo:
        width, height = photo.size
    long = int(232 * max(width, height) / min(width, height))  # torchvision's rule for an int size
    new_w, new_h = (long, 232) if width > height else (232, long)
    left, top = round((new_w - 224) / 2), round((new_h - 224) / 2)
    expected = [left * width / new_w, top * height / new_h, (left + 224) * width / new_w, (top + 224) * height / new_h]
    assert summary["crop_box"] == pytest.approx(expected, abs=0.01)
    # a copy that is not the official file (its hash differs) is said so, in one warning line
    assert result.stderr.splitlines() == [
        f"warning: {weights}: its SHA-256 does not start with 7ebf99e0, so it is not torchvision's own "
        "mobilenet_v2-7ebf99e0.pth; using its class names and preprocessing all the same"]


def test_a_renamed_copy_is_named_with_weights_file(tmp_path: Path, state_dict_file: Path) -> None:
    loaded = load_model("mobilenet_v2", "IMAGENET1K_V1", weights_file=state_dict_file)
    assert loaded.weights == f"MobileNet_V2_Weights.IMAGENET1K_V1 from {state_dict_file}"
    assert loaded.preprocess.resize == V1.transforms().resize_size[0] == 256
    assert loaded.categories == list(V1.meta["categories"])
    own = torch.load(state_dict_file, weights_only=True)
    assert all(torch.equal(own[k], v) for k, v in loaded.module.state_dict().items())
    # without a name and under an unofficial name: the generic pipeline and no class names
    plain = load_model("mobilenet_v2", named(state_dict_file, tmp_path, "mine.pth"))
    assert plain.categories is None and plain.weights.endswith("mine.pth")


def test_a_renamed_copy_that_keeps_the_hash_is_recognised(tmp_path: Path) -> None:
    found = recognise(tmp_path / "copy-of-7ebf99e0.pth", "mobilenet_v2")
    assert found is not None and found.weights is V2
    assert recognise(tmp_path / "alexnet-owt-7be5be79.pth", "mobilenet_v2").model == "alexnet"
    assert recognise(tmp_path / "model-best.pth", "mobilenet_v2") is None


def test_another_models_file_is_refused_with_the_right_model(tmp_path: Path, state_dict_file: Path) -> None:
    weights = named(state_dict_file, tmp_path, "mobilenet_v2-7ebf99e0.pth")
    result = CliRunner().invoke(main, ["layers", "--model", "alexnet", "--weights", str(weights)])
    assert result.exit_code == 2
    expected = "is torchvision's MobileNet_V2_Weights.IMAGENET1K_V2 file, made for mobilenet_v2, not alexnet"
    assert expected in result.stderr
    assert "Hint: use --model mobilenet_v2" in result.stderr


def test_weights_file_needs_a_weights_name(state_dict_file: Path) -> None:
    result = CliRunner().invoke(main, ["layers", "--model", "mobilenet_v2", "--weights", "none",
                                       "--weights-file", str(state_dict_file)])
    assert result.exit_code == 2 and "--weights-file needs --weights to name" in result.stderr


def test_the_hash_check_reads_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"featviz" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_matches(path, SimpleNamespace(url=f"https://example/blob-{digest[:8]}.pth")) is True
    other = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    assert sha256_matches(path, SimpleNamespace(url=f"https://example/blob-{other}.pth")) is False
    assert sha256_matches(path, SimpleNamespace(url="https://example/blob.pth")) is None
