#!/usr/bin/env python
"""The encoders case: PNG encoders alone, on featviz's own pictures of one photo.

    python benchmarks/encoders.py --quick

Pillow (zlib level 1, with and without zlib's Z_RLE strategy) against featviz.output.png (one Up
filter, then zlib or ISA-L deflate at level 1), one thread, best of 5: the measurement behind
featviz's encoder. Every encoded file is decoded back and compared with the pixels.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

from floor import floor_png
from harness import SAMPLES, Bench, Case, CaseContext, run_alone


def encoders(case: Case, device: str, image: Path, rounds: int = 5) -> tuple[str, list[dict[str, Any]]]:
    """Pillow against featviz.output.png on featviz's own pictures of one photo (one thread): the
    measurement behind featviz's encoder. Pixels are decoded back and compared."""
    import zlib

    import numpy as np
    from PIL import Image

    from featviz.output import png
    ctx = CaseContext.build(case, device)
    [result] = ctx.visualizer.run([image])
    pictures = {"grid": result.grid_pixels(), "channel tile": result.tiles[0],
                "overlay (RGB)": np.asarray(result.spatial_overlay())}

    def pillow(pixels: Any, strategy: int) -> bytes:
        return floor_png(pixels, 1, strategy)

    def featviz_png(pixels: Any, module: Any) -> bytes:
        saved = png.ISAL
        png.ISAL = module
        try:
            return png.encode_png(pixels, 1)
        finally:
            png.ISAL = saved

    methods = [("Pillow level 1", lambda px: pillow(px, -1)),
               ("Pillow level 1 Z_RLE", lambda px: pillow(px, zlib.Z_RLE)),
               ("featviz.output.png zlib 1", lambda px: featviz_png(px, None))]
    if png.ISAL is not None:
        methods.append(("featviz.output.png ISA-L 1", lambda px: featviz_png(px, png.ISAL)))
    out = [f"\n== PNG encoders on {case.label} pictures of {image.name}: one thread, best of {rounds} =="]
    out.append(f"{'picture':<14} {'pixels':>10} {'encoder':<22} {'ms':>7} {'MB/s':>6} {'bytes':>9} {'same pixels':>11}")
    rows = []
    for label, pixels in pictures.items():
        for name, encode in methods:
            best = math.inf
            for _ in range(rounds):
                start = time.perf_counter()
                data = encode(pixels)
                best = min(best, time.perf_counter() - start)
            same = np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
            out.append(f"{label:<14} {pixels.size:>10} {name:<22} {best * 1e3:>7.2f} "
                       f"{pixels.nbytes / best / 1e6:>6.0f} "
                       f"{len(data):>9} {same!s:>11}")
            rows.append({"picture": label, "encoder": name, "seconds": best, "bytes": len(data), "same": same})
    return "\n".join(out), rows




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own: it measures the first of --cases on chelsea.jpg."""


def run(bench: Bench, args: argparse.Namespace) -> None:
    """The encoder table for the first case."""
    text, rows = encoders(bench.cases[0], bench.device, SAMPLES / "chelsea.jpg")
    print(text, flush=True)
    bench.results["encoders"] = rows


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, "encoders.py", add_arguments, run))
