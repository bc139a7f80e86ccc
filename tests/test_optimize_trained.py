"""featviz optimize on a network that learned something (issue 19): on the trained
``examples/cbam_shapes`` network, each channel of ``conv2`` reaches with its optimised image at
least the best mean activation over 300 held-out synthetic photos, and each channel's own image
is the best of the set for that channel (the issue asks 90 %): with Lucid's standard transforms
24 of 32 channels at 64 steps (the test holds 70 %); with ``--transforms jitter`` (no pad, no
resampling: the standard set is sized for ~224 px) 31 of 32 (the test holds 90 %). See
docs/optimize.md, "Own image, best image"."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featviz.capture.layers import LayerRef, resolve_layers
from featviz.models.build import load_model
from featviz.optimize.engine import OptimizeSettings, activation_of, optimize

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "cbam_shapes.py"
WEIGHTS = ROOT / "examples" / "cbam_shapes.safetensors"


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, LayerRef, tuple[float, ...], tuple[float, ...], torch.Tensor]:
    """The trained model, conv2, its normalisation and the best spatial mean of each channel over
    300 held-out synthetic photos (float32 (32,))."""
    spec = importlib.util.spec_from_file_location("cbam_shapes_for_optimize", SCRIPT)
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    loaded = load_model(f"{SCRIPT}:build", str(WEIGHTS))
    model, pre = loaded.module, loaded.preprocess
    ref = resolve_layers(model, ["conv2"])[0]
    rng = np.random.default_rng(2024)  # not the training seed
    photos = torch.stack([torch.from_numpy(shapes.photo(rng, 32, 32)[0]).permute(2, 0, 1).float() / 255
                          for _ in range(300)])
    best_photo = activation_of(model, ref, photos, pre.mean, pre.std).max(dim=0).values  # (32,)
    return model, ref, tuple(pre.mean), tuple(pre.std), best_photo


@pytest.mark.parametrize(("jitter_only", "own_share"), [(False, 0.7), (True, 0.9)])
def test_optimised_images_beat_the_best_photo_for_nearly_every_live_channel(trained, jitter_only: bool,
                                                                            own_share: float) -> None:
    model, ref, mean, std, best_photo = trained
    live = best_photo > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        result = optimize(model, ref, list(range(32)), OptimizeSettings(steps=64, size=32, jitter_only=jitter_only),
                          mean, std)
        seconds = time.perf_counter() - start
        acts = activation_of(model, ref, result.images, mean, std)  # (images, channels)
    finally:
        torch.set_num_threads(threads)
    own = acts.diagonal()
    # the activation the engine reports is the one measured independently here
    torch.testing.assert_close(torch.tensor(result.activation, dtype=torch.float32), own, rtol=1e-4, atol=1e-5)
    reached = int(((own >= best_photo) & live).sum())
    assert reached >= 0.9 * int(live.sum()), (reached, int(live.sum()))  # measured: 32 of 32
    # the channels are 1x1-conv colour detectors: several share an optimum (a saturated colour), so
    # "best of the set" allows ties within 5 % of the set's best for that channel
    own_best = int(((own >= 0.95 * acts.max(dim=0).values) & live).sum())
    # measured: 24 of 32 (standard), 31 of 32 (jitter; channel 23 is the one: image 29 excites it more)
    assert own_best >= own_share * int(live.sum()), (own_best, int(live.sum()), seconds)
