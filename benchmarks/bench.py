#!/usr/bin/env python
"""featviz speed and memory benchmark: the seed script's approach vs featviz export vs a floor.

One command, from the repository root (issue 4):

    python benchmarks/bench.py             # both cases, batch 1 and 8, 32 images, 3 rounds (~15 min)
    python benchmarks/bench.py --quick     # smoke run: 6 images, 1 round (~2 min)
    python benchmarks/bench.py --memory    # also peak RSS of `featviz export` on 40 and 400 images
    python benchmarks/bench.py --sweep     # also featviz at batch 1/4/8/16, workers 1/2/3, PNG level 1/2/3/6
    python benchmarks/bench.py --profile   # also a py-spy profile of one export (pip install py-spy)
    python benchmarks/bench.py --no-speed --whatif --whatif-singles
                                           # featviz with candidate speed-ups patched in, this process only
    python benchmarks/bench.py --device cuda --cases alexnet    # on a GPU

This file only runs the cases, in this order, in one process over the same photos; each case is
a file of its own, runnable alone as ``python benchmarks/<case>.py [--quick]``:

    encoders.py   PNG encoders alone                           (skip with --no-encoders)
    export.py     seed / featviz / floor / floor-isal per model (skip with --no-speed), and the
                  sweep of featviz's batch size, workers, PNG level (--sweep)
    whatif.py     featviz with candidate speed-ups patched in   (--whatif, --whatif-singles)
    startup.py    start-up times (skip with --no-startup) and peak memory (--memory)
    profiling.py  a py-spy profile of one export                (--profile)

floor.py is the floor method the cases compare featviz with; harness.py is what they share
(options, photos, timing, tables; its docstring shows how to write a new case).
"""

from __future__ import annotations

import argparse
import sys

import encoders
import export
import profiling
import startup
import whatif
from harness import Bench, run_alone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every case's options, and the switches that choose whole cases."""
    parser.add_argument("--no-encoders", action="store_true", help="skip the PNG encoder comparison")
    export.add_arguments(parser)
    parser.add_argument("--whatif", action="store_true",
                        help="featviz with candidate changes patched in (this process only), vs as is and the floor")
    whatif.add_arguments(parser)
    startup.add_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="py-spy profile of one featviz export")
    profiling.add_arguments(parser)


def run(bench: Bench, args: argparse.Namespace) -> None:
    """The cases in the order of the tables the README quotes."""
    if not args.no_encoders:
        encoders.run(bench, args)
    export.run(bench, args)
    if args.whatif:
        whatif.run(bench, args)
    startup.run(bench, args)
    if args.profile:
        profiling.run(bench, args)


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.py", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
