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

Every method runs over the same images: the five ``sample_images/*.jpg`` copied into a
temporary folder, cycling through scales 1.0 / 0.85 / 0.7 / 0.55 (image i is sample i % 5 at
scale (i // 5) % 4). All methods share one model object (``weights=None``, seeded by featviz),
so the pictures they encode hold the same content and compress alike.

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
featviz  featviz.export.Exporter(Visualizer(model, "none", [layer]), out, batch_size=B,
         workers=None) with default RenderOptions: full-size grid, per-channel PNGs, both
         overlays, summary, manifest.
floor    only what cannot be avoided, done as cheaply as we know how: decode + featviz's own
         Preprocess (so the network sees the same tensor) on the pool, the forward pass up to the
         layer (batched), upsampling to 256 (align_corners=True), uint8 scaling (in place), the
         grid assembled in numpy, the overlays blended in uint8 through lookup tables, and PNG
         encoding at zlib level 1 on a ThreadPoolExecutor with one thread per core, each file
         written with one plain open/write (no temporary file, no summary, no manifest). Before
         timing, the floor's pictures are compared with featviz's files for the five samples:
         they must be the same pixels ("max |featviz - floor| = 0").
floor-isal  the same floor, but each picture encoded by featviz's own PNG encoder (featviz.png:
         one Up filter in numpy, ISA-L deflate at level 1) instead of Pillow. featviz encodes
         this way, so this is the floor for featviz's own encoding: "featviz/floor-isal" is the
         honest measure of featviz's overhead; "featviz/floor" follows the issue's definition.

Timing: per case, a warm-up of every method on 2 images, then ``--repeats`` rounds in which the
featviz and floor runs (each batch size) are interleaved, order rotated each round; the seed
runs once per case (it is slow and has no batch size). Reported per method: images/s of the best
round (least disturbed by other processes) and the median, and process CPU seconds per image
(all threads; it measures work done and barely moves when other processes load the machine).
Ratios: from the best rounds; "paired" is the median over rounds of floor time / featviz time
for runs made next to each other; "cpu floor/featviz" is the CPU-time ratio.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
SCALES = (1.0, 0.85, 0.7, 0.55)
TILE = 256


@dataclass(frozen=True)
class Case:
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
    print(message, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs: sample i % 5 at scale SCALES[(i // 5) % 4]; scale 1.0 is a byte copy."""
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
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
# 1. the seed's approach
# --------------------------------------------------------------------------------------------

def seed_stack(module: Any, case: Case) -> list[Any]:
    """What the tutorial iterates: ``model.features`` (AlexNet), the top-level children (ResNet)."""
    return list(module.features) if hasattr(module, "features") else list(module.children())


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
    from featviz.export import Exporter

    visualizer = ctx.visualizer if png_level is None else ctx.visualizer_with_level(png_level)
    report = Exporter(visualizer, out, batch_size=batch_size, workers=workers).run(ctx.inputs(paths))
    if report.failed:
        raise RuntimeError(f"featviz export failed: {report.errors[:3]}")


# --------------------------------------------------------------------------------------------
# 3. the floor
# --------------------------------------------------------------------------------------------

def _minmax(x: Any, dims: tuple[int, ...]) -> Any:
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    return ((x - low) / span.clamp_min(1e-12)) * (span > 0)


def floor_preprocess(preprocess: Any, path: Path) -> tuple[Any, Any]:
    """Decode, then featviz's own Preprocess (resize, crop, scale, normalise): the network must
    see the same tensor for the pictures to hold the same pixels, and this step is cheap next to
    PNG encoding (a few ms per image)."""
    from PIL import Image

    with Image.open(path) as im:
        photo = im.convert("RGB")
    return photo, preprocess(photo)


def floor_grid(tiles: Any, padding: int = 2, pad_value: int = 255) -> Any:
    """torchvision.make_grid's layout for uint8 (K, S, S) tiles, as one grey array."""
    import numpy as np

    count, size = tiles.shape[0], tiles.shape[-1]
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    step = size + padding
    grid = np.full((rows * step + padding, columns * step + padding), pad_value, dtype=np.uint8)
    for i in range(count):
        y, x = divmod(i, columns)
        grid[y * step + padding:y * step + padding + size, x * step + padding:x * step + padding + size] = tiles[i]
    return grid


@lru_cache(maxsize=8)
def blend_luts(alpha: float, dim: float) -> tuple[Any, Any]:
    """uint8 lookup tables giving exactly featviz's float32 blend, byte for byte:
    outside[a] = uint8(a * dim + 0.5), inside[a, c] = uint8(a * (1 - alpha) + c * alpha + 0.5)."""
    import numpy as np

    a = np.arange(256, dtype=np.float32)
    outside = (a * dim + 0.5).astype(np.uint8)
    inside = (a[:, None] * (1 - alpha) + a[None, :] * alpha + 0.5).astype(np.uint8)
    return outside, inside


def floor_overlay(photo: Any, heat: Any, lut: Any, box: Any, alpha: float = 0.5, dim: float = 0.35) -> Any:
    """The overlay's pixels: heat (h, w) in [0, 1] stretched onto the crop box, colour-mapped and
    blended over the photo, the photo dimmed outside the box; in uint8 (lookup tables, and for
    alpha 0.5 the exact integer form (a + c + 1) >> 1 of featviz's float32 blend)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    width, height = photo.size
    left, top = math.floor(box.left), math.floor(box.top)
    right, bottom = math.ceil(box.right), math.ceil(box.bottom)
    box_w, box_h = max(1, right - left), max(1, bottom - top)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    base = np.asarray(photo)
    outside, inside = blend_luts(alpha, dim)
    if not (x1 > x0 and y1 > y0):
        return outside[base]
    stretched = F.interpolate(heat[None, None], size=(box_h, box_w), mode="bilinear", align_corners=False)[0, 0]
    heat_bytes = stretched[y0 - top:y1 - top, x0 - left:x1 - left].clamp(0, 1).mul_(255).add_(0.5)
    colour = lut[heat_bytes.to(torch.uint8).numpy()]
    out = np.empty_like(base)
    if y0 > 0:
        out[:y0] = outside[base[:y0]]
    if y1 < height:
        out[y1:] = outside[base[y1:]]
    if x0 > 0:
        out[y0:y1, :x0] = outside[base[y0:y1, :x0]]
    if x1 < width:
        out[y0:y1, x1:] = outside[base[y0:y1, x1:]]
    if alpha == 0.5:
        blend = base[y0:y1, x0:x1].astype(np.uint16)
        blend += colour
        blend += 1
        blend >>= 1
        out[y0:y1, x0:x1] = blend
    else:
        out[y0:y1, x0:x1] = inside[base[y0:y1, x0:x1], colour]
    return out


def floor_png(pixels: Any, level: int, strategy: int = -1, encoder: str = "pillow") -> bytes:
    """``pixels``: a uint8 array or a PIL image; ``encoder``: "pillow" (the issue's floor: Pillow,
    zlib level 1) or "featviz" (featviz.png)."""
    from PIL import Image

    if encoder == "featviz":
        from featviz.png import encode_png

        return encode_png(pixels, level)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level, compress_type=strategy)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def floor_pixels(ctx: CaseContext, photos: list[Any], tensors: list[Any]) -> list[dict[str, Any]]:
    """Forward + upsample + uint8: per image {tiles, spatial heat, channel heat} on the CPU."""
    import torch

    batch = torch.stack(tensors).to(ctx.device)
    with torch.inference_mode():
        acts = ctx.trunk(batch).float()
        tiles = tiles_in_place(acts, TILE).cpu().numpy()
        spatial = _minmax(acts.mean(dim=1), (1, 2)).cpu()
        weights = _minmax(acts.mean(dim=(2, 3)), (1,))
        channel = _minmax((acts * weights[:, :, None, None]).sum(dim=1), (1, 2)).cpu()
    return [{"tiles": tiles[i], "spatial": spatial[i], "channel": channel[i]} for i in range(len(photos))]


def run_floor(ctx: CaseContext, paths: list[Path], out: Path, batch_size: int = 8, level: int = 1,
              write: bool = True, strategy: int = -1, encoder: str = "pillow") -> None:
    """``strategy``: zlib strategy (Pillow's compress_type; -1 = zlib's default); ``encoder``: see
    floor_png ("featviz" gives the floor-isal method)."""
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def encode(target: Path, produce: Callable[[], Any]) -> None:
            data = floor_png(produce(), level, strategy, encoder)
            if write:
                _write(target, data)

        chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        waiting: deque[list[Any]] = deque()
        pre = ctx.visualizer.preprocess
        decoding = [pool.submit(floor_preprocess, pre, p) for p in chunks[0]] if chunks else []
        for c in range(len(chunks)):
            current = decoding
            decoding = [pool.submit(floor_preprocess, pre, p) for p in chunks[c + 1]] if c + 1 < len(chunks) else []
            prepared = [f.result() for f in current]
            photos = [p for p, _ in prepared]
            pixels = floor_pixels(ctx, photos, [t for _, t in prepared])
            futures = []
            for i, (photo, px) in enumerate(zip(photos, pixels)):
                folder = out / f"{c * batch_size + i:04d}"
                (folder / "channels").mkdir(parents=True)
                tiles = px["tiles"]
                box = pre.crop_box(*photo.size)
                futures.append(pool.submit(encode, folder / "grid.png", lambda t=tiles: floor_grid(t)))
                futures.append(pool.submit(encode, folder / "spatial_attention.png",
                                           lambda p=photo, h=px["spatial"], b=box: floor_overlay(p, h, ctx.jet, b)))
                futures.append(pool.submit(encode, folder / "channel_attention.png",
                                           lambda p=photo, h=px["channel"], b=box: floor_overlay(p, h, ctx.jet, b)))
                for ch in range(tiles.shape[0]):
                    futures.append(pool.submit(encode, folder / "channels" / f"{ch:04d}.png",
                                               lambda t=tiles, ch=ch: t[ch]))
            waiting.append(futures)
            while len(waiting) > 2:  # bounded memory, like featviz: about two batches in flight
                for f in waiting.popleft():
                    f.result()
        for futures in waiting:
            for f in futures:
                f.result()


def check_floor_pixels(featviz_out: Path, floor_out: Path) -> str:
    """Compare every picture of the floor with featviz's file of the same name: same pixels?"""
    import numpy as np
    from PIL import Image

    worst, count = 0, 0
    keys = sorted(p for p in featviz_out.iterdir() if p.is_dir())
    for index, key in enumerate(keys):
        fv = next(p for p in key.iterdir() if p.is_dir())
        fl = floor_out / f"{index:04d}"
        names = ["grid.png", "spatial_attention.png", "channel_attention.png"]
        names += [f"channels/{p.name}" for p in sorted((fv / "channels").iterdir())]
        if sorted(p.name for p in (fl / "channels").iterdir()) != sorted(p.name for p in (fv / "channels").iterdir()):
            return f"MISMATCH: {key.name} channel files differ"
        for name in names:
            x = np.asarray(Image.open(fv / name), dtype=np.int16)
            y = np.asarray(Image.open(fl / name), dtype=np.int16)
            if x.shape != y.shape:
                return f"MISMATCH: {key.name}/{name} shape {x.shape} vs {y.shape}"
            worst = max(worst, int(np.abs(x - y).max()))
            count += 1
    return (f"{count} pictures of {len(keys)} images, max |featviz - floor| = {worst}"
            + ("" if worst == 0 else "  <-- NOT THE SAME PIXELS"))


# --------------------------------------------------------------------------------------------
# what-if: featviz with candidate changes, patched in THIS process only (featviz/ is untouched)
# --------------------------------------------------------------------------------------------
# Each patch replaces one featviz function for the default path with a cheaper one that makes
# the same pixels (checked against the floor before timing); anything off the default path is
# passed to the original. They exist to put numbers on recommendations, not to be used.

def _patch_tiles(original: Callable[..., Any]) -> Callable[..., Any]:
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


def tiles_in_place(acts: Any, size: int) -> Any:
    """(N, C, h, w) -> uint8 (N, C, size, size): featviz's upsample + min-max + round, in place
    (the same float32 operations in the same order, so the same bytes), with featviz's rule that
    a map constant before upsampling is black."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(acts.float(), size=(size, size), mode="bilinear", align_corners=True)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low
    up.sub_(low).div_(span.clamp_min(1e-12))
    flat = acts.flatten(2).amax(dim=2) == acts.flatten(2).amin(dim=2)
    black = (span <= 0) | flat[..., None, None]
    if bool(black.any()):
        up.masked_fill_(black, 0.0)
    return up.mul_(255.0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def _patch_grid(original: Callable[..., Any]) -> Callable[..., Any]:
    def grid_image(tiles: Any, cmap: str = "gray", padding: int = 2, pad_value: int = 255, labels: Any = None,
                   columns: int | None = None) -> Any:
        from PIL import Image

        from featviz.render import is_gray

        if labels or columns or not is_gray(cmap) or tiles.shape[0] == 0:
            return original(tiles, cmap, padding, pad_value, labels, columns)
        return Image.fromarray(floor_grid(tiles, padding, pad_value))

    return grid_image


def _patch_overlay(original: Callable[..., Any]) -> Callable[..., Any]:
    def heat_overlay(photo: Any, heat: Any, box: Any, cmap: str = "jet", alpha: float = 0.5, dim: float = 0.35) -> Any:
        from PIL import Image

        from featviz.render import colormap_lut

        if photo.mode != "RGB" or heat.device.type != "cpu":
            return original(photo, heat, box, cmap, alpha, dim)
        return Image.fromarray(floor_overlay(photo, heat.float(), colormap_lut(cmap), box, alpha, dim))

    return heat_overlay


def _patch_pillow(original: Callable[..., Any]) -> Callable[..., Any]:
    """featviz's PNG encoding before featviz.png: Pillow with zlib's run-length strategy."""
    import zlib

    return lambda image, level: floor_png(image, level, zlib.Z_RLE)


def _patch_write(original: Callable[..., Any]) -> Callable[..., Any]:
    def atomic_write(path: Path, data: bytes) -> None:
        """The same temporary file + rename, without a mkdir per file (the folders exist)."""
        import threading

        from featviz.export import TMP_MARK

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


PATCHES = {
    "tiles": ("featviz.render", "channel_tiles", _patch_tiles),
    "grid": ("featviz.render", "grid_image", _patch_grid),
    "overlay": ("featviz.render", "heat_overlay", _patch_overlay),
    "pillow": ("featviz.export", "png_bytes", _patch_pillow),
    "write": ("featviz.export", "atomic_write", _patch_write),
}


def run_featviz_patched(ctx: CaseContext, paths: list[Path], out: Path, batch_size: int = 8,
                        patches: tuple[str, ...] = ()) -> None:
    import importlib

    saved = []
    try:
        for name in patches:
            module_name, attr, make = PATCHES[name]
            module = importlib.import_module(module_name)
            original = getattr(module, attr)
            saved.append((module, attr, original))
            setattr(module, attr, make(original))
        run_featviz(ctx, paths, out, batch_size=batch_size)
    finally:
        for module, attr, original in reversed(saved):
            setattr(module, attr, original)


def whatif(ctx: CaseContext, paths: list[Path], warmup: list[Path], scratch: Path, repeats: int,
           batch: int, singles: bool) -> tuple[str, list[dict[str, Any]]]:
    """Stock featviz, featviz with each patch alone (``singles``) and with all, and the floor."""
    n = len(paths)
    fv_out, fl_out = fresh_dir(scratch, "check-fv"), fresh_dir(scratch, "check-fl")
    run_featviz_patched(ctx, paths[:5], fv_out, batch_size=batch, patches=tuple(PATCHES))
    run_floor(ctx, paths[:5], fl_out, batch_size=batch)
    check = check_floor_pixels(fv_out, fl_out)
    shutil.rmtree(fv_out), shutil.rmtree(fl_out)
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
    measure(ctx, variants, paths, scratch, repeats, warmup, 0)
    floor, stock = variants[0], variants[1]
    out = [f"\n== what-if: {ctx.case.label}, {n} images, batch {batch}, best of {repeats}; "
           f"patched pixels check: {check} =="]
    out.append(f"{'variant':<24} {'img/s best':>10} {'median':>7} {'cpu-s/img':>9} {'MB out/img':>10} "
               f"{'/as is':>7} {'/floor':>7} {'/floor paired':>13}")
    rows = []
    for v in variants:
        paired = _paired(v, floor)
        out.append(f"{v.name:<24} {v.rate(n):>10.2f} {v.rate(n, 'median'):>7.2f} {v.cpu_per_image(n):>9.2f} "
                   f"{v.out_bytes / n / 1e6:>10.2f} {v.rate(n) / stock.rate(n):>7.2f} "
                   f"{v.rate(n) / floor.rate(n):>7.2f} {paired:>13.2f}")
        rows.append(_row(v, n))
    out.append("patches (benchmark process only): tiles = in-place min-max scaling; grid = numpy grid instead "
               "of make_grid; overlay = uint8 blend; pillow = Pillow's PNG encoder with zlib's Z_RLE strategy (featviz's "
               "encoder before featviz.png); write = no mkdir per file")
    return "\n".join(out), rows


# --------------------------------------------------------------------------------------------
# per-case context and timing
# --------------------------------------------------------------------------------------------

@dataclass
class CaseContext:
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
        from featviz.pipeline import Visualizer
        from featviz.render import colormap_lut

        visualizer = Visualizer(case.name, "none", [case.layer], device=device)
        module = visualizer.loaded.module.eval()
        if case.name == "alexnet":
            trunk = module.features[: case.stack_index + 1]
        else:
            trunk = torch.nn.Sequential(*list(module.children())[: case.stack_index + 1])
        return cls(case, visualizer.device, visualizer, trunk, seed_stack(module, case), colormap_lut("jet"))

    def visualizer_with_level(self, level: int) -> Any:
        from dataclasses import replace

        from featviz.pipeline import Visualizer

        if level not in self._by_level:
            base = self.visualizer
            self._by_level[level] = Visualizer(self.case.name, "none", [self.case.layer],
                                               options=replace(base.options, png_level=level),
                                               loaded=base.loaded)
        return self._by_level[level]

    def inputs(self, paths: list[Path]) -> Any:
        from featviz.inputs import InputImage
        from pathlib import PurePosixPath

        key = tuple(map(str, paths))
        if key not in self._inputs:
            self._inputs[key] = [InputImage(path=p, key=PurePosixPath(p.stem)) for p in paths]
        return self._inputs[key]


@dataclass
class Variant:
    method: str  # seed / featviz / floor
    batch: int | None
    run: Callable[..., None]
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
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
        if not self.times:
            return float("nan")
        t = min(self.times) if how == "best" else statistics.median(self.times)
        return n / t


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(ctx: CaseContext, variant: Variant, paths: list[Path], scratch: Path, keep: bool = False) -> float:
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
            warmup: list[Path], seed_repeats: int) -> None:
    log(f"[{ctx.case.label}] warm-up on {len(warmup)} images (load {loadavg()})")
    for v in variants:
        timed(ctx, v, warmup, scratch)
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            if v.method == "seed" and len(v.times) >= seed_repeats:
                continue
            t = timed(ctx, v, paths, scratch)
            v.times.append(t)
            v.cpu.append(v.last_cpu)
            log(f"[{ctx.case.label}] round {r + 1}/{repeats} {v.name:<20} {len(paths) / t:7.2f} img/s "
                f"({t:6.1f} s wall, {v.last_cpu / len(paths):5.2f} cpu-s/img, load {loadavg()})")


# --------------------------------------------------------------------------------------------
# the other measurements: start-up, memory, profile
# --------------------------------------------------------------------------------------------

def featviz_command() -> list[str]:
    script = Path(sys.executable).with_name("featviz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "featviz"]


def best_wall(command: list[str], runs: int, before: Callable[[], None] | None = None) -> float:
    best = math.inf
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    out = [f"samples: {total} (main thread {per_kind.get('main', 0)}, pool threads {per_kind.get('pool', 0)}, "
           f"other {per_kind.get('other', 0)}); --idle: every thread is sampled whether busy or not"]
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


# --------------------------------------------------------------------------------------------
# PNG encoders alone
# --------------------------------------------------------------------------------------------

def encoders(case: Case, device: str, image: Path, rounds: int = 5) -> tuple[str, list[dict[str, Any]]]:
    """Pillow against featviz.png on featviz's own pictures of one photo (one thread): the
    measurement behind featviz's encoder. Pixels are decoded back and compared."""
    import zlib

    import numpy as np
    from PIL import Image

    from featviz import png

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
               ("featviz.png zlib 1", lambda px: featviz_png(px, None))]
    if png.ISAL is not None:
        methods.append(("featviz.png ISA-L 1", lambda px: featviz_png(px, png.ISAL)))
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
            out.append(f"{label:<14} {pixels.size:>10} {name:<22} {best * 1e3:>7.2f} {pixels.nbytes / best / 1e6:>6.0f} "
                       f"{len(data):>9} {str(same):>11}")
            rows.append({"picture": label, "encoder": name, "seconds": best, "bytes": len(data), "same": same})
    return "\n".join(out), rows


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def environment(device: str) -> list[str]:
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
        f"torch       {torch.__version__}, threads={torch.get_num_threads()}, interop={torch.get_num_interop_threads()}",
        f"libs        torchvision {torchvision.__version__}, pillow {PIL.__version__}, numpy {np.__version__}, "
        f"matplotlib {matplotlib.__version__}",
        f"device      {device}" + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""),
        f"load avg    {loadavg()} (at start)",
    ]
    return rows


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "featviz"], cwd=ROOT, capture_output=True, text=True)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 images, 1 round, short start-up timing")
    parser.add_argument("--images", type=int, default=None, help="images per run (default 32; --quick 6)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", default="alexnet,resnet50", help="comma-separated: alexnet,resnet50")
    parser.add_argument("--batch-sizes", default="1,8", help="featviz/floor batch sizes (default 1 and featviz's 8)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of featviz/floor (default 3; --quick 1)")
    parser.add_argument("--seed-repeats", type=int, default=1, help="seed runs per case (default 1)")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed's approach")
    parser.add_argument("--memory", action="store_true", help="peak RSS of featviz export on --memory-sizes images")
    parser.add_argument("--memory-sizes", default="40,400", help="image counts for --memory (default 40,400)")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timings")
    parser.add_argument("--no-encoders", action="store_true", help="skip the PNG encoder comparison")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the seed/featviz/floor table (to run only --sweep, --memory, --profile)")
    parser.add_argument("--sweep", action="store_true",
                        help="featviz with batch 1/4/8/16, workers 1/2/3 and PNG level 1/6 (first case only)")
    parser.add_argument("--whatif", action="store_true",
                        help="featviz with candidate changes patched in (this process only), vs as is and the floor")
    parser.add_argument("--whatif-singles", action="store_true", help="with --whatif: also each change alone")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of one featviz export")
    parser.add_argument("--profile-images", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    count = args.images or (6 if args.quick else 32)
    if count < 32 and not args.quick:
        log(f"note: {count} images; issue 4's measurement uses at least 32")
    repeats = args.repeats or (1 if args.quick else 3)
    cases = [CASES[name.strip()] for name in args.cases.split(",") if name.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    results: dict[str, Any] = {"images": count, "repeats": repeats, "cases": [], "device": args.device}

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    scratch = Path(tempfile.mkdtemp(prefix="featviz-bench-", dir=args.tmp))
    try:
        env = environment(args.device)
        print("== environment ==")
        print("\n".join(env), flush=True)
        results["environment"] = env
        paths = make_images(scratch / "images", count)
        warmup = paths[:2]
        pixels = sum(_pixels(p) for p in paths) / len(paths)
        print(f"images      {count} JPEGs ({pixels / 1e6:.2f} Mpx average photo): "
              f"sample_images/*.jpg at scales {', '.join(map(str, SCALES))}")
        print(f"command     python benchmarks/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}",
              flush=True)

        if not args.no_encoders:
            text, rows = encoders(cases[0], args.device, SAMPLES / "chelsea.jpg")
            print(text, flush=True)
            results["encoders"] = rows

        table = []
        for case in ([] if args.no_speed else cases):
            ctx = CaseContext.build(case, args.device)
            variants: list[Variant] = []
            if not args.no_seed:
                variants.append(Variant("seed", None, run_seed, label="seed"))
            for b in batches:
                variants.append(Variant("featviz", b, run_featviz))
                variants.append(Variant("floor", b, run_floor))
                variants.append(Variant("floor-isal", b, run_floor, {"encoder": "featviz"}))
            # Correctness of the floor: the same pixels as featviz's files (first image).
            fv_out, fl_out = fresh_dir(scratch, "check-fv"), fresh_dir(scratch, "check-fl")
            run_featviz(ctx, paths[:5], fv_out, batch_size=8)
            run_floor(ctx, paths[:5], fl_out, batch_size=8)
            check = check_floor_pixels(fv_out, fl_out)
            shutil.rmtree(fv_out), shutil.rmtree(fl_out)
            measure(ctx, variants, paths, scratch, repeats, warmup, args.seed_repeats)
            rows = case_table(case, variants, count, check)
            print(rows["text"], flush=True)
            table.append(rows)
            results["cases"].append(rows["json"])
        if table:
            print(summary_table(table, count, repeats), flush=True)

        if args.sweep:
            sweep_text, sweep_json = sweep(cases[0], args.device, paths, warmup, scratch, repeats)
            print(sweep_text, flush=True)
            results["sweep"] = sweep_json

        if args.whatif:
            results["whatif"] = []
            for case in cases:
                ctx = CaseContext.build(case, args.device)
                text, rows = whatif(ctx, paths, warmup, scratch, repeats, batches[-1], args.whatif_singles)
                print(text, flush=True)
                results["whatif"].append({"case": case.label, "rows": rows})

        if not args.no_startup:
            s = startup(scratch, args.quick)
            results["startup"] = s
            runs = "2 / 1 / 1" if args.quick else "5 / 3 / 3"
            print(f"\n== start-up (subprocess wall time, best of {runs} runs: --help / show / import) ==")
            print(f"python -c pass                                        {s['python']:6.2f} s")
            print(f"featviz --help                                        {s['help']:6.2f} s   (target < 0.3 s)")
            print(f"featviz show sample_images/chelsea.jpg --weights none  {s['show']:6.2f} s")
            print(f"python: import torchvision + alexnet(weights=None)     {s['baseline']:6.2f} s")
            print(f"show / import-and-build ratio                         {s['show'] / s['baseline']:6.2f}    "
                  f"(target <= 1.5)", flush=True)

        if args.memory:
            sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
            mem = memory(scratch, sizes)
            results["memory"] = mem
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

        if args.profile:
            for case in cases:
                print(f"\n== profile: featviz export {case.label}, py-spy --idle --threads ==")
                print(profile(scratch, args.profile_images, case), flush=True)

        print(f"\nload avg at end: {loadavg()}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.width * im.height


def _paired(v: Variant, reference: Variant) -> float:
    """Median over rounds of reference time / ``v``'s time, for runs made next to each other."""
    return statistics.median(f / t for t, f in zip(v.times, reference.times))


def _row(v: Variant, n: int) -> dict[str, Any]:
    return {"variant": v.name, "times": v.times, "cpu": v.cpu, "rate_best": v.rate(n),
            "mb_out_per_image": v.out_bytes / n / 1e6}


def _ratio_to(v: Variant, variants: list[Variant], method: str, n: int) -> tuple[float, float]:
    """featviz ``v`` over the ``method`` run of the same batch size: best rates, and paired."""
    other = next((f for f in variants if f.method == method and f.batch == v.batch), None)
    if other is None or not other.times or v.method != "featviz":
        return float("nan"), float("nan")
    return v.rate(n) / other.rate(n), _paired(v, other)


def case_table(case: Case, variants: list[Variant], n: int, check: str) -> dict[str, Any]:
    seed = next((v for v in variants if v.method == "seed"), None)
    seed_rate = seed.rate(n) if seed else float("nan")
    out = [f"\n== {case.label}: {n} images, floor pixels check: {check} =="]
    out.append(f"{'method':<10} {'batch':>5} {'img/s best':>10} {'median':>7} {'runs':>4} {'cpu-s/img':>9} "
               f"{'MB out/img':>10} {'x seed':>7} {'/floor':>7} {'paired':>7} {'/floor-isal':>11} {'paired':>7}")
    rows = []
    for v in variants:
        vs_floor, paired = _ratio_to(v, variants, "floor", n)
        vs_isal, paired_isal = _ratio_to(v, variants, "floor-isal", n)
        out.append(f"{v.method:<10} {v.batch if v.batch else '-':>5} {v.rate(n):>10.2f} {v.rate(n, 'median'):>7.2f} "
                   f"{len(v.times):>4} {v.cpu_per_image(n):>9.2f} {v.out_bytes / n / 1e6:>10.2f} {v.rate(n) / seed_rate:>7.2f} "
                   + (f"{vs_floor:>7.2f} {paired:>7.2f} {vs_isal:>11.2f} {paired_isal:>7.2f}" if v.method == "featviz" else ""))
        rows.append({"method": v.method, "batch": v.batch, "times": v.times, "cpu": v.cpu, "rate_best": v.rate(n),
                     "rate_median": v.rate(n, "median"), "x_seed": v.rate(n) / seed_rate,
                     "featviz_over_floor": vs_floor, "paired": paired, "featviz_over_floor_isal": vs_isal,
                     "paired_isal": paired_isal, "mb_out_per_image": v.out_bytes / n / 1e6})
    return {"text": "\n".join(out), "json": {"case": case.label, "check": check, "rows": rows},
            "case": case, "variants": variants}


def summary_table(tables: list[dict[str, Any]], n: int, repeats: int) -> str:
    out = [f"\n== summary: images/s (best of {repeats} round(s); seed: 1 run), {n} images =="]
    out.append(f"{'case':<27} {'batch':>5} {'seed':>6} {'featviz':>8} {'floor':>6} {'floor-isal':>10} "
               f"{'featviz/seed':>12} {'floor/seed':>10} {'featviz/floor':>13} {'featviz/floor-isal':>18} {'paired':>6}")
    for t in tables:
        vs = t["variants"]
        seed = next((v for v in vs if v.method == "seed"), None)
        s = seed.rate(n) if seed else float("nan")
        for b in sorted({v.batch for v in vs if v.batch}):
            fv = next(v for v in vs if v.method == "featviz" and v.batch == b)
            fl = next(v for v in vs if v.method == "floor" and v.batch == b)
            fi = next(v for v in vs if v.method == "floor-isal" and v.batch == b)
            out.append(f"{t['case'].label:<27} {b:>5} {s:>6.2f} {fv.rate(n):>8.2f} {fl.rate(n):>6.2f} {fi.rate(n):>10.2f} "
                       f"{fv.rate(n) / s:>12.1f} {fl.rate(n) / s:>10.1f} {fv.rate(n) / fl.rate(n):>13.2f} "
                       f"{fv.rate(n) / fi.rate(n):>18.2f} {_ratio_to(fv, vs, 'floor-isal', n)[1]:>6.2f}")
    out.append("floor: the issue's floor (Pillow PNG, zlib level 1); floor-isal: the same minimal pass with "
               "featviz's PNG encoder (featviz.png: Up filter, ISA-L deflate level 1), the floor for featviz's "
               "own encoding; paired: median over rounds of floor-isal time / featviz time for runs next to "
               "each other")
    return "\n".join(out)


def sweep(case: Case, device: str, paths: list[Path], warmup: list[Path], scratch: Path,
          repeats: int) -> tuple[str, list[dict[str, Any]]]:
    """featviz export under candidate defaults, interleaved with the floor, one case."""
    ctx = CaseContext.build(case, device)
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
    measure(ctx, variants, paths, scratch, repeats, warmup, 0)
    n = len(paths)
    floor = variants[0]
    out = [f"\n== sweep: {case.label}, {n} images, best of {repeats} (featviz's CPU default is b1 w{cores} L1) =="]
    out.append(f"{'variant':<24} {'img/s best':>10} {'median':>7} {'cpu-s/img':>9} {'MB out/img':>10} "
               f"{'/floor-isal':>11} {'/paired':>7}")
    rows = []
    for v in variants:
        paired = _paired(v, floor)
        out.append(f"{v.name:<24} {v.rate(n):>10.2f} {v.rate(n, 'median'):>7.2f} {v.cpu_per_image(n):>9.2f} "
                   f"{v.out_bytes / n / 1e6:>10.2f} {v.rate(n) / floor.rate(n):>11.2f} {paired:>7.2f}")
        rows.append(_row(v, n))
    return "\n".join(out), rows


if __name__ == "__main__":
    sys.exit(main())
