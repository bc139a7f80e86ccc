"""A tiny vision transformer, trained in seconds on synthetic photos, so featviz can show attention
a transformer learned (random weights attend almost uniformly and every map is noise).

Each photo (64x64) is grey noise with clutter (small dots in every class colour) and one filled
disc of radius 7 at a random place; the label is the disc's colour (red, green, blue). The dots
share the disc's colours, so the class token has to find the disc (the only patches filled with one
colour) and read its colour there: learned attention that should peak on the disc. Training draws
each photo's number of dots anew, from 0 to twice the 24 of the held-out photos: with more clutter
than it is tested on, the network learns to ignore dots of every colour, so even the class-specific
relevance map (Chefer et al.) stops peaking on clutter (400 steps with always 24 dots: relevance
peaked on the disc in 177 of 200 held-out photos; 800 steps with 0-48 dots: 200 of 200).

    python examples/vit_shapes.py             # retrain (seed 0) and write examples/vit_shapes.safetensors
    featviz show photo.png --model examples/vit_shapes.py:build \\
        --weights examples/vit_shapes.safetensors --resize 64 --crop 64

The network is timm's ``VisionTransformer`` (Dosovitskiy et al., 2021) with a class token: 64x64
input, 8x8 patches (an 8x8 grid of 64 patch tokens + 1 class token), width 64, 4 blocks of 4 heads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

COLOURS = ((230, 40, 40), (40, 200, 40), (50, 80, 235))  # red, green, blue: the classes
SIDE = 64
PATCH = 8
RADIUS = 7
DOTS = 24  # dots of every class colour, smaller than a patch: the disc is the only solid blob
TRAIN_DOTS = 2 * DOTS  # training photos hold 0..TRAIN_DOTS dots, drawn per photo
WEIGHTS = Path(__file__).with_suffix(".safetensors")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build() -> nn.Module:
    """The network (about 0.1 M parameters); featviz loads it as ``examples/vit_shapes.py:build``."""
    return VisionTransformer(img_size=SIDE, patch_size=PATCH, num_classes=len(COLOURS), embed_dim=64, depth=4,
                             num_heads=4, mlp_ratio=2.0, class_token=True, global_pool="token")


def photo(rng: np.random.Generator, width: int = SIDE, height: int = SIDE,
          region: tuple[int, int, int, int] | None = None,
          dots: int = DOTS) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """One photo: uint8 (H, W, 3), its label, and the disc's box (left, top, right, bottom) in
    pixels (right and bottom exclusive). ``region`` (left, top, right, bottom) bounds where the
    disc's centre may lie; ``dots`` clutter dots are drawn."""
    pixels = rng.integers(90, 166, size=(height, width, 3)).astype(np.uint8)  # grey noise
    for _ in range(dots):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), int(rng.integers(1, 3))
        pixels[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1] = COLOURS[int(rng.integers(0, 3))]
    label = int(rng.integers(0, len(COLOURS)))
    left, top, right, bottom = region or (RADIUS + 1, RADIUS + 1, width - RADIUS - 1, height - RADIUS - 1)
    cx, cy = int(rng.integers(left, right)), int(rng.integers(top, bottom))
    yy, xx = np.mgrid[0:height, 0:width]
    pixels[(yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS ** 2] = COLOURS[label]
    return pixels, label, (cx - RADIUS, cy - RADIUS, cx + RADIUS + 1, cy + RADIUS + 1)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) normalised as featviz's default preprocessing does."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def train(steps: int = 800, seed: int = 0, batch: int = 32) -> nn.Module:
    """Train from scratch with a fixed seed (seconds on one CPU core); returns the model in eval
    mode. One thread: on a busy machine threads only add waiting, and one thread keeps the run
    reproducible bit for bit."""
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
    peak, warmup = 2e-3, max(1, steps // 10)
    optimiser = torch.optim.AdamW(model.parameters(), lr=peak / warmup, weight_decay=0.05)
    model.train()
    for step in range(steps):
        photos = [photo(rng, dots=int(rng.integers(0, TRAIN_DOTS + 1))) for _ in range(batch)]
        x = torch.stack([to_tensor(p) for p, _, _ in photos])
        y = torch.tensor([label for _, label, _ in photos])
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for group in optimiser.param_groups:  # linear warm-up, then cosine decay
            done = step + 1
            group["lr"] = peak * (done + 1) / warmup if done < warmup else \
                peak * 0.5 * (1 + math.cos(math.pi * (done - warmup) / max(1, steps - warmup)))
    return model.eval()


def save(model: nn.Module, path: Path = WEIGHTS) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


if __name__ == "__main__":
    save(train())
    print(f"wrote {WEIGHTS}")
