"""Small models with squeeze-and-excitation blocks, and models whose layer outputs known
activations, for ``test_attention_mechanisms.py``.

Importable as ``semodels`` (pytest puts tests/ on sys.path), so the CLI can load them as
``--model semodels:tiny_se``. Every factory is deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

SE_CHANNELS = 8
SE_SQUEEZE = 4


def se_fc1_weight() -> torch.Tensor:
    """(squeeze, C): W1[i, j] = 0.6 sin(1.3 i + 0.7 j + 0.2)."""
    return torch.tensor([[0.6 * math.sin(1.3 * i + 0.7 * j + 0.2) for j in range(SE_CHANNELS)]
                         for i in range(SE_SQUEEZE)])


def se_fc1_bias() -> torch.Tensor:
    return torch.tensor([0.1, -0.2, 0.3, 0.05])


def se_fc2_weight() -> torch.Tensor:
    """(C, squeeze): W2[i, j] = 0.8 cos(0.9 i - 1.1 j)."""
    return torch.tensor([[0.8 * math.cos(0.9 * i - 1.1 * j) for j in range(SE_SQUEEZE)]
                         for i in range(SE_CHANNELS)])


def se_fc2_bias() -> torch.Tensor:
    """Spread over -2.5..2.5 in no particular order, so the gates spread over (0, 1) and their
    order is not the channel order."""
    return torch.tensor([0.5, -2.5, 2.0, -1.0, 2.5, -0.3, 1.2, -1.8])


def _set_se_weights(fc1: nn.Module, fc2: nn.Module) -> None:
    with torch.no_grad():
        fc1.weight.copy_(se_fc1_weight().reshape(fc1.weight.shape))
        fc1.bias.copy_(se_fc1_bias())
        fc2.weight.copy_(se_fc2_weight().reshape(fc2.weight.shape))
        fc2.bias.copy_(se_fc2_bias())


class TinySE(nn.Module):
    """conv -> ReLU -> torchvision SqueezeExcitation (``features.2``) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, SE_CHANNELS, kernel_size=3, stride=4, padding=1),
            nn.ReLU(),
            SqueezeExcitation(SE_CHANNELS, SE_SQUEEZE),
            nn.Conv2d(SE_CHANNELS, 6, kernel_size=3, padding=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        se = self.features[2]
        _set_se_weights(se.fc1, se.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class UserSE(nn.Module):
    """A user's own SE block: pool, 1x1 conv, ReLU, 1x1 conv, sigmoid; x times the gate."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class LinearSE(nn.Module):
    """The SENet paper's form: pool, flatten, FC, ReLU, FC, sigmoid, as linear layers."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.flatten(self.pool(x))))))
        return x * gate[:, :, None, None]


class UserSENet(nn.Module):
    """Two user SE blocks of different forms: ``features.2`` (convolutions), ``features.4`` (linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=4, padding=1),
            nn.ReLU(),
            UserSE(8),
            nn.Conv2d(8, 6, kernel_size=3, padding=1),
            LinearSE(6, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Const(nn.Module):
    """Outputs a fixed (1, C, H, W) tensor for every image of the batch, whatever the input."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1, -1, -1).clone()


class FixedActivations(nn.Module):
    """A model whose only layer, ``features.0``, outputs known activations."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Sequential(Const(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def random_activations(channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(1, C, H, W) standard normal values (both signs), from their own generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, height, width, generator=generator)


CBAM_SHAPE = (6, 5, 7)
DCT_SHAPE = (32, 14, 14)


def tiny_se() -> nn.Module:
    torch.manual_seed(0)
    return TinySE()


def user_se() -> nn.Module:
    torch.manual_seed(0)
    return UserSENet()


def fixed_cbam() -> nn.Module:
    return FixedActivations(random_activations(*CBAM_SHAPE, seed=11))


def fixed_dct() -> nn.Module:
    return FixedActivations(random_activations(*DCT_SHAPE, seed=12))
