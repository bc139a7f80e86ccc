"""--stn: the sampling grid of a spatial transformer, captured without hooks and drawn in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import featviz
from featviz.capture.stn import AffineGridRecorder, grid_points
from featviz.cli.main import main
from stnmodels import THETA


def test_recorder_sees_affine_grid_and_restores_the_operator() -> None:
    original = torch.affine_grid_generator
    theta = torch.tensor([[[1.0, 0.2, 0.1], [0.0, 0.9, -0.3]]])
    with AffineGridRecorder() as recorder:
        grid = F.affine_grid(theta, [1, 3, 8, 8], align_corners=False)
    assert torch.affine_grid_generator is original
    assert len(recorder.thetas) == 1 and torch.equal(recorder.thetas[0], theta)
    assert recorder.sizes == [[1, 3, 8, 8]]
    assert torch.equal(grid, F.affine_grid(theta, [1, 3, 8, 8], align_corners=False))


def test_recorder_restores_the_operator_when_the_forward_pass_raises() -> None:
    original = torch.affine_grid_generator
    with pytest.raises(RuntimeError), AffineGridRecorder():
        raise RuntimeError("boom")
    assert torch.affine_grid_generator is original


def test_grid_points_apply_theta_to_the_output_lattice() -> None:
    points = grid_points(THETA, steps=3)
    # Output corner (-1, -1) samples input (0.5 * -1 - 0.5) = -1; output (1, 1) samples 0.
    assert points[0, 0].tolist() == pytest.approx([-1.0, -1.0])
    assert points[2, 2].tolist() == pytest.approx([0.0, 0.0])
    assert points[1, 1].tolist() == pytest.approx([-0.5, -0.5])


def test_stn_grid_is_drawn_on_the_window_the_transformer_looks_through(tmp_path: Path) -> None:
    # 400x300 photo; resize 256 -> 341x256, crop 224: crop box x 58.6..321.4, y 18.75..281.25.
    photo = Image.new("RGB", (400, 300), (0, 0, 0))
    path = tmp_path / "black.png"
    photo.save(path)
    result = featviz.visualize(path, model="stnmodels:fixed_stn", weights="none", stn=True, out=tmp_path / "out")[0]
    assert torch.allclose(result.stn_theta, THETA, atol=1e-6)
    drawn = np.asarray(Image.open(tmp_path / "out" / "black" / "features.0" / "stn_grid.png"))
    coloured = np.argwhere(drawn.sum(axis=2) > 0)
    box = result.box
    # THETA looks at the upper-left quarter of the network's input.
    left, top = box.left, box.top
    right = box.left + (box.right - box.left) / 2
    bottom = box.top + (box.bottom - box.top) / 2
    assert coloured[:, 1].min() == pytest.approx(left, abs=3) and coloured[:, 1].max() == pytest.approx(right, abs=3)
    assert coloured[:, 0].min() == pytest.approx(top, abs=3) and coloured[:, 0].max() == pytest.approx(bottom, abs=3)
    summary = json.loads((tmp_path / "out" / "black" / "features.0" / "summary.json").read_text())
    assert np.allclose(summary["stn_theta"], THETA.numpy(), atol=1e-6)
    assert "stn_grid.png" in summary["files"]


def test_stn_on_a_model_without_a_transformer_is_a_usage_error(tmp_path: Path, cat_photo: Path) -> None:
    result = CliRunner().invoke(main, ["show", str(cat_photo), "--model", "tinymodels:tiny_features",
                                       "--weights", "none", "--stn", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "never called" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.rglob("*.png"))
