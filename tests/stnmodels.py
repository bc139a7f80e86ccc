"""A tiny spatial transformer with a fixed, known affine transform (for the STN tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The transform the localisation head always predicts: zoom in by 2 on the upper-left quarter
#: (output x, y in [-1, 1] sample input x/2 - 0.5, y/2 - 0.5).
THETA = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]])


class FixedSTN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.localization = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 6))
        nn.init.zeros_(self.localization[2].weight)
        with torch.no_grad():
            self.localization[2].bias.copy_(THETA.flatten())
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.localization(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        return self.head(self.features(x).mean(dim=(2, 3)))


def fixed_stn() -> nn.Module:
    torch.manual_seed(0)
    return FixedSTN()
