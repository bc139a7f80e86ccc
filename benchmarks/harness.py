r"""The shared harness of featviz's benchmarks: one file per case sits on top of it.

Why a harness: every case times featviz against a baseline run in the same process, over the
same photos, on the same model, in interleaved rounds (the machine is shared, so a ratio of
neighbouring runs is worth more than an absolute rate). That machinery lives here once; a case
file only says what it runs and which ratios it prints.

API (everything a case needs):

    Case, CASES          a model and layer to measure ("alexnet", "resnet50"); --cases picks them
    CaseContext.build    the case's model loaded once (featviz Visualizer, seeded random weights)
                         shared by every method, so all pictures hold the same content
    Variant(method, batch, run, kwargs, label, max_runs)
                         one thing to time: ``run(ctx, paths, out, batch_size=batch, **kwargs)``
                         must read ``paths`` and write its files under ``out``
    Bench                one benchmark process: parsed options, scratch folder, the sample photos
                         (``bench.paths``, ``bench.warmup``), the JSON results; ``bench.measure``
                         warms up every variant, then times them in rotated, interleaved rounds
    variant_table        the standard table (img/s best and median, CPU-s/img, MB out/img) plus
                         your ratio columns, and the matching JSON rows
    paired               median over rounds of reference time / variant time (runs side by side)
    make_parser, run_alone
                         the common options (--quick, --images, --device, --cases,
                         --batch-sizes, --repeats, --json, --tmp) and a ``main`` for a case file

A new case is a new file, runnable as ``python benchmarks/<case>.py [--quick]`` and importable
by the runner ``bench.py`` (add it there). This one, whole, times featviz export against featviz's
in-memory pipeline (the same pictures, nothing written):

    import argparse, sys
    from pathlib import Path
    from export import run_featviz
    from harness import Bench, CaseContext, Variant, paired, run_alone, variant_table

    def run_in_memory(ctx: CaseContext, paths: list[Path], out: Path, batch_size: int = 1) -> None:
        ctx.visualizer.run(paths)  # the work to time; a method that writes puts its files in out

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        pass  # this case's own options, if any

    def run(bench: Bench, args: argparse.Namespace) -> None:
        for case in bench.cases:
            ctx = CaseContext.build(case, bench.device)
            base, ours = Variant("in memory", 1, run_in_memory), Variant("featviz", 1, run_featviz)
            bench.measure(ctx, [base, ours])
            lines, rows = variant_table([base, ours], bench.count, {"/paired": lambda v: paired(v, base)})
            print(f"\n== export vs in memory: {case.label} ==\n" + "\n".join(lines), flush=True)
            bench.results.setdefault("in_memory", []).append({"case": case.label, "rows": rows})

    if __name__ == "__main__":
        sys.exit(run_alone(__doc__, "in_memory.py", add_arguments, run))
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
SCALES = (1.0, 0.85, 0.7, 0.55)
TILE = 256


@dataclass(frozen=True)
class Case:
    """One model and layer to measure; ``stack_index`` is the same layer as the seed script
    counts it (the k-th entry of the feature stack it iterates)."""

    name: str  # torchvision model name
    layer: str  # featviz --layer value (module path)
    stack_index: int  # index k in the seed's feature stack
    channels: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.layer} ({self.channels} ch)"


CASES = {
    "alexnet": Case("alexnet", "features.0", 0, 64),
    "resnet50": Case("resnet50", "layer1", 4, 256),
}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


def loadavg() -> str:
    """The machine's load next to each timing: on a shared machine it says how far to trust it."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs: sample i % 5 at scale SCALES[(i // 5) % 4]; scale 1.0 is a byte copy.
    Several scales, so that decoding and overlay sizes vary as they do in a real folder."""
    from PIL import Image

    samples = sorted(SAMPLES.glob("*.jpg"))
    if not samples:
        raise SystemExit(f"no sample images in {SAMPLES}")
    folder.mkdir(parents=True, exist_ok=True)
    variants: dict[tuple[int, int], bytes] = {}
    paths = []
    for i in range(count):
        s, r = i % len(samples), (i // len(samples)) % len(SCALES)
        if (s, r) not in variants:
            if SCALES[r] == 1.0:
                variants[s, r] = samples[s].read_bytes()
            else:
                with Image.open(samples[s]) as im:
                    im = im.convert("RGB")
                    size = (max(1, round(im.width * SCALES[r])), max(1, round(im.height * SCALES[r])))
                    buffer = io.BytesIO()
                    im.resize(size, Image.BILINEAR).save(buffer, format="JPEG", quality=92)
                    variants[s, r] = buffer.getvalue()
        path = folder / f"{i:04d}_{samples[s].stem}.jpg"
        path.write_bytes(variants[s, r])
        paths.append(path)
    return paths


def fresh_dir(root: Path, name: str) -> Path:
    """An empty folder ``root/name``: every run starts without the previous run's files."""
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def image_pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.width * im.height


# --------------------------------------------------------------------------------------------
# the model every method of a case shares
# --------------------------------------------------------------------------------------------

def seed_stack(module: Any) -> list[Any]:
    """What the tutorial iterates: ``model.features`` (AlexNet), the top-level children (ResNet)."""
    return list(module.features) if hasattr(module, "features") else list(module.children())


@dataclass
class CaseContext:
    """One case's model, built once: ``visualizer`` (featviz), ``trunk`` (the network up to the
    layer, for baselines that run it themselves), ``seed_layers`` (the seed's feature stack) and
    ``jet`` (uint8 (256, 3) colour table); all share the same module, hence the same weights."""

    case: Case
    device: Any
    visualizer: Any
    trunk: Any
    seed_layers: list[Any]
    jet: Any
    _by_level: dict[int, Any] = field(default_factory=dict)
    _inputs: dict[tuple[str, ...], Any] = field(default_factory=dict)

    @classmethod
    def build(cls, case: Case, device: str) -> CaseContext:
        import torch

        from featviz.output.pipeline import Visualizer
        from featviz.output.render import colormap_lut

        visualizer = Visualizer(case.name, "none", [case.layer], device=device)
        module = visualizer.loaded.module.eval()
        if case.name == "alexnet":
            trunk = module.features[: case.stack_index + 1]
        else:
            trunk = torch.nn.Sequential(*list(module.children())[: case.stack_index + 1])
        return cls(case, visualizer.device, visualizer, trunk, seed_stack(module), colormap_lut("jet"))

    def visualizer_with_level(self, level: int) -> Any:
        """The same model drawn at another PNG level (cached: building it is not what is timed)."""
        from dataclasses import replace

        from featviz.output.pipeline import Visualizer

        if level not in self._by_level:
            base = self.visualizer
            self._by_level[level] = Visualizer(self.case.name, "none", [self.case.layer],
                                               options=replace(base.options, png_level=level),
                                               loaded=base.loaded)
        return self._by_level[level]

    def inputs(self, paths: list[Path]) -> Any:
        """featviz's InputImage list for ``paths`` (cached: finding inputs is not what is timed)."""
        from pathlib import PurePosixPath

        from featviz.inputs.discover import InputImage

        key = tuple(map(str, paths))
        if key not in self._inputs:
            self._inputs[key] = [InputImage(path=p, key=PurePosixPath(p.stem)) for p in paths]
        return self._inputs[key]


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One thing to time and its measurements. ``max_runs`` caps its timed rounds (the seed is
    slow and has nothing to gain from more); None times it every round."""

    method: str  # seed / featviz / floor / floor-isal / ...
    batch: int | None
    run: Callable[..., None]
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    max_runs: int | None = None
    last_cpu: float = 0.0
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads) per run
    out_bytes: int = 0

    @property
    def name(self) -> str:
        return self.label or f"{self.method} b{self.batch}"

    def cpu_per_image(self, n: int) -> float:
        return statistics.median(self.cpu) / n if self.cpu else float("nan")

    def rate(self, n: int, how: str = "best") -> float:
        """Images per second of the best round (least disturbed by other processes) or the median."""
        if not self.times:
            return float("nan")
        t = min(self.times) if how == "best" else statistics.median(self.times)
        return n / t


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(ctx: CaseContext, variant: Variant, paths: list[Path], scratch: Path, keep: bool = False) -> float:
    """Wall seconds of one run into a fresh folder; records its process CPU time and bytes out.
    CPU time counts all threads and barely moves when other processes load the machine."""
    import gc

    import torch

    out = fresh_dir(scratch, "out")
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    cpu = _cpu_seconds()
    start = time.perf_counter()
    kwargs = dict(variant.kwargs)
    if variant.batch is not None:
        kwargs["batch_size"] = variant.batch
    variant.run(ctx, paths, out, **kwargs)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    variant.last_cpu = _cpu_seconds() - cpu
    variant.out_bytes = dir_bytes(out)
    if not keep:
        shutil.rmtree(out)
    return elapsed


def measure(ctx: CaseContext, variants: list[Variant], paths: list[Path], scratch: Path, repeats: int,
            warmup: list[Path]) -> None:
    """A warm-up of every variant, then ``repeats`` rounds with the order rotated each round, so
    that no variant always runs first (or always next to the same neighbour)."""
    log(f"[{ctx.case.label}] warm-up on {len(warmup)} images (load {loadavg()})")
    for v in variants:
        timed(ctx, v, warmup, scratch)
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            if v.max_runs is not None and len(v.times) >= v.max_runs:
                continue
            t = timed(ctx, v, paths, scratch)
            v.times.append(t)
            v.cpu.append(v.last_cpu)
            log(f"[{ctx.case.label}] round {r + 1}/{repeats} {v.name:<20} {len(paths) / t:7.2f} img/s "
                f"({t:6.1f} s wall, {v.last_cpu / len(paths):5.2f} cpu-s/img, load {loadavg()})")


def paired(v: Variant, reference: Variant) -> float:
    """Median over rounds of reference time / ``v``'s time, for runs made next to each other."""
    return statistics.median(f / t for t, f in zip(v.times, reference.times, strict=True))


def variant_row(v: Variant, n: int) -> dict[str, Any]:
    """The JSON row of one variant: raw times, so that a reader can compute other statistics."""
    return {"variant": v.name, "times": v.times, "cpu": v.cpu, "rate_best": v.rate(n),
            "mb_out_per_image": v.out_bytes / n / 1e6}


def variant_table(variants: list[Variant], n: int,
                  ratios: dict[str, Callable[[Variant], float]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and one line per variant (name, img/s best and median, CPU-s per image, MB
    written per image, then one column per ``ratios`` entry: header -> ratio of a variant), and
    the JSON rows."""
    widths = {name: max(7, len(name)) for name in ratios}
    lines = [f"{'variant':<24} {'img/s best':>10} {'median':>7} {'cpu-s/img':>9} {'MB out/img':>10}"
             + "".join(f" {name:>{widths[name]}}" for name in ratios)]
    for v in variants:
        lines.append(f"{v.name:<24} {v.rate(n):>10.2f} {v.rate(n, 'median'):>7.2f} {v.cpu_per_image(n):>9.2f} "
                     f"{v.out_bytes / n / 1e6:>10.2f}"
                     + "".join(f" {ratio(v):>{widths[name]}.2f}" for name, ratio in ratios.items()))
    return lines, [variant_row(v, n) for v in variants]


# --------------------------------------------------------------------------------------------
# the environment header
# --------------------------------------------------------------------------------------------

def environment(device: str) -> list[str]:
    """What a number depends on (versions, CPU, threads, load), printed above every table."""
    import matplotlib
    import numpy as np
    import PIL
    import torch
    import torchvision

    import featviz

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [
        f"date        {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"featviz     {featviz.__version__} ({_git_rev()})",
        f"python      {platform.python_version()} on {platform.platform()}",
        f"cpu         {cpu}; os.cpu_count()={os.cpu_count()}, usable={affinity}",
        f"torch       {torch.__version__}, threads={torch.get_num_threads()}, "
        f"interop={torch.get_num_interop_threads()}",
        (f"libs        torchvision {torchvision.__version__}, pillow {PIL.__version__}, numpy {np.__version__}, "
         f"matplotlib {matplotlib.__version__}"),
        f"device      {device}" + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""),
        f"load avg    {loadavg()} (at start)",
    ]
    return rows


def _git_rev() -> str:
    """The commit measured, "+dirty" when featviz/ has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "featviz"], cwd=ROOT, capture_output=True, text=True,
                               check=False)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------
# one benchmark process: options, scratch folder, photos, results
# --------------------------------------------------------------------------------------------

def make_parser(doc: str) -> argparse.ArgumentParser:
    """The options every case understands; a case adds its own with ``add_arguments``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 images, 1 round, short start-up timing")
    parser.add_argument("--images", type=int, default=None, help="images per run (default 32; --quick 6)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", default="alexnet,resnet50", help="comma-separated: alexnet,resnet50")
    parser.add_argument("--batch-sizes", default="1,8", help="featviz/floor batch sizes (default 1 and featviz's 8)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of featviz/floor (default 3; --quick 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    return parser


@dataclass
class Bench:
    """One benchmark process, shared by the cases it runs: the options, the scratch folder
    (removed at the end), the photos every case measures on, and the results for --json."""

    args: argparse.Namespace
    count: int  # images per run
    repeats: int  # timed rounds
    cases: list[Case]
    batches: list[int]
    scratch: Path
    paths: list[Path] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.args.device

    @property
    def quick(self) -> bool:
        return self.args.quick

    @property
    def warmup(self) -> list[Path]:
        return self.paths[:2]

    def measure(self, ctx: CaseContext, variants: list[Variant]) -> None:
        """:func:`measure` on this process's photos, rounds and scratch folder."""
        measure(ctx, variants, self.paths, self.scratch, self.repeats, self.warmup)


@contextmanager
def bench_session(args: argparse.Namespace, script: str, argv: list[str] | None) -> Iterator[Bench]:
    """Print the environment and the photos, yield the Bench, then the end load and --json.
    ``script`` names the file run, for the ``command`` line of the header."""
    count = args.images or (6 if args.quick else 32)
    if count < 32 and not args.quick:
        log(f"note: {count} images; issue 4's measurement uses at least 32")
    repeats = args.repeats or (1 if args.quick else 3)
    cases = [CASES[name.strip()] for name in args.cases.split(",") if name.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    scratch = Path(tempfile.mkdtemp(prefix="featviz-bench-", dir=args.tmp))
    bench = Bench(args, count, repeats, cases, batches, scratch,
                  results={"images": count, "repeats": repeats, "device": args.device})
    try:
        env = environment(args.device)
        print("== environment ==")
        print("\n".join(env), flush=True)
        bench.results["environment"] = env
        bench.paths = make_images(scratch / "images", count)
        pixels = sum(image_pixels(p) for p in bench.paths) / len(bench.paths)
        print(f"images      {count} JPEGs ({pixels / 1e6:.2f} Mpx average photo): "
              f"sample_images/*.jpg at scales {', '.join(map(str, SCALES))}")
        print(f"command     python benchmarks/{script} {' '.join(argv if argv is not None else sys.argv[1:])}",
              flush=True)
        yield bench
        print(f"\nload avg at end: {loadavg()}")
        if args.json:
            args.json.write_text(json.dumps(bench.results, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_alone(doc: str, script: str, add_arguments: Callable[[argparse.ArgumentParser], None],
              run: Callable[[Bench, argparse.Namespace], None], argv: list[str] | None = None) -> int:
    """``main`` of a case file: the common options plus the case's, then the case in a session."""
    parser = make_parser(doc)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with bench_session(args, script, argv) as bench:
        run(bench, args)
    return 0
