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
(a2) with ``--lucent-cut``: the same on a copy of the network that ends at the layer (what a
    Lucent user can build by hand), to tell how much of (a)/(b) is featviz stopping at the layer.
(b) featviz: ``featviz.optimize.engine.optimize`` on all C channels in one batch, the same steps,
    size, lr and Lucid's standard transform set (``OptimizeSettings(jitter_only=False)``); its
    forward pass stops at the layer, computes only each image's own channel of it where the
    layer is a plain convolution (featviz/capture/onechannel.py; ``features.3`` is), and it
    redirects the ReLUs' gradient for the first 16 steps (Lucid's default; Lucent does not).
(c) featviz's engine one channel at a time (the loop of benchmarks/optimize.py).

Lucent gets deep copies of the model (its leftover hooks would slow featviz's runs otherwise).
CPU only: Lucent picks ``cuda:0`` whenever torch sees a GPU (transform.py, param/spatial.py,
param/color.py), so the script hides every GPU (``CUDA_VISIBLE_DEVICES=""``) before importing
torch; nothing of Lucent is patched. The two sides do not see images of the same size: Lucent's
jitter translates inside the frame where Lucid's (and featviz's) crops, so at 224 px Lucent's
transformed images have a mean side of 254.7 px against featviz's 230.3 (about 1.22x the
pixels); below 224 px Lucent also upsamples every transformed image to 224 before the network
(render.py), so at 64 px it sees about 9x featviz's pixels: runs below 224 px are not a fair
comparison.

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
from collections import OrderedDict
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


def up_to_layer(model: torch.nn.Module) -> torch.nn.Sequential:
    """AlexNet's features.0 .. features.3 (the same modules, not copies), as features[:4]."""
    return torch.nn.Sequential(*[model.get_submodule(f"features.{i}") for i in range(4)])


def channel_means(model: torch.nn.Module, images: torch.Tensor, channels: list[int]) -> list[float]:
    """The objective on final images: images float32 (N, 3, H, W) in [0, 1], image i scored on
    channels[i]; returns mean_{y,x} of features.3's output (AlexNet's features[:4]) per image."""
    mean_t, std_t = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        acts = up_to_layer(model)((images - mean_t) / std_t)
    return [float(acts[i, c].mean()) for i, c in enumerate(channels)]


def run_lucent(model: torch.nn.Module, channels: int, size: int, steps: int) -> tuple[list[float], float, torch.Tensor]:
    """(a): render_vis once per channel; returns each call's wall seconds, the process CPU
    seconds of all calls, and the final images float32 (C, 3, size, size) in [0, 1]."""
    seconds, images = [], []
    cpu = time.process_time()
    for channel in range(channels):
        start = time.perf_counter()
        result = render.render_vis(model, f"{LUCENT_LAYER}:{channel}", lambda: param.image(size),
                                   thresholds=(steps,), show_image=False, progress=False)
        seconds.append(time.perf_counter() - start)
        images.append(torch.from_numpy(result[-1]).permute(0, 3, 1, 2))  # (1, H, W, 3) numpy -> (1, 3, H, W)
    return seconds, time.process_time() - cpu, torch.cat(images)


def cut_at_layer(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of AlexNet that ends at features.3 and keeps Lucent's name for it (features_3):
    what a Lucent user can do by hand so that render_vis stops at the layer, as featviz does."""
    return torch.nn.Sequential(OrderedDict([("features", copy.deepcopy(up_to_layer(model)))]))


def calls(seconds: list[float]) -> dict[str, float]:
    """First, last and median of Lucent's calls (the drift: issue #45's hooks)."""
    return {"first": round(seconds[0], 3), "last": round(seconds[-1], 3),
            "median": round(statistics.median(seconds), 3), "last_over_first": round(seconds[-1] / seconds[0], 2)}


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
    parser.add_argument("--lucent-cut", action="store_true",
                        help="Also (a2): Lucent on a copy of the network that ends at the layer (as featviz stops).")
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

    start, cpu = time.perf_counter(), time.process_time()
    batched = optimize(model, ref, list(range(channels)), settings, MEAN, STD)
    batch_s, batch_cpu = time.perf_counter() - start, time.process_time() - cpu

    lucent_calls, lucent_cpu, lucent_images = run_lucent(peer, channels, size, steps)
    lucent_s = sum(lucent_calls)
    cut_calls, cut_cpu, cut_images = run_lucent(cut_at_layer(model), channels, size, steps) if args.lucent_cut \
        else ([], 0.0, None)

    loop_s, loop_cpu, loop_act = None, None, None
    units = list(range(channels))
    if not args.no_loop:
        looped = []
        start, cpu = time.perf_counter(), time.process_time()
        for channel in units:
            looped.append(optimize(model, ref, [channel], settings, MEAN, STD).images)
        loop_s, loop_cpu = time.perf_counter() - start, time.process_time() - cpu
        loop_act = channel_means(model, torch.cat(looped), units)

    lucent_act = channel_means(model, lucent_images, units)
    batch_act = channel_means(model, batched.images, units)
    cut_s = sum(cut_calls) if cut_calls else None
    wall = {"a_lucent_per_channel": lucent_s, "a2_lucent_cut_per_channel": cut_s, "b_featviz_batch": batch_s,
            "c_featviz_per_channel": loop_s}
    cpu_s = {"a_lucent_per_channel": lucent_cpu, "a2_lucent_cut_per_channel": cut_cpu if cut_calls else None,
             "b_featviz_batch": batch_cpu, "c_featviz_per_channel": loop_cpu}

    def ratio(times: dict[str, float | None], key: str) -> float | None:
        """times[key] over (b)'s time, or None where key was not run."""
        value, batch = times[key], times["b_featviz_batch"]
        return None if value is None or batch is None else round(value / batch, 2)

    print(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "model": "alexnet (weights=None, seed 0)", "layer": LAYER,
        "channels": channels, "size": size, "steps": steps, "threads": torch.get_num_threads(),
        "freed_memory_kept": kept,
        "versions": {name: metadata.version(name) for name in ("torch", "torchvision", "torch-lucent", "kornia")},
        "seconds": {k: None if v is None else round(v, 2) for k, v in wall.items()},
        "cpu_seconds": {k: None if v is None else round(v, 2) for k, v in cpu_s.items()},
        "ms_per_channel_step": {k: None if v is None else round(1000 * v / (channels * steps), 2)
                                for k, v in wall.items()},
        "ms_per_step_b_batch": round(1000 * batch_s / steps, 1),
        "ratios_over_b": {k: ratio(wall, k) for k in wall if k != "b_featviz_batch"},
        "cpu_ratios_over_b": {k: ratio(cpu_s, k) for k in cpu_s if k != "b_featviz_batch"},
        "lucent_call_s": calls(lucent_calls),
        "lucent_cut_call_s": calls(cut_calls) if cut_calls else None,
        "lucent_hooks_left": hook_count(peer),
        "final_activation_mean": {"a": round(statistics.mean(lucent_act), 3),
                                  "a2": None if cut_images is None
                                  else round(statistics.mean(channel_means(model, cut_images, units)), 3),
                                  "b": round(statistics.mean(batch_act), 3),
                                  "c": None if loop_act is None else round(statistics.mean(loop_act), 3)},
    }, indent=1))


if __name__ == "__main__":
    main()
