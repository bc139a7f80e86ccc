#!/usr/bin/env python
"""featviz atlas: throughput against the floor, and peak memory against the number of images.

    python benchmarks/atlas.py            # 256 photos, AlexNet features.10 and ResNet-50 layer3,
                                          # memory for 200 vs 2,000 images
    python benchmarks/atlas.py --quick    # 32 photos, memory for 100 vs 1,000 images

Photos: the five ``sample_images/*.jpg`` at scales 1.0 / 0.8 / 0.6 / 0.45 and crops (whole,
centre 80%, top-left 70%, a 2:1 strip), written as JPEG to a temporary folder; photo i is sample
i % 5, scale (i // 5) % 4, crop (i // 20) % 4. Models with ``weights=None`` (seeded), on the CPU.

floor   decode + featviz's Preprocess on a thread pool one batch ahead, the forward pass up to
        the layer (featviz's capture, which stops there), and a per-channel max: nothing kept,
        nothing written.
atlas   the first pass of ``featviz atlas`` (featviz.atlas.export.AtlasRun.collect): the same, plus
        the top-N lists and statistics (--top 9), and the state written once at the end.
write   the second pass alone (receptive fields, atlas.json, channels/NNNN.png, atlas.png,
        index.html), reported separately: its cost depends on the kept photos and the channels,
        not on the collection's size.

Rounds: floor and atlas alternate ``--repeats`` times; images/s of the best round each, and the
ratio of those. Memory: a child process per size runs the first pass (AlexNet features.10 at
--crop 64, so that 2,000 photos take seconds) and reports its own peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCALES = (1.0, 0.8, 0.6, 0.45)


def make_photos(folder: Path, count: int, side: int | None = None) -> list[Path]:
    """``count`` JPEGs made from the samples at several scales and crops (``side``: shrink
    every photo to at most that many pixels, for the memory runs)."""
    samples = sorted((ROOT / "sample_images").glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        with Image.open(samples[i % len(samples)]) as image:
            photo = image.convert("RGB")
        w, h = photo.size
        crops = [(0, 0, w, h), (w // 10, h // 10, w - w // 10, h - h // 10), (0, 0, int(w * 0.7), int(h * 0.7)),
                 (0, h // 4, w, h // 4 + min(h // 2, w // 2))]
        photo = photo.crop(crops[(i // 20) % 4])
        scale = SCALES[(i // 5) % 4]
        photo = photo.resize((max(8, int(photo.width * scale)), max(8, int(photo.height * scale))))
        if side:
            photo.thumbnail((side, side))
        path = folder / f"photo{i:05d}.jpg"
        photo.save(path, quality=90)
        paths.append(path)
    return paths


def _inputs(paths: list[Path]) -> list:
    from featviz.inputs.discover import find_images

    return find_images([str(paths[0].parent)]).images


def floor(visualizer, images, batch_size: int) -> float:
    """Seconds for decode + preprocess + forward to the layer + per-channel max, batched."""
    from featviz.capture.hooks import capture

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # as many threads as the atlas
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        ahead = [pool.submit(visualizer.prepare, image.path, str(image.key)) for image in batches[0]]
        for index in range(len(batches)):
            current = ahead
            if index + 1 < len(batches):
                ahead = [pool.submit(visualizer.prepare, image.path, str(image.key)) for image in batches[index + 1]]
            tensors = torch.stack([future.result().tensor for future in current])
            captured = capture(visualizer.loaded.module, visualizer.layers, tensors)
            for activations in captured.values():
                activations.amax(dim=(2, 3))
    return time.perf_counter() - started


def atlas_pass(visualizer, images, batch_size: int, out: Path) -> tuple[float, float, object]:
    """(seconds of the pass, seconds of the set-up before it, the state). The set-up (the
    weights digest that guards --merge and --resume, one blank forward pass for the shapes) is
    paid once per run, whatever the number of images."""
    from featviz.atlas.export import AtlasRun, atlas_settings

    started = time.perf_counter()
    run = AtlasRun(visualizer, out, batch_size=batch_size, checkpoint_seconds=float("inf"))
    settings = atlas_settings(visualizer, top=9, by="max", images=images, model="bench", weights="none", seed=0)
    state = run.start(settings, (1, 1), resume=False)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    state = run.collect(state, images)
    return time.perf_counter() - started, setup, state


def speed(args: argparse.Namespace, folder: Path) -> list[dict]:
    from featviz.atlas.export import write_atlas
    from featviz.output.pipeline import Visualizer

    paths = make_photos(folder / "photos", args.images)
    images = _inputs(paths)
    rows = []
    for model, layer in (("alexnet", "features.10"), ("resnet50", "layer3")):
        if model not in args.cases.split(","):
            continue
        visualizer = Visualizer(model, "none", [layer])
        floor(visualizer, images[:4], args.batch_size)  # warm-up
        best_floor = best_atlas = setup = float("inf")
        state = None
        for round_ in range(args.repeats):
            best_floor = min(best_floor, floor(visualizer, images, args.batch_size))
            seconds, setup_seconds, state = atlas_pass(visualizer, images, args.batch_size,
                                                       folder / f"out-{model}-{round_}")
            best_atlas, setup = min(best_atlas, seconds), min(setup, setup_seconds)
        started = time.perf_counter()
        if not args.no_write:
            write_atlas(state, visualizer, folder / f"out-{model}-0")
        write_seconds = time.perf_counter() - started if not args.no_write else float("nan")
        row = {"model": model, "layer": layer, "images": len(images), "batch": args.batch_size,
               "floor_img_s": round(len(images) / best_floor, 2), "atlas_img_s": round(len(images) / best_atlas, 2),
               "atlas/floor": round(best_floor / best_atlas, 3), "setup_s": round(setup, 2),
               "write_s": round(write_seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def child_memory(count: int, folder: Path) -> None:
    """In a child process: the first pass over ``count`` small photos; prints peak RSS in MiB."""
    from featviz.output.pipeline import Visualizer

    paths = make_photos(folder, count, side=96)
    images = _inputs(paths)
    visualizer = Visualizer("alexnet", "none", ["features.10"], crop=64, resize=72)
    _, _, state = atlas_pass(visualizer, images, 8, folder.parent / f"out-{count}")
    assert next(iter(state.tables.values())).images == count
    print(json.dumps({"images": count,
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def memory(counts: tuple[int, int], folder: Path) -> dict:
    peaks = {}
    for count in counts:
        done = subprocess.run([sys.executable, __file__, "--child-memory", str(count), "--folder",
                               str(folder / f"m{count}")],
                              capture_output=True, text=True, check=True)
        peaks[count] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    row = {"memory_images": list(counts), "peak_rss_mib": [peaks[c] for c in counts],
           "growth_mib": round(peaks[counts[1]] - peaks[counts[0]], 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 photos, 1 round, memory for 100 vs 1,000 images")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cases", default="alexnet,resnet50", help="comma-separated: alexnet, resnet50")
    parser.add_argument("--no-write", action="store_true", help="skip timing the second pass")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--make-photos", type=int, default=None, metavar="N",
                        help="only write N photos made from the samples into --folder (docs/make_pictures.sh)")
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.make_photos is not None:
        make_photos(args.folder, args.make_photos)
        return
    if args.child_memory is not None:
        child_memory(args.child_memory, args.folder)
        return
    if args.quick:
        args.images, args.repeats = 32, 1
    with tempfile.TemporaryDirectory(prefix="featviz-atlas-bench-") as tmp:
        if not args.no_speed:
            speed(args, Path(tmp))
        if not args.no_memory:
            memory((100, 1000) if args.quick else (200, 2000), Path(tmp))


if __name__ == "__main__":
    main()
