"""A tiny CNN with CBAM blocks, trained in seconds on synthetic photos, so featviz can show
attention that was learned (random weights make every gate about 0.5 and every picture noise).

Each photo (64x64, or wider for the tests) is clutter (dots of every class colour, smaller than
the target) with one filled disc of radius 6 at a random place; the label is the disc's colour
(red, green, blue). To be right the network must find the disc among dots of the same colours,
which is what CBAM's spatial gate is for.

    python examples/cbam_shapes.py            # retrain (seed 0) and write examples/cbam_shapes.safetensors
    featviz show photo.png --model examples/cbam_shapes.py:build \\
        --weights examples/cbam_shapes.safetensors --resize 64 --crop 64 \\
        --layer cbam2 --channel learned --spatial learned

The CBAM blocks follow Woo et al. (2018): channel gate sigma(MLP(avgpool) + MLP(maxpool)), then
spatial gate sigma(conv7x7([mean_c; max_c])), each multiplying the features.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

COLOURS = ((230, 40, 40), (40, 200, 40), (50, 80, 235))  # red, green, blue: the classes
SIDE = 64
RADIUS = 6
DOTS = 40  # enough that the commonest colour among the dots is often not the disc's
WEIGHTS = Path(__file__).with_suffix(".safetensors")


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                 nn.Conv2d(channels // reduction, channels, 1))
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))


class SpatialGate(nn.Module):
    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = ChannelGate(channels)
        self.spatial = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # 1x1 convolutions and a max pool: the features see colour, not size; only the spatial
        # gates' 7x7 kernels (on a 16x16 grid) see far enough to tell the disc from the dots
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4))
        self.cbam1 = CBAM(16)
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.cbam2 = CBAM(32)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, len(COLOURS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cbam2(self.conv2(self.cbam1(self.conv1(x)))))


def build() -> nn.Module:
    """The network (about 25 k parameters); featviz loads it as ``examples/cbam_shapes.py:build``."""
    return Net()


def photo(rng: np.random.Generator, width: int = SIDE, height: int = SIDE,
          region: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """One photo: uint8 (H, W, 3), its label, and the disc's box (left, top, right, bottom) in
    pixels. ``region`` (left, top, right, bottom) bounds where the disc's centre may lie."""
    pixels = rng.integers(90, 166, size=(height, width, 3)).astype(np.uint8)  # grey noise
    for _ in range(DOTS):  # dots in the class colours, smaller than the disc: together they cover more
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), int(rng.integers(1, 3))
        pixels[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1] = COLOURS[int(rng.integers(0, 3))]
    label = int(rng.integers(0, len(COLOURS)))
    left, top, right, bottom = region or (RADIUS + 1, RADIUS + 1, width - RADIUS - 1, height - RADIUS - 1)
    cx, cy = int(rng.integers(left, right)), int(rng.integers(top, bottom))
    yy, xx = np.mgrid[0:height, 0:width]
    pixels[(yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS ** 2] = COLOURS[label]
    return pixels, label, (cx - RADIUS, cy - RADIUS, cx + RADIUS + 1, cy + RADIUS + 1)


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) normalised as featviz's default preprocessing does."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def train(steps: int = 300, seed: int = 0, batch: int = 24) -> nn.Module:
    """Train from scratch with a fixed seed (seconds on one CPU core); returns the model in eval
    mode. One thread: small convolutions only lose time to threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(steps, seed, batch)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, seed: int, batch: int) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        photos = [photo(rng) for _ in range(batch)]
        x = torch.stack([to_tensor(p) for p, _, _ in photos])
        y = torch.tensor([label for _, label, _ in photos])
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for group in optimiser.param_groups:  # cosine decay
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
    return model.eval()


def save(model: nn.Module, path: Path = WEIGHTS) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


if __name__ == "__main__":
    save(train())
    print(f"wrote {WEIGHTS}")
