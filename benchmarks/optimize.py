#!/usr/bin/env python
"""What a whole layer costs in featviz optimize: every channel in one batch against a loop over
the channels one at a time (the same engine, steps and transforms: what Lucent's render_vis does
per channel), and per step against the floor, a bare forward + backward of the same batch at the
SAME input sizes as the transformed images (the transforms' random scale changes the size every
step; the floor replays that sequence of sizes).

Then the overhead, as a ladder: each rung adds one piece of the engine's step to the floor, in
the engine's order, so the difference between a rung and the floor (or the rung before) is that
piece's cost:

1. floor: a leaf tensor of the step's size -> forward to the layer -> backward of the objective;
2. floor + redirected ReLU (Lucid's gradient, a TorchFunctionMode during the forward pass; the
   engine turns it on for the first 16 steps only, as Lucid does);
3. floor + transforms and normalisation (a leaf RGB image at --size -> Lucid's pad, jitter,
   scale, rotation and last jitter as one resampling of the unpadded image, the grey pad's share
   added in the normalisation, (x - mean) / std -> 1.);
(2b. floor + the recipe's least: a leaf spectrum -> irfft2 -> one resampling -> 1., and Adam:
   what Lucid's recipe cannot do without, in torch alone; no featviz code);
4. 3. + parameterisation and Adam (1/f spectrum -> irfft2 -> colour -> sigmoid, Adam step, fused
   where torch has it): the engine's step after step 16 as it was before it computed only each
   image's own channel of a convolution layer;
5. the floor with each image's own channel only (featviz/capture/onechannel.py: at a plain
   convolution layer, the other C_out - 1 channels are neither computed nor back-propagated);
6. the engine's step after step 16 as it runs now: 4. with 5.'s layer.

Rungs 1-4 compare with the floor the issue defines (a bare forward + backward of the whole
layer); 6. against 5. is the engine's own overhead over what it now computes.

Rungs run in interleaved rounds (the machine is shared) and the median per-step time of the
rounds is reported.

    python benchmarks/optimize.py            # AlexNet features.3 (weights none), 64 channels, 224 px, 128 steps
    python benchmarks/optimize.py --quick    # 16 channels, 64 px, 8 steps
    python benchmarks/optimize.py --quick --profile   # + torch.profiler's top operators of the engine's step
    python benchmarks/optimize.py --quick --threads 1 # one torch thread (steadier on a shared machine)
    python benchmarks/optimize.py --quick --glibc-default  # without the CLI's glibc thresholds (cli/heap.py)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from featviz.capture.drive import DrivenLayer
from featviz.capture.layers import LayerRef, resolve_layers
from featviz.cli.heap import keep_freed_memory
from featviz.optimize import transforms
from featviz.optimize.engine import OptimizeSettings, adam, normalise, optimize
from featviz.optimize.param import FFTImage

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PICKED_FLOOR = "floor, each image's own channel only (capture/onechannel.py)"


def transformed_sizes(batch: int, size: int, steps: int, seed: int = 0) -> list[tuple[int, int]]:
    """The (H, W) the engine's transforms give at each step for this seed: the draws do not depend
    on the batch, so one image replays them (after the same initial spectrum draw)."""
    generator = torch.Generator().manual_seed(seed)
    FFTImage(batch, size, generator)  # the engine draws the spectrum first
    blank = torch.zeros(1, 3, size, size)
    return [tuple(transforms.standard(blank, generator).shape[2:]) for _ in range(steps)]  # type: ignore[misc]


def rungs(model: torch.nn.Module, ref: LayerRef, channels: int, size: int,
          steps: int) -> dict[str, Callable[[], tuple[float, float]]]:
    """Each rung: a function that runs ``steps`` steps and returns (wall seconds, process CPU
    seconds) they took (CPU time: all of this process's threads, so less disturbed by other
    processes on a shared machine)."""
    units = torch.arange(channels)
    rows = torch.arange(channels)
    mean_t, std_t = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    shift, gain = -mean_t / std_t, 1 / std_t  # the engine's normalisation: one addcmul
    sizes = transformed_sizes(channels, size, steps)

    def objective(acts: torch.Tensor | None, picked: bool = False) -> torch.Tensor:
        assert acts is not None
        return -(acts if picked else acts[rows, units]).flatten(1).mean(dim=1).sum()

    def floor(redirect: bool, pick: bool = False) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            inputs = [torch.rand(channels, 3, h, w, requires_grad=True) for h, w in sizes]
            with DrivenLayer(model, ref, redirect=redirect, pick=units if pick else None) as driven:
                start, cpu = time.perf_counter(), time.process_time()
                for x in inputs:
                    objective(driven.run(x), driven.picked).backward()
                return time.perf_counter() - start, time.process_time() - cpu
        return run

    def with_transforms() -> tuple[float, float]:
        generator = torch.Generator().manual_seed(0)
        FFTImage(channels, size, generator)  # the same draws, so the same sizes as the floor
        inputs = [torch.rand(channels, 3, size, size, requires_grad=True) for _ in sizes]
        with DrivenLayer(model, ref, redirect=False) as driven:
            start, cpu = time.perf_counter(), time.process_time()
            for rgb in inputs:
                objective(driven.run(normalise(*transforms.standard_parts(rgb, generator), shift, gain))).backward()
            return time.perf_counter() - start, time.process_time() - cpu

    def engine_step(pick: bool) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            generator = torch.Generator().manual_seed(0)
            image = FFTImage(channels, size, generator)
            optimiser = adam(list(image.parameters()), 0.05)
            with DrivenLayer(model, ref, redirect=False, pick=units if pick else None) as driven:
                start, cpu = time.perf_counter(), time.process_time()
                for _ in sizes:
                    parts = transforms.standard_parts(image(), generator)
                    optimiser.zero_grad(set_to_none=True)
                    objective(driven.run(normalise(*parts, shift, gain)), driven.picked).backward()
                    optimiser.step()
                return time.perf_counter() - start, time.process_time() - cpu
        return run

    def recipe() -> tuple[float, float]:
        """The floor plus the least the issue's recipe itself needs, in torch alone: the inverse
        FFT of a leaf spectrum (the 1/f image's own transform), one bilinear resampling (the least
        any random scale and rotation cost), one Adam step; no scale, colour, sigmoid or
        normalisation."""
        generator = torch.Generator().manual_seed(0)
        FFTImage(channels, size, generator)  # the same draws, so the same sizes as the floor
        spectrum = torch.randn(channels, 3, size, size // 2 + 1, 2, generator=generator, requires_grad=True)
        optimiser = adam([spectrum], 0.05)
        with DrivenLayer(model, ref, redirect=False) as driven:
            start, cpu = time.perf_counter(), time.process_time()
            for _ in sizes:
                image = torch.fft.irfft2(torch.view_as_complex(spectrum), s=(size, size), norm="ortho")
                sampled, _ = transforms.standard_parts(image, generator)
                optimiser.zero_grad(set_to_none=True)
                objective(driven.run(sampled)).backward()
                optimiser.step()
            return time.perf_counter() - start, time.process_time() - cpu

    return {"floor": floor(False), "floor + redirected ReLU (steps 1-16)": floor(True),
            "floor + the recipe's least: irfft2, one resampling, Adam": recipe,
            "floor + transforms, normalisation": with_transforms,
            "+ FFT image, colour, sigmoid, Adam (the engine's step, whole layer)": engine_step(False),
            PICKED_FLOOR: floor(False, pick=True),
            "the engine's step after step 16 (own channels only)": engine_step(True)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of the ladder.")
    parser.add_argument("--no-loop", action="store_true", help="Skip the per-channel loop (the slow part).")
    parser.add_argument("--profile", action="store_true", help="Also print torch.profiler's top operators.")
    parser.add_argument("--steps", type=int, default=None, help="Override the steps (the ladder's too).")
    parser.add_argument("--size", type=int, default=None, help="Override the image side.")
    parser.add_argument("--channels", type=int, default=None, help="Override the number of channels.")
    parser.add_argument("--layer", default="features.3", help="AlexNet layer (a deeper one has a costlier floor).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a shared machine 1 is steadier: with 2, a "
                             "descheduled thread leaves the other waiting, and wall and CPU times swing by 9x.")
    parser.add_argument("--glibc-default", action="store_true",
                        help="Leave glibc's mmap/trim thresholds as they are (the CLI raises them: cli/heap.py).")
    args = parser.parse_args()
    kept = False if args.glibc_default else keep_freed_memory()  # as `featviz optimize` does, before any tensor
    if args.threads:
        torch.set_num_threads(args.threads)
    channels, size, steps = (16, 64, 8) if args.quick else (64, 224, 128)
    steps, size, channels = args.steps or steps, args.size or size, args.channels or channels
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None)
    ref = resolve_layers(model, [args.layer])[0]
    settings = OptimizeSettings(steps=steps, size=size, jitter_only=False)  # Lucid's set at any size, as the ladder
    optimize(model, ref, [0], OptimizeSettings(steps=2, size=size), MEAN, STD)  # warm-up

    start = time.perf_counter()
    optimize(model, ref, list(range(channels)), settings, MEAN, STD)
    batched = time.perf_counter() - start
    looped = None
    if not args.no_loop:
        start = time.perf_counter()
        for channel in range(channels):
            optimize(model, ref, [channel], settings, MEAN, STD)
        looped = time.perf_counter() - start

    ladder = rungs(model, ref, channels, size, steps)
    times: dict[str, list[float]] = {name: [] for name in ladder}
    cpu_times: dict[str, list[float]] = {name: [] for name in ladder}
    for run in ladder.values():  # warm-up
        run()
    for r in range(args.rounds):
        names = list(ladder)
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated order
            wall, cpu = ladder[name]()
            times[name].append(1000 * wall / steps)
            cpu_times[name].append(1000 * cpu / steps)
    per_step = {name: round(statistics.median(values), 1) for name, values in times.items()}
    cpu_step = {name: round(statistics.median(values), 1) for name, values in cpu_times.items()}
    floor, cpu_floor = per_step["floor"], cpu_step["floor"]
    sizes = transformed_sizes(channels, size, steps)
    print(json.dumps({
        "layer": args.layer, "channels": channels, "size": size, "steps": steps, "threads": torch.get_num_threads(),
        "freed_memory_kept": kept,
        "transformed_side_mean": round(statistics.mean(h for h, _ in sizes), 1),
        "batched_s": round(batched, 2), "batched_step_ms": round(1000 * batched / steps, 1),
        "per_channel_loop_s": None if looped is None else round(looped, 2),
        "speedup": None if looped is None else round(looped / batched, 2),
        "ladder_step_ms": per_step, "ladder_over_floor": {k: round(v / floor, 2) for k, v in per_step.items()},
        "ladder_rounds_ms": {k: [round(v, 1) for v in values] for k, values in times.items()},
        "ladder_cpu_step_ms": cpu_step,
        "ladder_cpu_over_floor": {k: round(v / cpu_floor, 2) for k, v in cpu_step.items()},
        "ladder_cpu_over_picked_floor": {k: round(v / cpu_step[PICKED_FLOOR], 2) for k, v in cpu_step.items()},
        "ladder_cpu_rounds_ms": {k: [round(v, 1) for v in values] for k, values in cpu_times.items()},
    }, indent=1))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            optimize(model, ref, list(range(channels)), settings, MEAN, STD)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
