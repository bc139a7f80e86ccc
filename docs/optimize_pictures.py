#!/usr/bin/env python
"""Make the pictures of docs/optimize.md and print the r table (one thread, fixed seeds).

    python docs/optimize_pictures.py

Writes docs/optimize/cbam_conv2.png (the trained example's conv2, 32 channels, 32 px, 64
steps, beside the best of 300 held-out photos per channel) and docs/optimize/alexnet_features3.png
(torchvision AlexNet with --weights none: pretrained weights cannot be downloaded here, so the
pictures show the method on a random network, not learned features).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featviz.capture.layers import resolve_layers
from featviz.models.build import load_model
from featviz.optimize.engine import OptimizeSettings, activation_of, optimize
from featviz.optimize.export import grid, to_uint8

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "docs" / "optimize"


def main() -> None:
    torch.set_num_threads(1)
    HERE.mkdir(exist_ok=True)
    script = ROOT / "examples" / "cbam_shapes.py"
    spec = importlib.util.spec_from_file_location("cbam_shapes_docs", script)
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    loaded = load_model(f"{script}:build", str(ROOT / "examples" / "cbam_shapes.safetensors"))
    pre = loaded.preprocess
    ref = resolve_layers(loaded.module, ["conv2"])[0]
    rng = np.random.default_rng(2024)
    photos = torch.stack([torch.from_numpy(shapes.photo(rng, 32, 32)[0]).permute(2, 0, 1).float() / 255
                          for _ in range(300)])
    photo_acts = activation_of(loaded.module, ref, photos, pre.mean, pre.std)
    best_value, best_index = photo_acts.max(dim=0)
    result = optimize(loaded.module, ref, list(range(32)), OptimizeSettings(steps=64, size=32), pre.mean, pre.std)
    own = activation_of(loaded.module, ref, result.images, pre.mean, pre.std).diagonal()
    pairs = torch.stack([torch.stack([result.images[c], photos[best_index[c]]]) for c in range(32)]).flatten(0, 1)
    Image.fromarray(grid(to_uint8(pairs[:32]), padding=2)).resize((8 * 34 * 3, 4 * 34 * 3), Image.NEAREST).save(
        HERE / "cbam_conv2.png")
    print("| channel | optimised | best photo | r |\n| --- | --- | --- | --- |")
    for c in range(32):
        print(f"| {c} | {own[c]:.3f} | {best_value[c]:.3f} | {own[c] / best_value[c]:.1f} |")
    ratio = own / best_value
    print(f"r: median {ratio.median():.1f}, min {ratio.min():.1f}, max {ratio.max():.1f}")
    alex = load_model("alexnet", "none")
    ref = resolve_layers(alex.module, ["features.3"])[0]
    result = optimize(alex.module, ref, list(range(16)), OptimizeSettings(steps=32, size=96),
                      alex.preprocess.mean, alex.preprocess.std)
    Image.fromarray(grid(to_uint8(result.images))).save(HERE / "alexnet_features3.png")


if __name__ == "__main__":
    main()
