#!/usr/bin/env python
"""The start-up and memory case: featviz as a user starts it, in fresh processes.

    python benchmarks/startup.py --quick                       # start-up only
    python benchmarks/startup.py --quick --memory --memory-sizes 40,400

Start-up: subprocess wall time of `featviz --help` (it must not import torch), of `featviz show`
on one photo, and of importing torchvision and building AlexNet alone (what `show` cannot avoid).
Memory: peak resident memory of `python -m featviz export` on N images; the difference between
two sizes shows whether memory grows with the number of images (it must not).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import ROOT, Bench, log, make_images, run_alone


def featviz_command() -> list[str]:
    script = Path(sys.executable).with_name("featviz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "featviz"]


def best_wall(command: list[str], runs: int, before: Callable[[], None] | None = None) -> float:
    best = math.inf
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        best = min(best, elapsed)
    return best


def startup(scratch: Path, quick: bool) -> dict[str, float]:
    log("start-up timings ...")
    out = scratch / "show-out"
    help_s = best_wall([*featviz_command(), "--help"], 2 if quick else 5)
    python_s = best_wall([sys.executable, "-c", "pass"], 2 if quick else 5)
    show_s = best_wall([*featviz_command(), "show", "sample_images/chelsea.jpg", "--weights", "none",
                        "--layer", "0", "--out", str(out), "--quiet"], 1 if quick else 3,
                       before=lambda: shutil.rmtree(out, ignore_errors=True))
    base_s = best_wall([sys.executable, "-c", "import torchvision; torchvision.models.alexnet(weights=None)"],
                       1 if quick else 3)
    shutil.rmtree(out, ignore_errors=True)
    return {"help": help_s, "python": python_s, "show": show_s, "baseline": base_s}


def peak_rss(images: Path, out: Path, label: str) -> dict[str, float]:
    """Run `python -m featviz export` in a fresh process: its ru_maxrss (peak resident set, which
    also counts the pages of torch's shared libraries that happen to be resident), and, sampled
    every 0.1 s from /proc, the peak of its anonymous memory (RssAnon: what featviz allocates)."""
    command = [sys.executable, "-m", "featviz", "export", str(images), "--out", str(out), "--weights", "none",
               "--layer", "0", "--quiet"]
    total = sum(1 for _ in images.iterdir())
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[int, float, float]] = []  # (images done, RSS MB, RssAnon MB)
    last_report = start
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            fields = {}
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    fields[key] = int(value.split()[0]) / 1024
            if "VmRSS" in fields:
                samples.append((_manifest_lines(out), fields["VmRSS"], fields.get("RssAnon", float("nan"))))
        except OSError:
            pass
        if time.perf_counter() - last_report > 15:
            last_report = time.perf_counter()
            log(f"  memory {label}: {_manifest_lines(out)}/{total} images, "
                f"RSS {samples[-1][1] if samples else 0:.0f} MB, {last_report - start:.0f} s")
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"featviz export exited {code}: {stderr[-500:]}")
    quarter = {}
    for q in (0.25, 0.5, 0.75):
        at = [rss for done, rss, _ in samples if done >= q * total]
        quarter[q] = at[0] if at else float("nan")
    return {"images": total, "maxrss_mb": usage.ru_maxrss / 1024, "seconds": elapsed,
            "anon_peak_mb": max((a for _, _, a in samples), default=float("nan")),
            "rss_25": quarter[0.25], "rss_50": quarter[0.5], "rss_75": quarter[0.75]}


def _manifest_lines(out: Path) -> int:
    try:
        with open(out / "manifest.jsonl", "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


def memory(scratch: Path, sizes: list[int]) -> list[dict[str, float]]:
    results = []
    for size in sizes:
        images = scratch / f"mem-in-{size}"
        make_images(images, size)
        out = scratch / f"mem-out-{size}"
        shutil.rmtree(out, ignore_errors=True)
        log(f"memory: featviz export of {size} images (alexnet layer 0, default outputs) ...")
        results.append(peak_rss(images, out, f"{size}"))
        log(f"  -> peak RSS {results[-1]['maxrss_mb']:.0f} MB in {results[-1]['seconds']:.0f} s")
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(images, ignore_errors=True)
    return results


def print_startup(s: dict[str, float], quick: bool) -> None:
    runs = "2 / 1 / 1" if quick else "5 / 3 / 3"
    print(f"\n== start-up (subprocess wall time, best of {runs} runs: --help / show / import) ==")
    print(f"python -c pass                                        {s['python']:6.2f} s")
    print(f"featviz --help                                        {s['help']:6.2f} s   (target < 0.3 s)")
    print(f"featviz show sample_images/chelsea.jpg --weights none  {s['show']:6.2f} s")
    print(f"python: import torchvision + alexnet(weights=None)     {s['baseline']:6.2f} s")
    print(f"show / import-and-build ratio                         {s['show'] / s['baseline']:6.2f}    "
          f"(target <= 1.5)", flush=True)


def print_memory(mem: list[dict[str, float]]) -> None:
    print("\n== peak resident memory: python -m featviz export DIR --weights none --layer 0 --quiet ==")
    print(f"{'images':>7} {'peak RSS MB':>12} {'peak anon MB':>12} {'RSS@25%':>8} {'RSS@50%':>8} "
          f"{'RSS@75%':>8} {'seconds':>8} {'img/s':>6}")
    for m in mem:
        print(f"{m['images']:>7} {m['maxrss_mb']:>12.0f} {m['anon_peak_mb']:>12.0f} {m['rss_25']:>8.0f} "
              f"{m['rss_50']:>8.0f} {m['rss_75']:>8.0f} {m['seconds']:>8.1f} {m['images'] / m['seconds']:>6.2f}")
    if len(mem) >= 2:
        print(f"difference {mem[-1]['images']} vs {mem[0]['images']} images: peak RSS "
              f"{mem[-1]['maxrss_mb'] - mem[0]['maxrss_mb']:+.0f} MB, peak anon "
              f"{mem[-1]['anon_peak_mb'] - mem[0]['anon_peak_mb']:+.0f} MB   (target <= 150 MB)", flush=True)
    print("peak RSS = ru_maxrss of the child; peak anon = highest sampled RssAnon (/proc, every 0.1 s): "
          "the memory featviz allocates, without torch's library pages", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This case's options (the runner bench.py offers them too)."""
    parser.add_argument("--memory", action="store_true", help="peak RSS of featviz export on --memory-sizes images")
    parser.add_argument("--memory-sizes", default="40,400", help="image counts for --memory (default 40,400)")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timings")


def run(bench: Bench, args: argparse.Namespace) -> None:
    """Start-up unless --no-startup, then memory with --memory."""
    if not args.no_startup:
        s = startup(bench.scratch, bench.quick)
        bench.results["startup"] = s
        print_startup(s, bench.quick)
    if args.memory:
        sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
        mem = memory(bench.scratch, sizes)
        bench.results["memory"] = mem
        print_memory(mem)


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, "startup.py", add_arguments, run))
