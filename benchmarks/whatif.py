#!/usr/bin/env python
"""The what-if case: featviz with candidate changes patched in, vs featviz as is and the floor.

    python benchmarks/whatif.py --quick                   # all patches together, both models
    python benchmarks/whatif.py --quick --whatif-singles  # also each patch alone

Each patch replaces one featviz function for the default path with a cheaper one that makes the
same pixels (checked against the floor before timing); anything off the default path is passed
to the original. The patches live in THIS process only (featviz/ is untouched): they exist to
put numbers on recommendations, not to be used. The batch size is the last of --batch-sizes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from export import run_featviz
from floor import (
    floor_check,
    floor_grid,
    floor_overlay,
    floor_png,
    run_floor,
    tiles_in_place,
)
from harness import Bench, CaseContext, Variant, paired, run_alone, variant_table


def _patch_tiles(original: Callable[..., Any]) -> Callable[..., Any]:
    """render.channel_tiles scaling in place (no float copies); the same bytes."""
    def channel_tiles(activations: Any, size: int, channels: Any = None, bounds: Any = None) -> Any:
        import numpy as np
        import torch

        if bounds is not None:
            return original(activations, size, channels, bounds)
        if channels is not None:
            activations = activations[torch.as_tensor(list(channels), dtype=torch.long, device=activations.device)]
        if activations.shape[0] == 0:
            return np.zeros((0, size, size), dtype=np.uint8)
        return tiles_in_place(activations[None], size)[0].cpu().numpy()

    return channel_tiles


def _patch_grid(original: Callable[..., Any]) -> Callable[..., Any]:
    """render.grid_image assembled in numpy instead of torchvision's make_grid."""
    def grid_image(tiles: Any, cmap: str = "gray", padding: int = 2, pad_value: int = 255, labels: Any = None,
                   columns: int | None = None) -> Any:
        from PIL import Image

        from featviz.output.render import is_gray

        if labels or columns or not is_gray(cmap) or tiles.shape[0] == 0:
            return original(tiles, cmap, padding, pad_value, labels, columns)
        return Image.fromarray(floor_grid(tiles, padding, pad_value))

    return grid_image


def _patch_overlay(original: Callable[..., Any]) -> Callable[..., Any]:
    """render.heat_overlay blended in uint8 through lookup tables."""
    def heat_overlay(photo: Any, heat: Any, box: Any, cmap: str = "jet", alpha: float = 0.5, dim: float = 0.35) -> Any:
        from PIL import Image

        from featviz.output.render import colormap_lut

        if photo.mode != "RGB" or heat.device.type != "cpu":
            return original(photo, heat, box, cmap, alpha, dim)
        return Image.fromarray(floor_overlay(photo, heat.float(), colormap_lut(cmap), box, alpha, dim))

    return heat_overlay


def _patch_pillow(original: Callable[..., Any]) -> Callable[..., Any]:
    """featviz's PNG encoding before featviz.output.png: Pillow with zlib's run-length strategy."""
    import zlib

    return lambda image, level: floor_png(image, level, zlib.Z_RLE)


def _patch_write(original: Callable[..., Any]) -> Callable[..., Any]:
    """layout.atomic_write without a mkdir per file (featviz has since taken this change)."""
    def atomic_write(path: Path, data: bytes) -> None:
        """The same temporary file + rename, without a mkdir per file (the folders exist)."""
        import threading

        from featviz.output.layout import TMP_MARK

        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_MARK}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except FileNotFoundError:
            return original(path, data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    return atomic_write


# name -> (the module that defines the function, its name, the patch)
PATCHES = {
    "tiles": ("featviz.output.render", "channel_tiles", _patch_tiles),
    "grid": ("featviz.output.render", "grid_image", _patch_grid),
    "overlay": ("featviz.output.render", "heat_overlay", _patch_overlay),
    "pillow": ("featviz.output.layout", "png_bytes", _patch_pillow),
    "write": ("featviz.output.layout", "atomic_write", _patch_write),
}


def _holders(original: Any, attr: str) -> list[ModuleType]:
    """Every loaded featviz module whose ``attr`` is ``original``: the module that defines it and
    each one that imported it by name (``from featviz.output.layout import png_bytes``). Patching only
    the defining module would leave those callers on the original, and the table would time
    featviz as it is under a patch's name."""
    return [module for name, module in list(sys.modules.items())
            if (name == "featviz" or name.startswith("featviz.")) and vars(module).get(attr) is original]


def run_featviz_patched(ctx: CaseContext, paths: list[Path], out: Path, batch_size: int = 8,
                        patches: tuple[str, ...] = ()) -> None:
    """run_featviz with the named PATCHES in place, restored afterwards (also when it raises)."""
    saved = []
    try:
        for name in patches:
            module_name, attr, make = PATCHES[name]
            original = getattr(importlib.import_module(module_name), attr)
            patched = make(original)
            for module in _holders(original, attr):
                saved.append((module, attr, original))
                setattr(module, attr, patched)
        run_featviz(ctx, paths, out, batch_size=batch_size)
    finally:
        for module, attr, original in reversed(saved):
            setattr(module, attr, original)


def whatif(bench: Bench, ctx: CaseContext, batch: int, singles: bool) -> tuple[str, list[dict[str, Any]]]:
    """Stock featviz, featviz with each patch alone (``singles``) and with all, and the floor."""
    n = bench.count
    check = floor_check(ctx, bench.paths[:5], bench.scratch, batch,
                        partial(run_featviz_patched, patches=tuple(PATCHES)))
    variants = [Variant("floor", batch, run_floor, label=f"floor b{batch}"),
                Variant("featviz", batch, run_featviz, label=f"featviz b{batch} (as is)")]
    if singles:
        for name in PATCHES:
            variants.append(Variant("featviz", batch, run_featviz_patched, {"patches": (name,)},
                                    label=f"featviz +{name}"))
    variants.append(Variant("featviz", batch, run_featviz_patched,
                            {"patches": tuple(p for p in PATCHES if p != "pillow")}, label="featviz +all but pillow"))
    variants.append(Variant("featviz", batch, run_featviz_patched, {"patches": tuple(PATCHES)},
                            label="featviz +all"))
    bench.measure(ctx, variants)
    floor, stock = variants[0], variants[1]
    lines, rows = variant_table(variants, n, {"/as is": lambda v: v.rate(n) / stock.rate(n),
                                              "/floor": lambda v: v.rate(n) / floor.rate(n),
                                              "/floor paired": lambda v: paired(v, floor)})
    out = [(f"\n== what-if: {ctx.case.label}, {n} images, batch {batch}, best of {bench.repeats}; "
            f"patched pixels check: {check} =="), *lines]
    out.append("patches (benchmark process only): tiles = in-place min-max scaling; grid = numpy grid instead "
               "of make_grid; overlay = uint8 blend; pillow = Pillow's PNG encoder with zlib's Z_RLE strategy "
               "(featviz's encoder before featviz.output.png); write = no mkdir per file")
    return "\n".join(out), rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This case's options (the runner bench.py offers them too)."""
    parser.add_argument("--whatif-singles", action="store_true", help="with --whatif: also each change alone")


def run(bench: Bench, args: argparse.Namespace) -> None:
    """The what-if table of every case, at the last batch size."""
    bench.results["whatif"] = []
    for case in bench.cases:
        ctx = CaseContext.build(case, bench.device)
        text, rows = whatif(bench, ctx, bench.batches[-1], args.whatif_singles)
        print(text, flush=True)
        bench.results["whatif"].append({"case": case.label, "rows": rows})


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, "whatif.py", add_arguments, run))
