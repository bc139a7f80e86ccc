"""``--heads``, ``--cam rollout``/``relevance`` on show, export, sweep and the API: files, numbers, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.capture.tokens import TokenLayout
from featviz.cli.main import main
from featviz.models.preprocess import CropBox
from featviz.output.heads import heads_pictures, patch_box
from featviz.output.options import RenderOptions
from featviz.output.pipeline import Visualizer
from vitmodels import timm_reference

VIT = ["--model", "timm:vit_tiny_patch16_224", "--weights", "none", "--resize", "32", "--crop", "32",
       "--model-kwargs", '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}']
KWARGS = {"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}


def invoke(args: list[object]):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_show_writes_heads_masks_raw_probabilities_and_transformer_cams(cat_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(["show", cat_photo, *VIT, "--layer", "blocks.0", "--heads", "--heads-threshold", "0.6",
                     "--cam", "rollout,relevance", "--target", "top,2", "--cam-score", "--cam-score-steps", "2",
                     "--save-raw", "--out", out])
    assert result.exit_code == 0, result.output
    folder = out / "chelsea" / "blocks.0"
    written = sorted(p for p in folder.rglob("*") if p.is_file())
    estimate = Visualizer("timm:vit_tiny_patch16_224", "none", ["blocks.0"], resize=32, crop=32, model_kwargs=KWARGS,
                          options=RenderOptions(heads=True, heads_threshold=0.6, save_raw=True)).output_estimate()
    cam_files = 4  # cam/rollout.png, cam/relevance-<top>.png, cam/relevance-2.png, cam.npz: not estimated
    assert estimate.files == len(written) - cam_files
    summary = json.loads((folder / "summary.json").read_text())
    names = ["head-00", "head-01", "head-02", "mean"]
    assert summary["heads"]["names"] == names and summary["heads"]["block"] == "blocks.0"
    for name in names:
        assert (folder / "heads" / f"{name}.png").is_file() and (folder / "heads" / f"{name}-mask.png").is_file()
    # attention_heads.npy: the raw class-token probabilities to the patches, not renormalised
    vis = Visualizer("timm:vit_tiny_patch16_224", "none", ["blocks.0"], resize=32, crop=32, model_kwargs=KWARGS,
                     options=RenderOptions(heads=True))
    x = vis.prepare(cat_photo).tensor[None]
    with torch.no_grad():
        _, attentions = timm_reference(vis.loaded.module, x)
    raw = np.load(folder / "attention_heads.npy")
    assert raw.dtype == np.float32 and raw.shape == (3, 4, 4)
    np.testing.assert_allclose(raw, attentions[0][0, :, 0, 1:].reshape(3, 4, 4).numpy(), atol=1e-5)
    np.testing.assert_allclose(summary["heads"]["patch_mass"][:3], raw.reshape(3, -1).sum(1), atol=1e-5)
    cams = {c["method"] + (f"-{c['target']}" if c["target"] is not None else ""): c for c in summary["cams"]}
    assert "rollout" in cams and "relevance-2" in cams and all("scores" in c for c in cams.values())
    with np.load(folder / "cam.npz") as npz:
        keys = set(npz.files)
    assert "rollout:none" in keys and "relevance:2" in keys and all(k.split(":")[0] in {"rollout", "relevance"}
                                                                    for k in keys)
    for name in cams:
        assert (folder / "cam" / f"{name}.png").is_file()


def test_export_and_sweep_take_the_same_options(cat_photo: Path, tmp_path: Path) -> None:
    result = invoke(["export", cat_photo, *VIT, "--layer", "blocks.1", "--cam", "rollout", "--rollout-fusion", "max",
                     "--rollout-discard", "0.5", "--rollout-start", "1", "--quiet", "--out", tmp_path / "e"])
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "e").rglob("blocks.1/summary.json")
    summary = json.loads(written.read_text())
    assert summary["options"]["drawing"]["rollout_fusion"] == "max"
    assert summary["options"]["drawing"]["rollout_start"] == 1
    result = invoke(["sweep", cat_photo, *VIT, "--layer", "blocks.0,blocks.1", "--heads", "--out", tmp_path / "s"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "chelsea" / "sweep.png").is_file()


@pytest.mark.parametrize("args, error", [
    (["--model", "alexnet", "--weights", "none", "--layer", "3", "--heads"], "alexnet has no self-attention blocks"),
    ([*VIT, "--layer", "patch_embed", "--cam", "rollout"], "layer patch_embed is no transformer block"),
    ([*VIT, "--layer", "blocks.1", "--heads", "--heads-threshold", "1.5"], "--heads-threshold 1.5 is out of range"),
    ([*VIT, "--layer", "blocks.1", "--heads-threshold", "0.5"], "--heads-threshold adds DINO's masks"),
    ([*VIT, "--layer", "blocks.1", "--cam", "relevance", "--rollout-discard", "1"],
     "--rollout-discard 1.0 is out of range"),
    (["--model", "timm:swin_tiny_patch4_window7_224", "--weights", "none", "--model-kwargs", '{"depths": [1, 1, 1, 1]}',
      "--layer", "layers.0", "--heads"], "windowed self-attention"),
])
def test_bad_requests_are_usage_errors_before_any_photo_is_read(args: list[str], error: str, tmp_path: Path) -> None:
    result = invoke(["show", tmp_path / "missing.jpg", *args, "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert error in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_patch_box_covers_only_what_the_patches_saw() -> None:
    box = CropBox(10.0, 20.0, 46.0, 56.0)  # a 36-px input drawn over 36 photo pixels
    layout = TokenLayout(prefix=1, grid=(4, 4), patch=(8, 8))  # 4 patches of 8 px: 32 of the 36 px
    assert patch_box(box, (36, 36), layout) == CropBox(10.0, 20.0, 42.0, 52.0)
    assert patch_box(box, (32, 32), layout) == box


def test_nearest_heads_are_flat_patches_exactly_where_the_patch_lies() -> None:
    photo = Image.new("RGB", (64, 48), (128, 128, 128))
    layout = TokenLayout(prefix=1, grid=(3, 4), patch=(16, 16))
    heads = torch.zeros(1, 3, 4)
    heads[0, 1, 2] = 1.0  # patch row 1, column 2: photo rows 16..31, columns 32..47
    pictures = dict(heads_pictures(photo, heads, CropBox(0, 0, 64, 48), (48, 64), layout, threshold=0.5,
                                   cmap="gray", alpha=1.0))
    head = np.asarray(pictures["heads/head-00.png"])[..., 0]
    hot = head > 200
    assert hot[16:32, 32:48].all() and hot.sum() == 16 * 16
    mask = np.asarray(pictures["heads/head-00-mask.png"])[..., 0] > 200
    assert np.array_equal(mask, hot)
    options = RenderOptions(heads=True, heads_upsample="bilinear").validate()
    assert options.heads_upsample == "bilinear"
