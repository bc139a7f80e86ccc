"""The floor: the least work that makes featviz's default pictures, done as cheaply as we know.

Not a case of its own: the export, what-if and sweep cases time featviz against it, and the
encoders case uses its Pillow encoder. Decode + featviz's own Preprocess (so the network sees
the same tensor) on the pool, the forward pass up to the layer (batched), upsampling to 256
(align_corners=True), uint8 scaling (in place), the grid assembled in numpy, the overlays
blended in uint8 through lookup tables, and PNG encoding at zlib level 1 on a
ThreadPoolExecutor with one thread per core, each file written with one plain open/write (no
temporary file, no summary, no manifest). ``check_floor_pixels`` proves that the floor's
pictures are featviz's pixels, so that a ratio compares the same output.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness import TILE, CaseContext, fresh_dir


def _minmax(x: Any, dims: tuple[int, ...]) -> Any:
    """float ``x`` scaled to [0, 1] over ``dims``; a constant map becomes 0 (featviz's rule)."""
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
    zlib level 1) or "featviz" (featviz.output.png)."""
    from PIL import Image

    if encoder == "featviz":
        from featviz.output.png import encode_png

        return encode_png(pixels, level)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level, compress_type=strategy)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    """One plain open/write: the cheapest way to put bytes in a file (no temporary, no rename)."""
    with open(path, "wb") as handle:
        handle.write(data)


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
    """The floor over ``paths``, pictures under ``out/NNNN/``, decoding the next batch while this
    one is encoded. ``strategy``: zlib strategy (Pillow's compress_type; -1 = zlib's default);
    ``encoder``: see floor_png ("featviz" gives the floor-isal method)."""
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
            for i, (photo, px) in enumerate(zip(photos, pixels, strict=True)):
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


def floor_check(ctx: CaseContext, paths: list[Path], scratch: Path, batch_size: int,
                featviz: Callable[..., None]) -> str:
    """Run ``featviz`` (a featviz export runner) and the floor over ``paths``, then compare their
    pictures: a ratio against the floor means something only if both made the same pixels."""
    fv_out, fl_out = fresh_dir(scratch, "check-fv"), fresh_dir(scratch, "check-fl")
    featviz(ctx, paths, fv_out, batch_size=batch_size)
    run_floor(ctx, paths, fl_out, batch_size=batch_size)
    check = check_floor_pixels(fv_out, fl_out)
    shutil.rmtree(fv_out), shutil.rmtree(fl_out)
    return check
