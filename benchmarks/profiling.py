#!/usr/bin/env python
"""The profile case: where one `featviz export` spends its time, by py-spy.

    python benchmarks/profiling.py --quick --profile-images 8    # needs `pip install py-spy`

py-spy samples every thread (idle samples included) of a `python -m featviz export` of
--profile-images photos per case; the collapsed stacks are kept in
benchmarks/profiles/pyspy-MODEL.txt and summarised by activity (PNG encoding, file writes,
tiles, forward pass, ...). Named profiling.py, not profile.py: torch imports cProfile, which
imports the standard library's ``profile``, and a benchmarks/profile.py would stand in for it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, Bench, Case, log, make_images, run_alone


def profile(scratch: Path, count: int, case: Case, rate: int = 200) -> str:
    """py-spy (all threads, idle samples included) over one `featviz export`; a text summary."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "py-spy not found: `pip install py-spy` (not a featviz dependency)"
    images = scratch / "prof-in"
    make_images(images, count)
    out = scratch / "prof-out"
    shutil.rmtree(out, ignore_errors=True)
    raw = scratch / "profile.txt"
    command = [spy, "record", "--idle", "--threads", "-r", str(rate), "-f", "raw", "-o", str(raw), "--",
               sys.executable, "-m", "featviz", "export", str(images), "--out", str(out), "--model", case.name,
               "--weights", "none", "--layer", case.layer, "--quiet"]
    log(f"profile: {' '.join(command)}")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return f"py-spy failed ({done.returncode}): {done.stderr.decode()[-800:]}"
    keep = ROOT / "benchmarks" / "profiles" / f"pyspy-{case.name}.txt"
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(raw, keep)
    return f"wall {wall:.1f} s for {count} images; collapsed stacks in {keep}\n" + summarize_profile(raw)


# What each sampled stack was doing: the first category whose marker is in the stack
# ("file:function" names, outermost first, joined by ";").
CATEGORIES = [
    ("imports", ("_find_and_load",)),
    ("model build + layer check", ("load_model", "Visualizer.__init__")),
    ("PNG encode (filter+deflate)", ("png_bytes", "encode_png", "_encode_tile", "PngImagePlugin.py:")),
    ("channel chart + csv", ("channel_chart", "bar_chart", "channel_csv", "channel_table")),
    ("report", ("report.py:",)),
    ("grid pixels", ("grid_image", "grid_pixels")),
    ("overlay pixels", ("heat_overlay",)),
    ("tiles: upsample+uint8", ("channel_tiles",)),
    ("file write (atomic)", ("atomic_write",)),
    ("summary/manifest json", ("summary", "json_bytes", "_emit")),
    ("decode + preprocess", ("load_image", "prepare", "Preprocess")),
    ("forward pass", ("capture", "_forward_group", "forward")),
]
IDLE_LEAVES = {"wait", "acquire", "get", "sleep", "select", "result", "_wait_for_tstate_lock", "join", "_worker"}


def _frame_name(frame: str) -> str:
    # py-spy raw frame: "function (path/file.py:line)"
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":")[0]
    return f"{file}:{name}"


def summarize_profile(raw: Path, top: int = 15) -> str:
    """Collapsed py-spy stacks (--idle --threads) -> where each thread's wall time went."""
    names_by_tid: dict[str, str] = {}
    parsed = []
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        tid, _, tname = frames[0].partition(": ")
        if tname:
            names_by_tid[tid] = tname
        parsed.append((tid, [_frame_name(f) for f in frames[1:] if " (" in f], int(count_text)))
    per_kind: dict[str, int] = {}
    cats: dict[tuple[str, str], int] = {}
    busy: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for tid, names, count in parsed:
        tname = names_by_tid.get(tid, "")
        kind = "main" if tname == "MainThread" else ("pool" if tname.startswith("featviz") else "other")
        total += count
        per_kind[kind] = per_kind.get(kind, 0) + count
        joined = ";".join(names)
        leaf = names[-1] if names else "?"
        idle = not names or leaf.split(":")[-1].split(".")[-1] in IDLE_LEAVES
        category = "idle/waiting" if idle else next(
            (label for label, marks in CATEGORIES if any(m in joined for m in marks)), "other")
        cats[(kind, category)] = cats.get((kind, category), 0) + count
        if category != "idle/waiting":
            busy[category] = busy.get(category, 0) + count
            leaves[leaf] = leaves.get(leaf, 0) + count
    if not total:
        return "no samples"
    out = [(f"samples: {total} (main thread {per_kind.get('main', 0)}, pool threads {per_kind.get('pool', 0)}, "
            f"other {per_kind.get('other', 0)}); --idle: every thread is sampled whether busy or not")]
    out.append("per thread kind, share of its samples (= of its lifetime):")
    for kind in ("main", "pool", "other"):
        n = per_kind.get(kind, 0)
        if n:
            rows = sorted(((c, v) for (k, c), v in cats.items() if k == kind), key=lambda x: -x[1])
            out.append(f"  {kind}: " + ", ".join(f"{c} {100 * v / n:.1f}%" for c, v in rows if 100 * v / n >= 0.5))
    n_busy = sum(busy.values())
    out.append(f"busy samples by activity, all Python threads (torch's own threads are not seen), {n_busy} samples:")
    for c, v in sorted(busy.items(), key=lambda x: -x[1]):
        out.append(f"  {100 * v / n_busy:5.1f} %  {c}")
    out.append(f"top {top} innermost Python frames of busy samples:")
    for name, v in sorted(leaves.items(), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * v / n_busy:5.1f} %  {name}")
    return "\n".join(out)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This case's options (the runner bench.py offers them too)."""
    parser.add_argument("--profile-images", type=int, default=32)


def run(bench: Bench, args: argparse.Namespace) -> None:
    """One profile per case."""
    for case in bench.cases:
        print(f"\n== profile: featviz export {case.label}, py-spy --idle --threads ==")
        print(profile(bench.scratch, args.profile_images, case), flush=True)


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, "profiling.py", add_arguments, run))
