"""One output channel per image of a convolution (capture/onechannel.py): the same numbers and
input gradients as the whole convolution, the rule for when it pays, the modules it refuses, and
the optimiser's images unchanged by it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from featviz.capture import drive
from featviz.capture.drive import DrivenLayer
from featviz.capture.layers import resolve_layers
from featviz.capture.onechannel import is_plain_conv, one_channel_conv, worth_picking
from featviz.optimize.engine import OptimizeSettings, optimize

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

CONVS: list[dict[str, Any]] = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 5, "padding": 2, "stride": 2},
    {"kernel_size": 3, "padding": 2, "dilation": 2},
    {"kernel_size": (3, 2), "padding": "same", "bias": False},
    {"kernel_size": 4, "padding": "same"},  # even: the extra pixel right and bottom
    {"kernel_size": 3, "padding": "valid", "stride": (2, 1)},
    {"kernel_size": 3, "padding": 1, "groups": 4},
    {"kernel_size": 3, "padding": 1, "groups": 8, "out_channels": 8, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": (1, 2), "padding_mode": "circular"},
    {"kernel_size": 3, "padding": 1, "padding_mode": "replicate"},
    {"kernel_size": 1},
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("options", CONVS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_each_images_channel_and_its_input_gradient_are_the_convolutions(options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, options.pop("out_channels", 12), **options)
    x = torch.randn(5, 8, 11, 13, requires_grad=True)
    units = torch.tensor([0, 3, 7, 7, conv.out_channels - 1])
    full = conv(x)[torch.arange(5), units]
    weights = torch.randn(full.shape)  # a gradient that differs at every output pixel
    (expected,) = torch.autograd.grad((full * weights).sum(), x)
    picked = one_channel_conv(conv, x, units)
    (got,) = torch.autograd.grad((picked * weights).sum(), x)
    assert picked.shape == full.shape
    torch.testing.assert_close(picked, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_it_pays_where_the_tap_sums_are_smaller_than_the_whole_output() -> None:
    first = nn.Conv2d(3, 64, 11, stride=4, padding=2)  # AlexNet's features.0: 121 taps at 16x the pixels
    third = nn.Conv2d(64, 192, 5, padding=2)  # AlexNet's features.3: 25 taps against 192 channels
    assert not worth_picking(first, torch.zeros(2, 3, 224, 224))
    assert worth_picking(third, torch.zeros(2, 64, 27, 27))
    assert not worth_picking(nn.Conv2d(8, 4, 3, padding=1), torch.zeros(2, 8, 9, 9))  # 9 taps, 4 channels


def test_only_a_plain_convolution_is_vouched_for() -> None:
    class Standardised(nn.Conv2d):  # a subclass may compute something else (weight standardisation)
        pass

    hooked = nn.Conv2d(3, 8, 3)
    handle = hooked.register_forward_hook(lambda *args: None)
    patched = nn.Conv2d(3, 8, 3)
    patched.forward = lambda x: x  # type: ignore[method-assign]
    assert is_plain_conv(nn.Conv2d(3, 8, 3))
    assert not any(is_plain_conv(m) for m in (Standardised(3, 8, 3), hooked, patched, nn.ReLU()))
    handle.remove()
    assert is_plain_conv(hooked)


class TwiceConv(nn.Module):
    """One convolution called twice: ``conv@2`` is its second call."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.conv(torch.relu(self.stem(x))))
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("path, call", [("conv", 1), ("conv@2", 2)])
def test_the_driven_layer_picks_the_chosen_call_and_leaves_no_hook(path: str, call: int) -> None:
    torch.manual_seed(0)
    model = TwiceConv().eval()
    ref = resolve_layers(model, [path])[0]
    x = torch.randn(3, 3, 8, 8)
    units = torch.tensor([2, 0, 15])
    seen = torch.relu(model.stem(x))
    for _ in range(call):
        seen = model.conv(seen)
    with DrivenLayer(model, ref, redirect=False, pick=units) as driven:
        got = driven.run(x.clone().requires_grad_())
        assert driven.picked
    assert got is not None
    torch.testing.assert_close(got, seen[torch.arange(3), units], rtol=1e-5, atol=1e-6)
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())


class Wide(nn.Module):
    """A last convolution of 5 x 5 into 96 channels: picking pays (16 px: 25 x 144 < 96 x 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 96, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_the_optimised_images_are_those_of_the_whole_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Wide()
    ref = resolve_layers(model, ["features.2"])[0]
    settings = OptimizeSettings(steps=8, size=16, jitter_only=False)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    picks: list[bool] = []
    original = DrivenLayer.run

    def spy(self: DrivenLayer, images: torch.Tensor, redirect: bool | None = None) -> torch.Tensor | None:
        result = original(self, images, redirect)
        picks.append(self.picked)
        return result

    monkeypatch.setattr(DrivenLayer, "run", spy)
    picked = optimize(model, ref, [0, 5, 95], settings, mean, std)
    assert picks and all(picks)
    picks.clear()
    monkeypatch.setattr(drive, "worth_picking", lambda module, inputs: False)
    whole = optimize(model, ref, [0, 5, 95], settings, mean, std)
    assert picks and not any(picks)
    torch.testing.assert_close(picked.images, whole.images, rtol=0, atol=1e-4)
    assert picked.activation == pytest.approx(whole.activation, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("path, shape", [("features.0", (2, 8, 8, 8)), ("features.1", (2, 8, 8, 8))])
def test_a_layer_where_picking_does_not_pay_or_apply_gives_its_whole_output(path: str, shape: tuple[int, ...]) -> None:
    model = Wide()  # features.0: 9 taps x 18 x 18 padded pixels against 8 x 8 x 8; features.1: a ReLU
    ref = resolve_layers(model, [path])[0]
    with DrivenLayer(model, ref, redirect=False, pick=torch.tensor([0, 1])) as driven:
        got = driven.run(torch.randn(2, 3, 16, 16))
        assert not driven.picked and got is not None and got.shape == shape
