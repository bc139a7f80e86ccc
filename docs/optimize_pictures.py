#!/usr/bin/env python
"""Make the pictures of docs/optimize.md and print its tables (one thread, fixed seeds).

    python docs/optimize_pictures.py

Writes, under docs/optimize/:

* cbam_conv2.png: the trained example's conv2, channels 0..15, 32 px, 64 steps, Lucid's standard
  transforms, each optimised image followed by the best of 300 held-out photos for that channel;
* cbam_conv2_jitter.png: all 32 channels with ``--transforms jitter`` (the same steps and seed);
* cbam_interpolate.png: 6 frames from conv2 channel 2 to channel 13 (``--interpolate 2,13``);
* alexnet_features3.png: torchvision AlexNet ``features.3`` channels 0..15 with ``--weights none``
  (pretrained weights cannot be downloaded here, so the pictures show the method on a random
  network, not learned features), 96 px, 32 steps.

Prints the r table (optimised / best photo, both transform sets), the own-best counts and, for
every channel whose own image is not the best of the set, which image beats it and by how much.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featviz.capture.layers import LayerRef, resolve_layers
from featviz.models.build import load_model
from featviz.optimize.engine import OptimizeSettings, activation_of, interpolate, optimize
from featviz.optimize.export import grid, row, to_uint8

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "docs" / "optimize"


def enlarge(picture: np.ndarray, factor: int = 3) -> Image.Image:
    image = Image.fromarray(picture)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def own_best(acts: torch.Tensor) -> tuple[int, int, list[tuple[int, int, float, float]]]:
    """(strict count, within-5 % count, [(channel, winning image, own, best)] for the misses)."""
    own, best = acts.diagonal(), acts.max(dim=0)
    misses = [(c, int(best.indices[c]), float(own[c]), float(best.values[c]))
              for c in range(acts.shape[1]) if own[c] < 0.95 * best.values[c]]
    return int((own >= best.values).sum()), int((own >= 0.95 * best.values).sum()), misses


def trained_conv2() -> tuple[Any, LayerRef, torch.Tensor]:
    """The trained example (its loaded model), its ``conv2`` and 300 held-out 32 px photos
    (``default_rng(2024)``, not the training seed), float (300, 3, 32, 32) in [0, 1]; shared with
    ``docs/maco_pictures.py``."""
    script = ROOT / "examples" / "cbam_shapes.py"
    spec = importlib.util.spec_from_file_location("cbam_shapes_docs", script)
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    loaded = load_model(f"{script}:build", str(ROOT / "examples" / "cbam_shapes.safetensors"))
    ref = resolve_layers(loaded.module, ["conv2"])[0]
    rng = np.random.default_rng(2024)
    photos = torch.stack([torch.from_numpy(shapes.photo(rng, 32, 32)[0]).permute(2, 0, 1).float() / 255
                          for _ in range(300)])
    return loaded, ref, photos


def main() -> None:
    torch.set_num_threads(1)
    HERE.mkdir(exist_ok=True)
    loaded, ref, photos = trained_conv2()
    model, pre = loaded.module, loaded.preprocess
    photo_acts = activation_of(model, ref, photos, pre.mean, pre.std)
    best_value, best_index = photo_acts.max(dim=0)
    runs = {}
    for name, jitter in (("standard", False), ("jitter", True)):
        result = optimize(model, ref, list(range(32)), OptimizeSettings(steps=64, size=32, jitter_only=jitter),
                          pre.mean, pre.std)
        runs[name] = (result, activation_of(model, ref, result.images, pre.mean, pre.std))
    standard = runs["standard"][0]
    pairs = torch.stack([torch.stack([standard.images[c], photos[best_index[c]]]) for c in range(16)]).flatten(0, 1)
    enlarge(grid(to_uint8(pairs), padding=2)).save(HERE / "cbam_conv2.png")
    enlarge(grid(to_uint8(runs["jitter"][0].images), padding=2)).save(HERE / "cbam_conv2_jitter.png")

    print("| channel | best photo | optimised (standard) | r | optimised (jitter) | r |")
    print("| --- | --- | --- | --- | --- | --- |")
    own = {name: acts.diagonal() for name, (_, acts) in runs.items()}
    for c in range(32):
        print(f"| {c} | {best_value[c]:.3f} | {own['standard'][c]:.3f} | {own['standard'][c] / best_value[c]:.1f} | "
              f"{own['jitter'][c]:.3f} | {own['jitter'][c] / best_value[c]:.1f} |")
    for name, (_, acts) in runs.items():
        ratio = own[name] / best_value
        strict, tolerant, misses = own_best(acts)
        print(f"\n{name}: r median {ratio.median():.1f}, min {ratio.min():.1f}, max {ratio.max():.1f}; "
              f"own image best: {strict}/32 strictly, {tolerant}/32 within 5 %")
        print("| channel | own image | best image (channel) | its activation | shortfall |")
        print("| --- | --- | --- | --- | --- |")
        for c, winner, mine, top in misses:
            print(f"| {c} | {mine:.2f} | {winner} | {top:.2f} | {100 * (1 - mine / top):.0f} % |")

    frames = interpolate(model, ref, 2, 13, 6, OptimizeSettings(steps=64, size=32, jitter_only=True),
                         pre.mean, pre.std)
    enlarge(row(to_uint8(frames.images))).save(HERE / "cbam_interpolate.png")
    means = activation_of(model, ref, frames.images, pre.mean, pre.std)
    print("\ninterpolation 2 -> 13: mean A[2] " + ", ".join(f"{v:.2f}" for v in means[:, 2]) +
          "; mean A[13] " + ", ".join(f"{v:.2f}" for v in means[:, 13]))

    alex = load_model("alexnet", "none")
    ref = resolve_layers(alex.module, ["features.3"])[0]
    result = optimize(alex.module, ref, list(range(16)), OptimizeSettings(steps=32, size=96),
                      alex.preprocess.mean, alex.preprocess.std)
    Image.fromarray(grid(to_uint8(result.images))).save(HERE / "alexnet_features3.png")


if __name__ == "__main__":
    main()
