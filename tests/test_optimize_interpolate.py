"""featviz optimize --interpolate A,B --frames N: a row of images from channel A to channel B in
one PNG and a JSON, checked against activations measured here on the PNG's own pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import tinymodels
from featviz.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY = ["optimize", "--model", "tinymodels:tiny_features", "--weights", "none", "--layer", "features.3", "--quiet"]


def spatial_means(frames: np.ndarray) -> torch.Tensor:
    """Every channel's spatial mean of features.3 on uint8 (N, H, W, 3) frames: float64 (N, C),
    computed here with the model's own modules, not featviz's capture."""
    model = tinymodels.tiny_features().eval()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.features[:4](x).double().mean(dim=(2, 3))


def test_the_row_moves_from_channel_a_to_channel_b(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*TINY, "--interpolate", "2,5", "--frames", "4", "--steps", "20", "--size", "20",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = out / "features.3" / "interpolation"
    document = json.loads((folder / "0002-0005.json").read_text())
    with Image.open(folder / "0002-0005.png") as picture:
        assert picture.size == (4 * 22 + 2, 24)  # four 20 px frames, 2 px white gaps
        pixels = np.array(picture.convert("RGB"))
    assert (pixels[:2] == 255).all() and (pixels[:, 22:24] == 255).all()
    frames = np.stack([pixels[2:22, 2 + i * 22:22 + i * 22] for i in range(4)])
    means = spatial_means(frames)
    assert [f["t"] for f in document["frames"]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    for i, frame in enumerate(document["frames"]):
        a, b = frame["activation"]["2"], frame["activation"]["5"]
        # recorded from the float image; measured here from the PNG (pixels rounded to 1/255)
        assert a == pytest.approx(float(means[i, 2]), rel=0.05, abs=0.01)
        assert b == pytest.approx(float(means[i, 5]), rel=0.05, abs=0.01)
        t = frame["t"]
        assert frame["objective"] == pytest.approx((1 - t) * a + t * b, rel=1e-4, abs=1e-5)
    # the first frame leans to channel 2 and the last to channel 5
    assert means[0, 2] - means[0, 5] > means[3, 2] - means[3, 5]
    assert means[0, 2] > means[3, 2] and means[3, 5] > means[0, 5]
    assert document["settings"]["steps"] == 20 and document["first"] == 2 and document["second"] == 5


@pytest.mark.parametrize(("args", "words"), [
    (["--interpolate", "3"], "give two channels as A,B"),
    (["--interpolate", "3,3"], "the two channels are the same"),
    (["--interpolate", "0,99"], "channel 99 is out of range"),
    (["--interpolate", "0,1", "--frames", "1"], "at least 2 images"),
    (["--interpolate", "0,1", "--objective", "neuron"], "channel objective only"),
    (["--interpolate", "0,1", "--diversity", "2"], "does not take --diversity"),
    (["--interpolate", "0,1", "--atlas", "somewhere"], "does not go into an --atlas"),
])
def test_bad_interpolations_are_refused_before_any_step(tmp_path: Path, args: list[str], words: str) -> None:
    result = CliRunner().invoke(main, [*TINY, "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
