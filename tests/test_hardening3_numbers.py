"""Issue 20, item 10: numbers that meant nothing.

* A one-output model (N x 1 logits): the softmax of one logit is 1.0 for every photo, so the
  probability, every Score-CAM weight and every deletion/insertion area came out 1.0. featviz now
  uses the sigmoid of that logit (the probability a binary classifier's one output stands for).
* Score-CAM masks of constant channels: upsampling a constant channel leaves rounding noise
  that min-max scaling stretched to a full 0..1 mask (424 of 512 channels of a 1x1 layer here);
  the manual promises an all-zero mask, decided now on the layer-resolution channel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.maps.cam import cam_at_input, scorecam_masks
from featviz.maps.targets import class_probabilities

ONE_LOGIT = """
import torch
from torch import nn

def binary():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
"""


def test_class_probabilities_against_closed_forms() -> None:
    logits = torch.tensor([[-2.0], [0.0], [3.5]])
    expected = [1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-3.5))]
    assert class_probabilities(logits)[:, 0].tolist() == torch.tensor(expected).tolist()
    wide = torch.tensor([[1.0, 2.0, 0.5]])
    e = [math.exp(v) for v in (1.0, 2.0, 0.5)]
    assert torch.allclose(class_probabilities(wide)[0], torch.tensor([v / sum(e) for v in e]), rtol=0, atol=1e-7)


def test_a_one_logit_model_gets_sigmoid_probabilities_weights_and_areas(tmp_path: Path, user_module) -> None:
    name = user_module(ONE_LOGIT)
    (tmp_path / "in").mkdir()
    photo = tmp_path / "in" / "p.png"
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(photo.parent), "--model", f"{name}:binary", "--weights", "none",
                                       "--layer", "2", "--size", "16", "--workers", "1", "--predict",
                                       "--cam", "scorecam,gradcam", "--cam-score", "--cam-score-steps", "4",
                                       "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "p" / "2" / "summary.json").read_text(encoding="utf-8"))
    cams = summary["cams"]
    for cam in cams:
        sigmoid = 1 / (1 + math.exp(-cam["logit"]))
        assert abs(cam["probability"] - sigmoid) < 1e-6 and cam["probability"] != 1.0
    assert abs(summary["predictions"][0]["probability"] - 1 / (1 + math.exp(-cams[0]["logit"]))) < 1e-6
    scorecam = next(c for c in cams if c["method"] == "scorecam")
    weights = [w for w in scorecam["weights"] if w != 0.0]
    assert weights and all(0.0 < w < 1.0 for w in weights)  # sigmoids of masked photos, not 1.0
    areas = [c["scores"][k] for c in cams for k in ("deletion_auc", "insertion_auc")]
    assert all(0.0 <= a < 1.0 for a in areas), areas


def test_score_cam_masks_of_constant_channels_are_zero() -> None:
    torch.manual_seed(0)
    one_by_one = torch.rand(1, 512, 1, 1) * 5  # every channel of a 1x1 layer is constant
    assert torch.count_nonzero(scorecam_masks(one_by_one, (64, 64))) == 0
    layer = torch.rand(2, 4, 3, 3)
    layer[0, 1] = 0.7  # a constant channel among varying ones
    layer[1, 3] = 0.0
    masks = scorecam_masks(layer, (20, 20))
    assert torch.count_nonzero(masks[0, 1]) == 0 and torch.count_nonzero(masks[1, 3]) == 0
    for n, c in [(0, 0), (0, 2), (1, 0), (1, 2)]:  # the others: min-max scaled, 0 and 1 reached
        assert masks[n, c].min() == 0.0 and masks[n, c].max() == 1.0
    # the faithfulness scores order pixels by the same kind of map: a constant map is 0 there too
    assert torch.count_nonzero(cam_at_input(torch.full((1, 1, 1), 0.3), (64, 64))) == 0
