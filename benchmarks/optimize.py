#!/usr/bin/env python
"""What a whole layer costs in featviz optimize: every channel in one batch against a loop over
the channels one at a time (the same engine, steps and transforms: what Lucent's render_vis does
per channel), and per step against the floor, a bare forward + backward of the same batch.

    python benchmarks/optimize.py            # AlexNet features.3 (weights none), 64 channels, 224 px, 128 steps
    python benchmarks/optimize.py --quick    # 16 channels, 64 px, 8 steps
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision

from featviz.capture.drive import DrivenLayer
from featviz.capture.layers import resolve_layers
from featviz.optimize.engine import OptimizeSettings, optimize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    channels, size, steps = (16, 64, 8) if args.quick else (64, 224, 128)
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None)
    ref = resolve_layers(model, ["features.3"])[0]
    settings = OptimizeSettings(steps=steps, size=size)
    optimize(model, ref, [0], OptimizeSettings(steps=2, size=size), MEAN, STD)  # warm-up

    start = time.perf_counter()
    optimize(model, ref, list(range(channels)), settings, MEAN, STD)
    batched = time.perf_counter() - start

    start = time.perf_counter()
    for channel in range(channels):
        optimize(model, ref, [channel], settings, MEAN, STD)
    looped = time.perf_counter() - start

    # the floor: forward to the layer and backward, same batch and input size, no parameterisation
    x = torch.rand(channels, 3, size + 12, size + 12, requires_grad=True)  # about the transformed size
    with DrivenLayer(model, ref, redirect=False) as driven:
        start = time.perf_counter()
        for _ in range(steps):
            acts = driven.run(x)
            assert acts is not None
            acts[:, 0].mean().backward()
        floor = time.perf_counter() - start
    print(json.dumps({"channels": channels, "size": size, "steps": steps, "batched_s": round(batched, 2),
                      "per_channel_loop_s": round(looped, 2), "speedup": round(looped / batched, 2),
                      "batched_step_ms": round(1000 * batched / steps, 1),
                      "floor_step_ms": round(1000 * floor / steps, 1),
                      "step_over_floor": round(batched / floor, 2), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
