#!/usr/bin/env python
"""A whole layer in featviz's one batch against the peer, Lucent's ``render_vis`` run channel by
channel (issue 19's speed goal: >= 5x), in ONE process, on one model.

RUNS ONLY WHERE LUCENT IS IMPORTABLE: torch-lucent 0.1.8 and kornia 0.4.1 are not featviz
dependencies and are NOT in featviz's venv. Make a scratch venv that sees torch/torchvision from
featviz's venv and featviz from this checkout (docs/optimize.md, "Against Lucent", has the
recipe and its caveats), then from the repository root:

    PYTHONPATH=. /work/scratch-lucent/bin/python benchmarks/lucent_peer.py --quick  # 4 channels, 64 px, 16 steps
    PYTHONPATH=. /work/scratch-lucent/bin/python benchmarks/lucent_peer.py          # 64 channels, 224 px, 128 steps
    ... benchmarks/lucent_peer.py --channels 64 --size 224 --steps 32 --threads 1   # any mix of the three

What it times, on AlexNet (torchvision, ``weights=None``, seeded, eval) at ``features.3``
(Lucent's name: ``features_3``), the objective "mean activation of channel c":

(a) Lucent: ``render_vis(model, "features_3:c", lambda: param.image(size), thresholds=(steps,),
    show_image=False, progress=False)`` for c = 0..C-1, one after the other: its defaults are
    the FFT, colour-decorrelated image, Adam at lr 0.05, Lucid's standard transforms (pad 12,
    jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4) and the ImageNet normalisation.
    Each call also pays what Lucent does around the step: it hooks EVERY module and never
    removes the hooks (Lucent issue #45), so call k runs k hooks per module; the first and the
    last call's times show that drift. Lucent runs the whole network (to the classifier).
(b) featviz: ``featviz.optimize.engine.optimize`` on all C channels in one batch, the same steps,
    size, lr and Lucid's standard transform set (``OptimizeSettings(jitter_only=False)``); its
    forward pass stops at the layer, and it redirects the ReLUs' gradient for the first 16 steps
    (Lucid's default; Lucent does not).
(c) featviz's engine one channel at a time (the loop of benchmarks/optimize.py).

Lucent gets a deep copy of the model (its leftover hooks would slow featviz's runs otherwise).
CPU only: Lucent picks ``cuda:0`` whenever torch sees a GPU (transform.py, param/spatial.py,
param/color.py), so the script hides every GPU (``CUDA_VISIBLE_DEVICES=""``) before importing
torch; nothing of Lucent is patched. Below 224 px Lucent upsamples every transformed image to 224
before the network (render.py: ``new_size = 224``), which featviz does not: runs below 224 px
give Lucent ~12x more pixels per step (at 64 px) and are not a fair comparison; 224 px is.

Prints one JSON object: seconds, ms per channel-step and per step, the ratios (a)/(b) and
(c)/(b), Lucent's first and last call, the final activation of each run (to show all three
optimised), threads, versions, date and the command.
"""

from __future__ import annotations

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: Lucent would take cuda:0 (see the doc)

import argparse
import copy
import datetime
import json
import shlex
import statistics
import sys
import time
from importlib import metadata

import numpy as np
import torch
import torchvision

from featviz.capture.layers import resolve_layers
from featviz.cli.heap import keep_freed_memory
from featviz.optimize.engine import OptimizeSettings, optimize

try:
    from lucent.optvis import param, render
except ImportError as error:  # pragma: no cover - the whole script needs it
    raise SystemExit(f"lucent is not importable here ({error}); see docs/optimize.md, 'Against Lucent'") from error

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYER, LUCENT_LAYER = "features.3", "features_3"


def channel_means(model: torch.nn.Module, images: torch.Tensor, channels: list[int]) -> list[float]:
    """The objective on final images: images float32 (N, 3, H, W) in [0, 1], image i scored on
    channels[i]; returns mean_{y,x} of features.3's output (AlexNet's features[:4]) per image."""
    mean_t, std_t = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        acts = model.features[:4]((images - mean_t) / std_t)  # type: ignore[index]
    return [float(acts[i, c].mean()) for i, c in enumerate(channels)]


def run_lucent(model: torch.nn.Module, channels: int, size: int, steps: int) -> tuple[list[float], torch.Tensor]:
    """(a): render_vis once per channel; returns each call's seconds and the final images
    float32 (C, 3, size, size) in [0, 1]."""
    seconds, images = [], []
    for channel in range(channels):
        start = time.perf_counter()
        result = render.render_vis(model, f"{LUCENT_LAYER}:{channel}", lambda: param.image(size),
                                   thresholds=(steps,), show_image=False, progress=False)
        seconds.append(time.perf_counter() - start)
        images.append(torch.from_numpy(result[-1]).permute(0, 3, 1, 2))  # (1, H, W, 3) numpy -> (1, 3, H, W)
    return seconds, torch.cat(images)


def hook_count(model: torch.nn.Module) -> int:
    """Forward hooks left on every module of the model (Lucent issue #45)."""
    return sum(len(module._forward_hooks) for module in model.modules())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="4 channels, 64 px, 16 steps (not a fair size: see doc).")
    parser.add_argument("--channels", type=int, default=None, help="Channels 0..C-1 (default 64).")
    parser.add_argument("--size", type=int, default=None, help="Image side in px (default 224).")
    parser.add_argument("--steps", type=int, default=None, help="Optimisation steps (default 128).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the machine is shared; with 2, a descheduled thread stalls "
                             "the other and times swing by up to 9x, docs/optimize.md 'Speed').")
    parser.add_argument("--no-loop", action="store_true", help="Skip (c), featviz's per-channel loop.")
    parser.add_argument("--glibc-default", action="store_true",
                        help="Leave glibc's mmap/trim thresholds as they are (by default raised as the CLI does, "
                             "cli/heap.py; a process setting, so Lucent gets it too).")
    args = parser.parse_args()
    kept = False if args.glibc_default else keep_freed_memory()
    torch.set_num_threads(args.threads)
    channels, size, steps = (4, 64, 16) if args.quick else (64, 224, 128)
    channels, size, steps = args.channels or channels, args.size or size, args.steps or steps

    torch.manual_seed(0)
    np.random.seed(0)  # Lucent draws its transforms with numpy
    model = torchvision.models.alexnet(weights=None).eval()
    peer = copy.deepcopy(model)  # Lucent's copy: its hooks stay on it
    ref = resolve_layers(model, [LAYER])[0]
    settings = OptimizeSettings(steps=steps, size=size, jitter_only=False)

    optimize(model, ref, [0], OptimizeSettings(steps=2, size=size, jitter_only=False), MEAN, STD)  # warm-ups
    render.render_vis(copy.deepcopy(model), f"{LUCENT_LAYER}:0", lambda: param.image(size), thresholds=(2,),
                      show_image=False, progress=False)

    start = time.perf_counter()
    batched = optimize(model, ref, list(range(channels)), settings, MEAN, STD)
    batch_s = time.perf_counter() - start

    lucent_calls, lucent_images = run_lucent(peer, channels, size, steps)
    lucent_s = sum(lucent_calls)

    loop_s, loop_act = None, None
    units = list(range(channels))
    if not args.no_loop:
        looped = []
        start = time.perf_counter()
        for channel in units:
            looped.append(optimize(model, ref, [channel], settings, MEAN, STD).images)
        loop_s = time.perf_counter() - start
        loop_act = channel_means(model, torch.cat(looped), units)

    lucent_act = channel_means(model, lucent_images, units)
    batch_act = channel_means(model, batched.images, units)
    print(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "model": "alexnet (weights=None, seed 0)", "layer": LAYER,
        "channels": channels, "size": size, "steps": steps, "threads": torch.get_num_threads(),
        "freed_memory_kept": kept,
        "versions": {name: metadata.version(name) for name in ("torch", "torchvision", "torch-lucent", "kornia")},
        "seconds": {"a_lucent_per_channel": round(lucent_s, 2), "b_featviz_batch": round(batch_s, 2),
                    "c_featviz_per_channel": None if loop_s is None else round(loop_s, 2)},
        "ms_per_channel_step": {"a": round(1000 * lucent_s / (channels * steps), 2),
                                "b": round(1000 * batch_s / (channels * steps), 2),
                                "c": None if loop_s is None else round(1000 * loop_s / (channels * steps), 2)},
        "ms_per_step_b_batch": round(1000 * batch_s / steps, 1),
        "ratio_a_over_b": round(lucent_s / batch_s, 2),
        "ratio_c_over_b": None if loop_s is None else round(loop_s / batch_s, 2),
        "lucent_call_s": {"first": round(lucent_calls[0], 3), "last": round(lucent_calls[-1], 3),
                          "median": round(statistics.median(lucent_calls), 3),
                          "last_over_first": round(lucent_calls[-1] / lucent_calls[0], 2)},
        "lucent_hooks_left": hook_count(peer),
        "final_activation_mean": {"a": round(statistics.mean(lucent_act), 3),
                                  "b": round(statistics.mean(batch_act), 3),
                                  "c": None if loop_act is None else round(statistics.mean(loop_act), 3)},
    }, indent=1))


if __name__ == "__main__":
    main()
