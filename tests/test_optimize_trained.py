"""featviz optimize on a network that learned something (issue 19), the issue's check at the
issue's size: on the trained ``examples/cbam_shapes`` network (its photos and input are 64 px),
each live channel of ``conv2`` reaches with its optimised image at least the best mean
activation over 300 held-out synthetic photos, and each channel's own image is the best of the
set for that channel, both for at least 90 % of the live channels, with the DEFAULT settings
(at 64 px: ``--transforms auto``, i.e. jitter only) except the steps: 64 instead of 512, so that
it takes a few seconds on one thread. Measured (seeds 0, 1, 2): 32 of 32 reach the best photo;
own image best 29, 29, 29 of 32 at 64 steps. Lucid's standard transforms at 64 px: 23, 22, 21 at
64 steps (24, 23, 20 with featviz's one resampling), 29, 27, 29 at 512: this test fails with them.
See docs/optimize.md, "Own image, best image"."""

from __future__ import annotations

import time

import pytest
import torch

from examplescripts import cbam_conv2
from featviz.capture.layers import LayerRef
from featviz.optimize.engine import OptimizeSettings, activation_of, optimize

SIZE = 64  # the example's photos and the model's input (examples/cbam_shapes.py: SIDE)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, LayerRef, tuple[float, ...], tuple[float, ...], torch.Tensor]:
    """The trained model, conv2, its normalisation and the best spatial mean of each channel over
    300 held-out synthetic 64 px photos (float32 (32,))."""
    trained = cbam_conv2(SIZE)
    assert trained.shapes.SIDE == SIZE
    return trained.model, trained.ref, trained.mean, trained.std, trained.best_photo


def test_optimised_images_beat_the_best_photo_and_are_their_channels_best_at_64_px(trained) -> None:
    model, ref, mean, std, best_photo = trained
    live = best_photo > 0
    settings = OptimizeSettings(steps=64, size=SIZE)  # the defaults but the steps
    assert settings.uses_jitter_only()  # the default at 64 px
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        result = optimize(model, ref, list(range(32)), settings, mean, std)
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
    assert own_best >= 0.9 * int(live.sum()), (own_best, int(live.sum()), seconds)  # measured: 29 of 32
