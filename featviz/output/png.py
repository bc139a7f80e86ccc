"""PNG encoding for every picture featviz writes: numpy filtering and ISA-L deflate.

PNG encoding was two thirds of an export's CPU time (benchmarks/bench.py --profile). Pillow
chooses a filter for every row by trying all five and runs zlib's deflate: 27-40 MB/s per core
at level 1 on featviz's pictures. Feature maps and overlays are smooth, so one filter for the
whole picture ("Up": each row minus the row above, one vectorised numpy subtraction) does about
as well as Pillow's per-row choice, and ISA-L's deflate (the ``isal`` package, Intel's storage
acceleration library, which releases the GIL) runs at 250-300 MB/s per core. Files come out
within 5 % of Pillow's size for grids and channel tiles, up to 15 % larger for photo overlays
(the benchmark's first table; numbers in the README).

The output is an ordinary PNG (8-bit grey, grey+alpha, RGB or RGBA, no interlacing) that any
reader opens. Where ``isal`` is not installed (platforms without its wheels), the standard
library's zlib does the deflate: the same pixels, about twice Pillow's speed instead of eight.
"""

from __future__ import annotations

import io
import struct
import zlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type (L, LA, RGB, RGBA)
FILTER_UP = 2
IDAT_LIMIT = 1 << 30  # a chunk's length must stay below 2**31
ISAL_LEVELS = range(1, 4)  # ISA-L's levels; 0 keeps zlib's meaning (stored, no compression)


def _load_isal() -> ModuleType | None:
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


ISAL = _load_isal()


def deflate_backend(level: int) -> str:
    """Which library compresses at ``level``: shown by the benchmark and the tests."""
    return "isal" if ISAL is not None and level in ISAL_LEVELS else "zlib"


def compress(data: Any, level: int) -> bytes:
    """A zlib stream of ``data``: ISA-L for levels 1-3, zlib for 0 (stored) and 4-9 (smaller, slower)."""
    if deflate_backend(level) == "isal":
        compressed: bytes = ISAL.compress(data, level)  # type: ignore[union-attr]
        return compressed
    return zlib.compress(data, level)


def up_filtered(pixels: np.ndarray) -> np.ndarray:
    """The PNG scanlines of ``pixels`` (H, W[, S]) uint8 with filter Up: a filter-type byte, then
    each byte minus the byte above it (mod 256); the first row is kept (the row above is zero)."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    scanlines = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    scanlines[:, 0] = FILTER_UP
    scanlines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])
    return scanlines


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc32 = (ISAL or zlib).crc32  # the same checksum; ISA-L's is about 3x faster
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc32(data, crc32(kind)))


def encode_png(pixels: np.ndarray | Image.Image, level: int = 1) -> bytes:
    """PNG bytes of an 8-bit picture: a (H, W) or (H, W, 1-4) uint8 array, or a PIL image.

    PIL images in modes other than L, LA, RGB and RGBA (palette, 1-bit, 16-bit) are left to
    Pillow's own encoder, which knows how to store them.
    """
    if not isinstance(pixels, np.ndarray):
        if pixels.mode not in {"L", "LA", "RGB", "RGBA"}:
            return _pillow_png(pixels, level)
        pixels = np.asarray(pixels)
    if (pixels.dtype != np.uint8 or pixels.ndim not in (2, 3)
            or (pixels.ndim == 3 and pixels.shape[2] not in COLOR_TYPES)):
        raise ValueError(f"encode_png needs (H, W) or (H, W, 1-4) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    if not 0 <= level <= 9:
        raise ValueError(f"PNG compression level {level} is out of range 0..9")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"a PNG needs at least one pixel, got {width}x{height}")
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[samples], 0, 0, 0)
    data = compress(up_filtered(np.ascontiguousarray(pixels)), level)
    idat = [_chunk(b"IDAT", data[start:start + IDAT_LIMIT]) for start in range(0, len(data), IDAT_LIMIT)]
    return b"".join((SIGNATURE, _chunk(b"IHDR", header), *idat, _chunk(b"IEND", b"")))


def _pillow_png(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()
