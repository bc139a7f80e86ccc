#!/usr/bin/env python
"""Make the MACO picture of docs/optimize.md and print its numbers (one thread, fixed seeds).

    python docs/maco_pictures.py

Writes docs/optimize/maco_vs_fft.png: for channels 0..7 of the trained example's conv2 (32 px,
64 steps) and of torchvision AlexNet's features.3 with --weights none (96 px, 32 steps; pretrained
weights cannot be downloaded here, so it shows the method, not learned features), a row of
--param fft images above a row of --param maco images (the built-in spectrum). Prints, for the
trained example, how many of its 32 channels reach the best of 300 held-out photos, and the share
of spectral energy above 0.25 cycles/pixel of each kind of image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from optimize_pictures import trained_conv2  # docs/, the script's own folder
from PIL import Image

from featviz.capture.layers import resolve_layers
from featviz.models.build import load_model
from featviz.optimize.engine import OptimizeSettings, activation_of, optimize
from featviz.optimize.export import to_uint8
from featviz.optimize.maco import MACO_LR
from featviz.optimize.param import high_frequency_energy

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "docs" / "optimize"


def rows(fft: torch.Tensor, maco: torch.Tensor, scale: int) -> Image.Image:
    """Two rows of 8 (fft above maco), enlarged ``scale`` times (nearest)."""
    pictures = to_uint8(torch.cat([fft[:8], maco[:8]]))
    canvas = _two_rows(pictures)
    return Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)


def _two_rows(pictures: np.ndarray, padding: int = 2) -> np.ndarray:
    count, height, width, _ = pictures.shape
    columns = count // 2
    canvas = np.full((2 * (height + padding) + padding, columns * (width + padding) + padding, 3), 255, np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        canvas[top:top + height, left:left + width] = picture
    return canvas


def main() -> None:
    torch.set_num_threads(1)
    HERE.mkdir(exist_ok=True)
    loaded, ref, photos = trained_conv2()
    pre = loaded.preprocess
    best = activation_of(loaded.module, ref, photos, pre.mean, pre.std).max(dim=0).values
    results = {}
    for param, lr in (("fft", 0.05), ("maco", MACO_LR)):
        settings = OptimizeSettings(steps=64, size=32, param=param, lr=lr)
        result = optimize(loaded.module, ref, list(range(32)), settings, pre.mean, pre.std)
        own = activation_of(loaded.module, ref, result.images, pre.mean, pre.std).diagonal()
        ratio = own / best
        energy = high_frequency_energy(result.images)
        print(f"cbam conv2 {param} (lr {lr}): {int((own >= best).sum())} of 32 channels reach the best photo; "
              f"r median {ratio.median():.2f}, min {ratio.min():.2f}, max {ratio.max():.2f}; "
              f"energy above 0.25 c/px: median {energy.median():.4f}")
        results[param] = result.images
    cbam = rows(results["fft"], results["maco"], 3)
    alex = load_model("alexnet", "none")
    ref = resolve_layers(alex.module, ["features.3"])[0]
    images = {}
    for param, lr in (("fft", 0.05), ("maco", MACO_LR)):
        settings = OptimizeSettings(steps=32, size=96, param=param, lr=lr)
        images[param] = optimize(alex.module, ref, list(range(8)), settings, alex.preprocess.mean,
                                 alex.preprocess.std).images
        energy = high_frequency_energy(images[param])
        print(f"alexnet features.3 (random weights) {param}: energy above 0.25 c/px: median {energy.median():.4f}")
    alexnet = rows(images["fft"], images["maco"], 1)
    width = max(cbam.width, alexnet.width)
    page = Image.new("RGB", (width, cbam.height + alexnet.height + 8), (255, 255, 255))
    page.paste(cbam, (0, 0))
    page.paste(alexnet, (0, cbam.height + 8))
    page.save(HERE / "maco_vs_fft.png")


if __name__ == "__main__":
    main()
