"""The seed script's own code paths (attention-notes section 3.1), as references for the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def seed_loop(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """``for i, layer in enumerate(model.features): x = layer(x); if i == k: return x``."""
    with torch.no_grad():
        for i, layer in enumerate(model.features):
            x = layer(x)
            if i == k:
                return x
    raise AssertionError(f"no layer {k}")


def photo_tensor(path: Path) -> torch.Tensor:
    """The seed's preprocessing with torchvision's own transforms: (1, 3, 224, 224)."""
    from torchvision import transforms as T

    pipeline = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    with Image.open(path) as image:
        return pipeline(image.convert("RGB"))[None]
