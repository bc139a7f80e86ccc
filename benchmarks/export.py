#!/usr/bin/env python
"""The export case: the seed script's approach vs featviz export vs the floor, per model.

    python benchmarks/export.py --quick             # both models, batch 1 and 8, 6 images, 1 round
    python benchmarks/export.py --sweep --no-speed  # only featviz's batch size / workers / PNG level

Every method runs over the same photos (harness.make_images) on one shared model object
(``weights=None``, seeded by featviz), so the pictures they encode hold the same content and
compress alike.

Methods (the issue's definitions):

seed     the tutorial's code path (shared/seed/attention-notes.zh.txt, section 3.1), per image:
         PIL open + convert RGB, transforms.Compose([Resize(256), CenterCrop(224), ToTensor(),
         Normalize]), iterate the feature stack (AlexNet's ``features``, ResNet's top-level
         children) under no_grad up to layer k, nn.UpsamplingBilinear2d(size=(256, 256)), one
         matplotlib figure (Agg) with one plt.subplot(rows, rows, i) per channel (imshow gray,
         axis off) saved with plt.savefig, and one PNG per channel written by PIL at its default
         settings after scipy.misc.imsave's old min-max byte scaling; plt.close() after each
         image. Batch size does not apply. (The model is in eval mode, so ResNet's batch norm
         uses its running statistics, as featviz does.)
featviz  featviz.output.export.Exporter(Visualizer(model, "none", [layer]), out, batch_size=B,
         workers=None) with default RenderOptions: full-size grid, per-channel PNGs, both
         overlays, summary, manifest.
floor    only what cannot be avoided, done as cheaply as we know how (floor.py says what that
         is). Before timing, the floor's pictures are compared with featviz's files for the five
         samples: they must be the same pixels ("max |featviz - floor| = 0").
floor-isal  the same floor, but each picture encoded by featviz's own PNG encoder (featviz.output.png:
         one Up filter in numpy, ISA-L deflate at level 1) instead of Pillow. featviz encodes
         this way, so this is the floor for featviz's own encoding: "featviz/floor-isal" is the
         honest measure of featviz's overhead; "featviz/floor" follows the issue's definition.

Timing: per case, a warm-up of every method on 2 images, then ``--repeats`` rounds in which the
featviz and floor runs (each batch size) are interleaved, order rotated each round; the seed
runs once per case (it is slow and has no batch size). Reported per method: images/s of the best
round (least disturbed by other processes) and the median, and process CPU seconds per image
(all threads; it measures work done and barely moves when other processes load the machine).
Ratios: from the best rounds; "paired" is the median over rounds of floor time / featviz time
for runs made next to each other.

``--sweep`` times featviz under candidate defaults (batch 1/4/8/16, workers 1/2/3, PNG level
2/3/6) next to the floor, on the first case only: the measurement behind featviz's defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from floor import floor_check, run_floor
from harness import Bench, Case, CaseContext, Variant, paired, run_alone, variant_table

# --------------------------------------------------------------------------------------------
# 1. the seed's approach
# --------------------------------------------------------------------------------------------

def seed_imsave(path: Path, array: Any) -> None:
    """scipy.misc.imsave of a 2-D float array: bytescale (min-max to 0..255, +0.5, truncate)
    then PIL's PNG writer at its defaults (compress_level 6)."""
    import numpy as np
    from PIL import Image

    data = np.asarray(array)
    cmin, cmax = data.min(), data.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1
    scale = 255.0 / cscale
    bytedata = (data - cmin) * scale
    Image.fromarray((bytedata.clip(0, 255) + 0.5).astype(np.uint8)).save(str(path))


def run_seed(ctx: CaseContext, paths: list[Path], out: Path, batch_size: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms

    k = ctx.case.stack_index
    for n, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        transform = transforms.Compose([
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        x = transform(image).unsqueeze(0).to(ctx.device)
        with torch.no_grad():
            for index, layer in enumerate(ctx.seed_layers):
                x = layer(x)
                if index == k:
                    break
        feature_map = x.squeeze(0)
        feature_map = feature_map.view(1, *feature_map.shape)
        feature_map = torch.nn.UpsamplingBilinear2d(size=(256, 256))(feature_map)
        feature_map = feature_map.view(*feature_map.shape[1:]).cpu()
        count = feature_map.shape[0]
        rows = int(np.ceil(np.sqrt(count)))
        folder = out / f"{n:04d}"
        folder.mkdir()
        plt.figure()
        for index in range(1, count + 1):
            plt.subplot(rows, rows, index)
            plt.imshow(feature_map[index - 1], cmap="gray")
            plt.axis("off")
            seed_imsave(folder / f"{index}.png", feature_map[index - 1])
        plt.savefig(folder / "grid.png")
        plt.close()


# --------------------------------------------------------------------------------------------
# 2. featviz
# --------------------------------------------------------------------------------------------

def run_featviz(ctx: CaseContext, paths: list[Path], out: Path, batch_size: int = 8,
                workers: int | None = None, png_level: int | None = None) -> None:
    from featviz.output.export import Exporter

    visualizer = ctx.visualizer if png_level is None else ctx.visualizer_with_level(png_level)
    report = Exporter(visualizer, out, batch_size=batch_size, workers=workers).run(ctx.inputs(paths))
    if report.failed:
        raise RuntimeError(f"featviz export failed: {report.errors[:3]}")


# --------------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------------

def _ratio_to(v: Variant, variants: list[Variant], method: str, n: int) -> tuple[float, float]:
    """featviz ``v`` over the ``method`` run of the same batch size: best rates, and paired."""
    other = next((f for f in variants if f.method == method and f.batch == v.batch), None)
    if other is None or not other.times or v.method != "featviz":
        return float("nan"), float("nan")
    return v.rate(n) / other.rate(n), paired(v, other)


def case_table(case: Case, variants: list[Variant], n: int, check: str) -> dict[str, Any]:
    """One model's table (every method, ratios of featviz to the seed and both floors), its JSON,
    and what the summary needs."""
    seed = next((v for v in variants if v.method == "seed"), None)
    seed_rate = seed.rate(n) if seed else float("nan")
    out = [f"\n== {case.label}: {n} images, floor pixels check: {check} =="]
    out.append(f"{'method':<10} {'batch':>5} {'img/s best':>10} {'median':>7} {'runs':>4} {'cpu-s/img':>9} "
               f"{'MB out/img':>10} {'x seed':>7} {'/floor':>7} {'paired':>7} {'/floor-isal':>11} {'paired':>7}")
    rows = []
    for v in variants:
        vs_floor, floor_paired = _ratio_to(v, variants, "floor", n)
        vs_isal, paired_isal = _ratio_to(v, variants, "floor-isal", n)
        out.append(f"{v.method:<10} {v.batch if v.batch else '-':>5} {v.rate(n):>10.2f} {v.rate(n, 'median'):>7.2f} "
                   f"{len(v.times):>4} {v.cpu_per_image(n):>9.2f} {v.out_bytes / n / 1e6:>10.2f} "
                   f"{v.rate(n) / seed_rate:>7.2f} "
                   + (f"{vs_floor:>7.2f} {floor_paired:>7.2f} {vs_isal:>11.2f} {paired_isal:>7.2f}"
                      if v.method == "featviz" else ""))
        rows.append({"method": v.method, "batch": v.batch, "times": v.times, "cpu": v.cpu, "rate_best": v.rate(n),
                     "rate_median": v.rate(n, "median"), "x_seed": v.rate(n) / seed_rate,
                     "featviz_over_floor": vs_floor, "paired": floor_paired, "featviz_over_floor_isal": vs_isal,
                     "paired_isal": paired_isal, "mb_out_per_image": v.out_bytes / n / 1e6})
    return {"text": "\n".join(out), "json": {"case": case.label, "check": check, "rows": rows},
            "case": case, "variants": variants}


def summary_table(tables: list[dict[str, Any]], n: int, repeats: int) -> str:
    """All models, one line per batch size: the numbers the README quotes."""
    out = [f"\n== summary: images/s (best of {repeats} round(s); seed: 1 run), {n} images =="]
    out.append(f"{'case':<27} {'batch':>5} {'seed':>6} {'featviz':>8} {'floor':>6} {'floor-isal':>10} "
               f"{'featviz/seed':>12} {'floor/seed':>10} {'featviz/floor':>13} {'featviz/floor-isal':>18} "
               f"{'paired':>6}")
    for t in tables:
        vs = t["variants"]
        seed = next((v for v in vs if v.method == "seed"), None)
        s = seed.rate(n) if seed else float("nan")
        for b in sorted({v.batch for v in vs if v.batch}):
            fv = next(v for v in vs if v.method == "featviz" and v.batch == b)
            fl = next(v for v in vs if v.method == "floor" and v.batch == b)
            fi = next(v for v in vs if v.method == "floor-isal" and v.batch == b)
            out.append(f"{t['case'].label:<27} {b:>5} {s:>6.2f} {fv.rate(n):>8.2f} {fl.rate(n):>6.2f} "
                       f"{fi.rate(n):>10.2f} "
                       f"{fv.rate(n) / s:>12.1f} {fl.rate(n) / s:>10.1f} {fv.rate(n) / fl.rate(n):>13.2f} "
                       f"{fv.rate(n) / fi.rate(n):>18.2f} {_ratio_to(fv, vs, 'floor-isal', n)[1]:>6.2f}")
    out.append("floor: the issue's floor (Pillow PNG, zlib level 1); floor-isal: the same minimal pass with "
               "featviz's PNG encoder (featviz.output.png: Up filter, ISA-L deflate level 1), the floor for featviz's "
               "own encoding; paired: median over rounds of floor-isal time / featviz time for runs next to "
               "each other")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# the case
# --------------------------------------------------------------------------------------------

def speed(bench: Bench, args: argparse.Namespace) -> None:
    """Per model: check the floor's pixels, time every method, print its table; then the summary."""
    table = []
    for case in bench.cases:
        ctx = CaseContext.build(case, bench.device)
        variants: list[Variant] = []
        if not args.no_seed:
            variants.append(Variant("seed", None, run_seed, label="seed", max_runs=args.seed_repeats))
        for b in bench.batches:
            variants.append(Variant("featviz", b, run_featviz))
            variants.append(Variant("floor", b, run_floor))
            variants.append(Variant("floor-isal", b, run_floor, {"encoder": "featviz"}))
        check = floor_check(ctx, bench.paths[:5], bench.scratch, 8, run_featviz)
        bench.measure(ctx, variants)
        rows = case_table(case, variants, bench.count, check)
        print(rows["text"], flush=True)
        table.append(rows)
        bench.results["cases"].append(rows["json"])
    if table:
        print(summary_table(table, bench.count, bench.repeats), flush=True)


def sweep(bench: Bench) -> None:
    """featviz export under candidate defaults, interleaved with the floor, first case only."""
    case = bench.cases[0]
    ctx = CaseContext.build(case, bench.device)
    cores = os.cpu_count() or 1
    variants = [Variant("floor-isal", 1, run_floor, {"encoder": "featviz"}, label="floor-isal b1 L1"),
                Variant("floor-isal", 1, run_floor, {"encoder": "featviz", "write": False},
                        label="floor-isal b1 no-write"),
                Variant("floor", 1, run_floor, label="floor b1 L1 (Pillow)")]
    for b in (1, 4, 8, 16):
        variants.append(Variant("featviz", b, run_featviz, label=f"featviz b{b} w{cores} L1"))
    for w in (1, 2, 3):
        if w != cores:
            variants.append(Variant("featviz", 1, run_featviz, {"workers": w}, label=f"featviz b1 w{w} L1"))
    for level in (2, 3, 6):
        variants.append(Variant("featviz", 1, run_featviz, {"png_level": level}, label=f"featviz b1 w{cores} L{level}"))
    bench.measure(ctx, variants)
    n = bench.count
    floor = variants[0]
    lines, rows = variant_table(variants, n, {"/floor-isal": lambda v: v.rate(n) / floor.rate(n),
                                              "/paired": lambda v: paired(v, floor)})
    print(f"\n== sweep: {case.label}, {n} images, best of {bench.repeats} (featviz's CPU default is "
          f"b1 w{cores} L1) ==\n" + "\n".join(lines), flush=True)
    bench.results["sweep"] = rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This case's options (the runner bench.py offers them too)."""
    parser.add_argument("--seed-repeats", type=int, default=1, help="seed runs per case (default 1)")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed's approach")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the seed/featviz/floor table (to run only --sweep, --memory, --profile)")
    parser.add_argument("--sweep", action="store_true",
                        help="featviz with batch 1/4/8/16, workers 1/2/3 and PNG level 1/2/3/6 (first case only)")


def run(bench: Bench, args: argparse.Namespace) -> None:
    """The speed tables unless --no-speed, then the sweep with --sweep."""
    bench.results["cases"] = []
    if not args.no_speed:
        speed(bench, args)
    if args.sweep:
        sweep(bench)


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, "export.py", add_arguments, run))
