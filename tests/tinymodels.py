"""Small, seeded CNNs for the tests: fast, offline, with known structure.

Importable as ``tinymodels`` (pytest puts tests/ on sys.path), so the CLI can load them as
``--model tinymodels:tiny_features``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyFeatures(nn.Module):
    """AlexNet's shape in miniature: ``features`` (with an in-place ReLU right after the first
    convolution, as AlexNet has), then a pooled classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=5, stride=2, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyResidual(nn.Module):
    """No ``features``: layers are the top-level children, as in ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Broken(nn.Module):
    """Raises inside its forward pass, after the first layer ran."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # shape mismatch: always fails


def tiny_features() -> nn.Module:
    torch.manual_seed(0)
    return TinyFeatures()


def tiny_residual() -> nn.Module:
    torch.manual_seed(0)
    return TinyResidual()


def not_a_module() -> str:
    return "nope"


def tiny_dead_channel() -> nn.Module:
    """TinyFeatures whose channel 5 of ``features.3`` has a bias so negative that it is never
    positive on images (a dead channel after ``features.4``'s ReLU)."""
    model = tiny_features()
    with torch.no_grad():
        model.features[3].bias[5] = -1000.0
    return model
