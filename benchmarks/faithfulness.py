#!/usr/bin/env python
"""Deletion/insertion scores (featviz.maps.faithfulness): batch size, and featviz against torch-cam
and RISE's one-forward-per-step loop, in one process.

    python benchmarks/faithfulness.py            # ResNet-18 and ResNet-50, 4 photos x 2 maps, 3 rounds
    python benchmarks/faithfulness.py --quick    # smoke run: ResNet-18, 1 photo, 1 round (~2 min on 2 busy cores)

Every method scores the same (photo, map, target) rows: the sample photos through featviz's
default preprocessing (224x224), two smooth seeded maps per photo (standing in for two CAM
methods), the model's top class as target, S = 16 steps; models with ``weights=None``, seeded.

featviz   ``deletion_insertion`` (deletion to zero, insertion from the blurred copy) at each
          ``--batch-sizes``.
torch-cam ``torchcam.metrics.DeletionInsertionMetric`` (0.5), one ``update`` per photo and map,
          its default batch 32, zero baseline: the same number of forwards per map as featviz,
          but both of its curves start or end at zeros (it has one baseline for both).
rise      RISE's evaluation loop as published (``CausalMetric.single_run``): one image, one
          forward per step, deletion and insertion run separately (2 x (S + 1) forwards per map).

Rounds interleave the methods (order rotated each round). Before timing, featviz's deletion
AUCs are compared with torch-cam's (they must agree to 1e-5).
Reported: scores per second (one score = one map and target, both curves) of the best round,
and the median in brackets.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import functional as TF

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featviz.inputs.images import load_image  # noqa: E402 - after the sys.path line, so the checkout's featviz is used
from featviz.maps.faithfulness import FaithfulnessScore, deletion_insertion  # noqa: E402
from featviz.models.preprocess import Preprocess  # noqa: E402

STEPS = 16


def photos(count: int) -> torch.Tensor:
    """float32 (count, 3, 224, 224), normalised: the sample photos, cycled."""
    paths = sorted((ROOT / "sample_images").glob("*.jpg"))
    preprocess = Preprocess()
    return torch.stack([preprocess(load_image(paths[i % len(paths)])) for i in range(count)])


def smooth_maps(count: int, size: int) -> torch.Tensor:
    """float32 (count, size, size): blurred seeded noise, like an upsampled 7x7 CAM."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 1, 7, 7, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def rise_loop(model: torch.nn.Module, image: torch.Tensor, saliency: torch.Tensor, target: int) -> None:
    """RISE's CausalMetric.single_run for 'del' (zeros) and 'ins' (blur), step = P / S."""
    _, height, width = image.shape
    pixels = height * width
    step = pixels // STEPS
    order = torch.argsort(saliency.flatten(), descending=True, stable=True)
    for start, finish in ((image.clone(), torch.zeros_like(image)),
                          (TF.gaussian_blur(image, [11, 11], [5.0, 5.0]), image.clone())):
        current = start.clone().reshape(3, pixels)
        finish = finish.reshape(3, pixels)
        with torch.no_grad():
            for i in range(STEPS + 1):
                torch.softmax(model(current.reshape(1, 3, height, width)), dim=1)[0, target].item()
                if i < STEPS:
                    coords = order[step * i:step * (i + 1)]
                    current[:, coords] = finish[:, coords]


class GivenMap:
    """torch-cam's CAM-extractor interface around a fixed map."""

    def __init__(self, model: torch.nn.Module, saliency: torch.Tensor) -> None:
        self.model, self.saliency = model, saliency

    def __call__(self, *args: object, **kwargs: object) -> list[torch.Tensor]:
        return [self.saliency]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    def _hooks_off(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def torchcam_run(model: torch.nn.Module, inputs: torch.Tensor, maps: torch.Tensor,
                 targets: list[int]) -> list[float]:
    from torchcam.metrics import DeletionInsertionMetric

    areas = []
    for row in range(inputs.shape[0]):
        metric = DeletionInsertionMetric(GivenMap(model, maps[row:row + 1]),
                                         lambda logits: torch.softmax(logits, dim=-1), steps=STEPS)
        metric.update(inputs[row:row + 1], class_idx=[targets[row]])
        areas.append(metric.summary()["deletion_auc"])
    return areas


def interleaved(methods: list[tuple[str, Callable[[], object]]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round for each method; within a round the methods run one after another, in
    an order rotated every round, so that a change in the machine's load hits them alike."""
    times: dict[str, list[float]] = {label: [] for label, _ in methods}
    for round_ in range(rounds):
        shift = round_ % len(methods)
        for label, function in methods[shift:] + methods[:shift]:
            start = time.perf_counter()
            function()
            times[label].append(time.perf_counter() - start)
    return times


def run_case(name: str, photo_count: int, batch_sizes: list[int], rounds: int, rise: bool) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    images = photos(photo_count)
    maps = smooth_maps(2 * photo_count, images.shape[-1])
    inputs = images.repeat_interleave(2, dim=0)
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1).tolist()
    rows = inputs.shape[0]

    ours = deletion_insertion(model, inputs, maps, targets, steps=STEPS)
    theirs = torchcam_run(model, inputs, maps, targets)
    areas = [score.deletion_auc for score in ours if isinstance(score, FaithfulnessScore)]
    worst = max(abs(a - b) for a, b in zip(areas, theirs, strict=True))
    print(f"\n{name}: {photo_count} photos x 2 maps, S = {STEPS}; "
          f"max |featviz - torch-cam| deletion AUC = {worst:.2e}")
    if worst > 1e-5:
        raise SystemExit("featviz and torch-cam disagree; not timing")

    methods: list[tuple[str, Callable[[], object]]] = [
        (f"featviz batch {size}", lambda size=size: deletion_insertion(model, inputs, maps, targets, steps=STEPS,
                                                                       batch_size=size))
        for size in batch_sizes
    ]
    methods.append(("torch-cam (batch 32)", lambda: torchcam_run(model, inputs, maps, targets)))
    if rise:
        methods.append(("rise loop (batch 1), 1 map", lambda: rise_loop(model, inputs[0], maps[0], targets[0])))
    times = interleaved(methods, rounds)
    results = [(label, times[label], 1 if label.startswith("rise") else rows) for label, _ in methods]
    print("| method | scores/s best (median) |")
    print("|---|---|")
    for label, times, count in results:
        print(f"| {label} | {count / min(times):.3g} ({count / statistics.median(times):.3g}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18, 1 photo, 1 round, batch 8 and 32")
    parser.add_argument("--models", default=None, help="comma-separated torchvision names (default resnet18,resnet50)")
    parser.add_argument("--photos", type=int, default=None, help="photos per run (default 4; --quick 1)")
    parser.add_argument("--batch-sizes", default=None, help="featviz batch sizes (default 1,8,16,32,64)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--no-rise", action="store_true", help="skip RISE's loop")
    args = parser.parse_args()
    models = (args.models or ("resnet18" if args.quick else "resnet18,resnet50")).split(",")
    sizes = [int(v) for v in (args.batch_sizes or ("8,32" if args.quick else "1,8,16,32,64")).split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for name in models:
        run_case(name, args.photos or (1 if args.quick else 4), sizes, args.rounds or (1 if args.quick else 3),
                 not args.no_rise)


if __name__ == "__main__":
    main()
