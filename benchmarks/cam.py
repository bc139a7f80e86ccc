#!/usr/bin/env python
"""Class attention speed: featviz vs pytorch-grad-cam vs torch-cam, and --cam's cost in an export.

    python benchmarks/cam.py            # 32 photos, Grad-CAM and Score-CAM, batch 1 and 8 (very long on a CPU)
    python benchmarks/cam.py --quick    # smoke run: 4 photos for Grad-CAM, 1 photo at 64x64 for Score-CAM

All three libraries run in this process on the same ResNet-50 (``weights=None``, seeded), its
``layer4``, the same photos (the sample images at four scales, preprocessed once by featviz) and
the same target class (281). Each library's usual call is timed:

featviz          ``ClassExplainer.explain(batch)`` (one forward, one backward per batch; Score-CAM's
                 masked photos ``--cam-batch`` at a time) + ``cam_at_input`` (maps at input size).
pytorch-grad-cam ``GradCAM(model, [layer4])(batch, targets)`` / ``ScoreCAM`` (``batch_size`` =
                 the same cam batch); returns maps at input size.
torch-cam        ``model(batch)`` inside the extractor + ``extractor(class_idx, scores)``.

Grad-CAM and Score-CAM run ``--rounds`` interleaved rounds (the order of the three libraries
rotated each round), print every round and keep each library's best, the run least disturbed by
other processes. ``--methods scorecam --no-export`` times Score-CAM alone.

Before timing, the Grad-CAM maps of the first batch are compared at the layer's resolution
after min-max scaling (featviz vs torch-cam's raw maps and vs pytorch-grad-cam's own
``get_cam_image``): they must agree to 1e-4. Score-CAM is not compared: featviz follows the
authors' code, both peers softmax logits over channels (see the README, "Explaining a class").

Last, the cost of ``--cam gradcam`` in an export: ``Exporter`` over the same photos at the SAME
layer (``--export-model``/``--export-layer``, default ResNet-50 layer4; naming the layer matters:
without ``--layer`` the CLI's ``--cam`` moves the default from layer 0 to the last feature map,
which changes how many channel files are written), with and without ``cam=("gradcam",)``, in
interleaved rounds. Reported per round: wall seconds and the process's CPU seconds (all threads,
``time.process_time``); on a shared machine the CPU seconds barely move with other processes'
load while wall time does. ``--export-only`` skips the peers; ``--export-photos sample`` exports
the five sample images at their own resolutions (the overlays are drawn at photo resolution).

    python benchmarks/cam.py --export-only --export-model resnet18 --export-layer layer4 --export-photos sample

The machine this was written on was shared by several jobs: numbers are "measured under load".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TARGET = 281


def photos(folder: Path, count: int) -> list[Path]:
    """The five sample images at scales 1.0 / 0.85 / 0.7 / 0.55, as bench.py does."""
    samples = sorted((ROOT / "sample_images").glob("*.jpg"))
    paths = []
    for i in range(count):
        scale = (1.0, 0.85, 0.7, 0.55)[(i // len(samples)) % 4]
        with Image.open(samples[i % len(samples)]) as image:
            image = image.convert("RGB")
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            path = folder / f"photo{i:03d}.png"
            image.save(path)
            paths.append(path)
    return paths


def minmax(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1)


def runners(model: torch.nn.Module, method: str, cam_batch: int) -> dict[str, object]:
    import torchcam.methods as tc
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from featviz.capture.layers import LayerRef
    from featviz.maps.cam import cam_at_input
    from featviz.maps.explain import ClassExplainer
    from featviz.maps.targets import Target

    explainer = ClassExplainer(model, LayerRef("layer4", None, model.layer4), [method],
                               [Target(index=TARGET)], cam_batch=cam_batch)

    def featviz_run(batch: torch.Tensor) -> np.ndarray:
        maps = torch.stack([per[0].map for per in explainer.explain(batch).per_image])
        return cam_at_input(maps, tuple(batch.shape[2:])).numpy()

    def pgc_run(batch: torch.Tensor) -> np.ndarray:
        cls = GradCAM if method == "gradcam" else ScoreCAM
        peer = cls(model, [model.layer4])
        peer.batch_size = cam_batch
        try:
            return peer(batch, [ClassifierOutputTarget(TARGET)] * batch.shape[0])
        finally:
            peer.activations_and_grads.release()

    def torchcam_run(batch: torch.Tensor) -> np.ndarray:
        if method == "gradcam":
            with tc.GradCAM(model, "layer4", input_shape=tuple(batch.shape[1:])) as extractor:
                scores = model(batch)
                return extractor([TARGET] * batch.shape[0], scores)[0].detach().numpy()
        with tc.ScoreCAM(model, "layer4", batch_size=cam_batch, input_shape=tuple(batch.shape[1:])) as extractor:
            with torch.no_grad():
                model(batch)
            return extractor([TARGET] * batch.shape[0])[0].numpy()

    return {"featviz": featviz_run, "pytorch-grad-cam": pgc_run, "torch-cam": torchcam_run}


def check_gradcam(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Largest difference between featviz's and the peers' raw Grad-CAM maps (min-max scaled)."""
    import torchcam.methods as tc
    from pytorch_grad_cam import GradCAM

    from featviz.capture.layers import LayerRef
    from featviz.maps.explain import ClassExplainer
    from featviz.maps.targets import Target

    ours = np.stack([per[0].map.numpy() for per in ClassExplainer(
        model, LayerRef("layer4", None, model.layer4), ["gradcam"], [Target(index=TARGET)]).explain(batch).per_image])
    with tc.GradCAM(model, "layer4", input_shape=tuple(batch.shape[1:])) as extractor:
        scores = model(batch)
        theirs_tc = extractor([TARGET] * batch.shape[0], scores, normalized=False)[0].detach().numpy()
    peer = GradCAM(model, [model.layer4])
    try:
        outputs = peer.activations_and_grads(batch)
        model.zero_grad()
        sum(o[TARGET] for o in outputs).backward()
        recorded = peer.activations_and_grads
        theirs_pgc = np.maximum(peer.get_cam_image(batch, model.layer4, None, recorded.activations[0].numpy(),
                                                   recorded.gradients[0].numpy(), False), 0)
    finally:
        peer.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return float(max(np.abs(minmax(ours) - minmax(np.maximum(theirs_tc, 0))).max(),
                     np.abs(minmax(ours) - minmax(theirs_pgc)).max()))


def images_per_second(run: object, tensors: torch.Tensor, batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, tensors.shape[0], batch_size):
        run(tensors[start:start + batch_size])  # type: ignore[operator]
    return tensors.shape[0] / (time.perf_counter() - started)


def export_overhead(paths: list[Path], folder: Path, rounds: int, model: str = "resnet50",
                    layer: str = "layer4") -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of exports of ``model``'s ``layer`` without and with --cam gradcam, in
    interleaved rounds (the order alternates; one warm-up export each first). A deep layer writes
    thousands of channel PNGs per photo, so the disk's pace varies from round to round more than
    --cam changes it: compare CPU seconds, and the median of the wall times."""
    from featviz.inputs.discover import InputImage
    from featviz.output.export import Exporter
    from featviz.output.pipeline import RenderOptions, Visualizer

    inputs = [InputImage(path=p, key=Path(p.stem)) for p in paths]
    visualizers = {name: Visualizer(model, "none", [layer], options=RenderOptions(cam=cam, target=(str(TARGET),)))
                   for name, cam in (("plain", ()), ("cam", ("gradcam",)))}
    for visualizer in visualizers.values():  # warm-up
        Exporter(visualizer, folder / "warm-up", batch_size=1).run(inputs[:1])
        shutil.rmtree(folder / "warm-up")
    taken: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in visualizers}
    for round_ in range(rounds):
        for name in (("plain", "cam") if round_ % 2 == 0 else ("cam", "plain")):
            out = folder / f"export-{name}"
            started, cpu = time.perf_counter(), time.process_time()
            Exporter(visualizers[name], out, batch_size=1).run(inputs)
            taken[name]["wall"].append(time.perf_counter() - started)
            taken[name]["cpu"].append(time.process_time() - cpu)
            shutil.rmtree(out)
    return taken


def report_export(taken: dict[str, dict[str, list[float]]], model: str, layer: str, count: int) -> None:
    """Print every round and the extra time of --cam by the median of each measure."""
    for measure in ("wall", "cpu"):
        plain, cam = taken["plain"][measure], taken["cam"][measure]
        print(f"export {model} {layer}, {count} photos, {measure} s per round: without --cam "
              f"{[round(v, 2) for v in plain]}, with --cam gradcam {[round(v, 2) for v in cam]}; extra "
              f"{100 * (statistics.median(cam) / statistics.median(plain) - 1):+.0f}% by the median, "
              f"{100 * (min(cam) / min(plain) - 1):+.0f}% by the best round")


def export_parts(model: str, layer: str, repeats: int = 5) -> None:
    """What ``--cam gradcam`` adds to one photo's export, part by part, in CPU milliseconds of the
    thread that does the work (best of ``repeats``; the sample images at their own sizes): the
    gradient pass against the capture pass it replaces, and the overlays as the export's
    producers draw and encode them (spatial, channel and the class map, in that order, each
    result's producers made afresh)."""
    from featviz.output.pipeline import RenderOptions, Visualizer
    from featviz.output.resultfiles import result_files

    def best(run: object) -> float:
        times = []
        for _ in range(repeats):
            started = time.thread_time()
            run()  # type: ignore[operator]
            times.append(time.thread_time() - started)
        return 1000 * min(times)

    visualizer = Visualizer(model, "none", [layer], options=RenderOptions(cam=("gradcam",), target=(str(TARGET),)))
    explainer = visualizer.explainers[visualizer.layers[0].path]
    totals = dict.fromkeys(("capture pass", "gradient pass", "spatial_attention.png", "channel_attention.png",
                            "cam overlay png"), 0.0)
    for path in sorted((ROOT / "sample_images").glob("*.jpg")):
        prepared = visualizer.prepare(path)
        batch = prepared.tensor[None]
        totals["capture pass"] += best(lambda batch=batch: visualizer._capture(batch))
        totals["gradient pass"] += best(lambda batch=batch: explainer.explain(batch))
        [[result]] = visualizer.forward([prepared])

        def overlays(result: object = result) -> dict[str, float]:
            spent = {}
            for name, producer in result_files(result):  # type: ignore[arg-type]
                if name.endswith("_attention.png") or name.startswith("cam/"):
                    started = time.thread_time()
                    producer()
                    spent["cam overlay png" if name.startswith("cam/") else name] = time.thread_time() - started
            return spent

        runs = [overlays() for _ in range(repeats)]
        for name in runs[0]:
            totals[name] += 1000 * min(run[name] for run in runs)
    print(f"parts over the 5 sample images, {model} {layer}, CPU ms (best of {repeats}): "
          + ", ".join(f"{name} {value:.0f}" for name, value in totals.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 photos for Grad-CAM, 1 small photo for Score-CAM")
    parser.add_argument("--cam-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None,
                        help="Interleaved rounds, best kept [default: 3, --quick 2]")
    parser.add_argument("--methods", default="gradcam,scorecam", help="Which class maps to time (comma-separated)")
    parser.add_argument("--no-export", action="store_true", help="Skip the cost of --cam in an export")
    parser.add_argument("--export-only", action="store_true", help="Only the cost of --cam in an export")
    parser.add_argument("--export-model", default="resnet50", help="Model of the export part [default: resnet50]")
    parser.add_argument("--export-layer", default="layer4", help="Layer of the export part [default: layer4]")
    parser.add_argument("--export-photos", choices=["cut", "sample"], default="cut",
                        help="cut: the benchmark's photos; sample: the five sample images at full size")
    parser.add_argument("--export-rounds", type=int, default=None, help="Rounds of the export part [2, --quick 2]")
    parser.add_argument("--export-parts", action="store_true",
                        help="Only what --cam adds to one photo, part by part (CPU ms, the sample images)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rounds = args.rounds or (2 if args.quick else 3)

    from featviz.output.pipeline import Visualizer

    torch.set_grad_enabled(True)
    if args.export_parts:
        export_parts(args.export_model, args.export_layer)
        return
    count = 4 if args.quick else 32
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        paths = photos(folder, count)
        if args.export_only:
            export_part(args, paths, folder)
            return
        visualizer = Visualizer("resnet50", "none", ["layer4"])
        model = visualizer.loaded.module.eval()
        tensors = torch.stack([visualizer.prepare(p).tensor for p in paths])
        print(f"ResNet-50 (weights none) layer4, target {TARGET}, {count} photos {tuple(tensors.shape[2:])}, "
              f"torch threads {torch.get_num_threads()}")
        if "gradcam" in methods:
            print(f"Grad-CAM maps agree: max |featviz - peer| after min-max = {check_gradcam(model, tensors[:2]):.2e}")
        cases = [("gradcam", tensors, (1, 8) if not args.quick else (1, 4))]
        small = torch.nn.functional.interpolate(tensors[:1], size=(64, 64), mode="bilinear", align_corners=False)
        cases.append(("scorecam", small if args.quick else tensors, (1,) if args.quick else (1, 8)))
        print(f"{'method':<9} {'batch':>5}  {'featviz':>9} {'pytorch-grad-cam':>17} {'torch-cam':>10}  "
              f"{'featviz / faster peer':>22}  (images/s)")
        for method, data, batches in [case for case in cases if case[0] in methods]:
            run = runners(model, method, args.cam_batch)
            if method == "gradcam":  # warm-up on one photo (Score-CAM's thousands of passes need none)
                for name in run:
                    run[name](data[:1])  # type: ignore[operator]
            for batch_size in batches:
                rates = dict.fromkeys(run, 0.0)
                names = list(run)
                every: dict[str, list[float]] = {name: [] for name in run}
                for round_ in range(rounds):  # interleaved rounds, the order rotated; the best is kept
                    for name in names[round_ % 3:] + names[:round_ % 3]:
                        every[name].append(images_per_second(run[name], data, batch_size))
                        rates[name] = max(every[name])
                print(f"{method} batch {batch_size}, images/s per round: "
                      + ", ".join(f"{name} {[round(r, 4) for r in values]}" for name, values in every.items()))
                faster = max(rates["pytorch-grad-cam"], rates["torch-cam"])
                print(f"{method:<9} {batch_size:>5}  {rates['featviz']:>9.2f} {rates['pytorch-grad-cam']:>17.2f} "
                      f"{rates['torch-cam']:>10.2f}  {rates['featviz'] / faster:>21.2f}x")
        if args.no_export:
            return
        export_part(args, paths, folder)


def export_part(args: argparse.Namespace, paths: list[Path], folder: Path) -> None:
    chosen = (sorted((ROOT / "sample_images").glob("*.jpg")) if args.export_photos == "sample"
              else paths[: (2 if args.quick else 4)])
    rounds = args.export_rounds or (2 if args.quick else 4)
    taken = export_overhead(chosen, folder, rounds, args.export_model, args.export_layer)
    report_export(taken, args.export_model, args.export_layer, len(chosen))


if __name__ == "__main__":
    main()
