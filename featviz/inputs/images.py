"""Reading input images: any file PIL reads becomes one predictable thing, an 8-bit RGB image.

:func:`load_image` handles modes, bit depths, alpha, animations and EXIF so that the rest of
featviz never has to think about them. Every failure becomes an
:class:`~featviz.errors.ImageError` whose one-line message starts with the path, so a batch can
record it and go on. Finding images on disk is :mod:`featviz.inputs.discover`' job.

Nothing here changes global PIL state (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``), since other code in the same process may rely on it.
"""

from __future__ import annotations

import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featviz.errors import ImageError
from featviz.inputs.names import display_name

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Same as PIL's default: bigger images are refused as possible decompression bombs."""

BACKGROUND: tuple[int, int, int] = (128, 128, 128)
"""Transparent pixels become mid-grey: neutral for a network, unlike black or white."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


# --------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------


def load_image(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open any image PIL reads and return an 8-bit RGB PIL image (fully loaded, file closed).

    Decoding happens here, not lazily later, so that a truncated or corrupt file fails at a
    point where we still know which file it was. ``max_pixels=None`` lifts featviz's limit,
    but PIL's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``) still applies unless the
    caller has changed that global themselves.
    """
    shown = _shown(path)
    with _open_file(path, shown) as fp:
        return _decode(fp, shown, max_pixels)


def _shown(path: str | os.PathLike[str]) -> str:
    """The path as the user wrote it, kept on one line so every message stays one line, and
    valid UTF-8 (a byte that is not shows as ``\\xff``: the message goes into JSON)."""
    text = display_name(path)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _one_line(text: str) -> str:
    """PIL's messages sometimes span lines; a batch report wants one line per image."""
    return " ".join(str(text).split())


def _open_file(path: str | os.PathLike[str], shown: str) -> BinaryIO:
    """Open the file ourselves so that missing files, folders and permissions get plain words.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor: a FIFO (or a
    device, a socket) is refused as this input's error instead of blocking forever on its first
    read, and no race between a check and the open can swap one in."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            kind = _non_regular_kind(os.fstat(fd).st_mode)
            if kind == "a folder":
                raise IsADirectoryError
            if kind:
                raise ImageError(f"{shown}: is {kind}, not a regular file; featviz reads images only from "
                                 "regular files (a pipe could block forever)")
            fp = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
    except FileNotFoundError:
        if os.path.islink(path):  # the name is there, its target is not
            raise ImageError(f"{shown}: a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise ImageError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{shown}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageError(f"{shown}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{shown}: cannot open ({_reason(exc)})") from None
    if _is_empty(fp):
        fp.close()
        raise ImageError(f"{shown}: empty file, not an image")
    return fp


def _non_regular_kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _is_empty(fp: BinaryIO) -> bool:
    """PIL would say "cannot identify" for an empty file, which hides the simpler truth."""
    try:
        info = os.fstat(fp.fileno())
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def _decode(fp: BinaryIO, shown: str, max_pixels: int | None) -> Image.Image:
    """Identify, size-check, decode and convert, mapping every PIL failure to ImageError.

    Warnings are silenced here (PIL warns about odd EXIF or palettes; a library must not
    write to stderr). PIL's decompression-bomb warning while opening is left to our own
    header check, which words it better; during decoding (some formats pick their size
    only then) it becomes an error whenever our limit is at least as strict as PIL's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(fp) as im:
                _check_size(im.size, shown, max_pixels)
                _load_pixels(im, max_pixels)
                _check_size(im.size, shown, max_pixels)
                _apply_exif_orientation(im)
                return _to_rgb(im, shown)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            message = f"too large, possible decompression bomb ({_reason(exc)})"
            raise ImageError(f"{shown}: {message}") from None
        except UnidentifiedImageError:
            message = "not a readable image (cannot identify image file)"
            raise ImageError(f"{shown}: {message}") from None
        except MemoryError:
            raise ImageError(f"{shown}: not enough memory to decode the image") from None
        except Exception as exc:  # noqa: BLE001 - PIL decoders raise OSError, ValueError, SyntaxError, ...
            raise ImageError(f"{shown}: truncated or corrupt image ({_reason(exc)})") from None


def _load_pixels(im: Image.Image, max_pixels: int | None) -> None:
    """Decode now, inside the caller's error mapping; truncation raises because
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default (False)."""
    with warnings.catch_warnings():
        if _pil_limit_applies(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        im.load()


def _reason(exc: BaseException) -> str:
    """A short cause for the message; the exception class alone when PIL gave no text."""
    text = _one_line(str(exc))
    return text or type(exc).__name__


def _pil_limit_applies(max_pixels: int | None) -> bool:
    """PIL warns above its own limit; that only means "refuse" if our limit is no looser."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels is not None and pil_limit is not None and max_pixels <= pil_limit


def _check_size(size: tuple[int, int], shown: str, max_pixels: int | None) -> None:
    """Refuse from the header's claimed size, before decoding allocates anything."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{shown}: too large, possible decompression bomb "
            f"({width}x{height} = {width * height:,} pixels, limit {max_pixels:,})"
        )


def _apply_exif_orientation(im: Image.Image) -> None:
    """Show the picture as the camera meant it; broken EXIF must not cost the user the image."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - corrupt EXIF raises anything: keep the pixels as stored
        pass


def _to_rgb(im: Image.Image, shown: str) -> Image.Image:
    """Return a new 8-bit RGB image; never the opened image itself, which closes with its file."""
    if im.mode in _SIXTEEN_BIT_MODES:
        return _deep_to_rgb(im, _scale_sixteen_bit(np.asarray(im)))
    if im.mode == "F":
        return _deep_to_rgb(im, _scale_float(np.asarray(im)))
    if _has_alpha(im):
        return _over_background(_rgba(im, shown))
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _unsupported_mode(im, shown, exc) from None


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or im.info.get("transparency") is not None


def _rgba(im: Image.Image, shown: str) -> Image.Image:
    """Convert to RGBA; "La" (premultiplied) has no direct path in PIL, so go through "LA"."""
    try:
        if im.mode == "La":
            im = im.convert("LA")
        return im.convert("RGBA")
    except ValueError as exc:
        raise _unsupported_mode(im, shown, exc) from None


def _unsupported_mode(im: Image.Image, shown: str, exc: ValueError) -> ImageError:
    return ImageError(f"{shown}: unsupported pixel mode {im.mode!r} ({_reason(exc)})")


def _over_background(rgba: Image.Image) -> Image.Image:
    """Composite over grey rather than dropping alpha, which would expose arbitrary colours."""
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_sixteen_bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 by scaling, not clipping.

    PIL's own conversion clips 16-bit values at 255, which turns most real 16-bit photos
    white. Mode "I" (32-bit) is assumed to hold 16-bit data, as PNG and TIFF produce it.
    """
    return values.astype(np.float64) * (255.0 / 65535.0)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Floats are ambiguous; guess the convention from the data.

    If the largest finite value is above 1 the image is taken to be on the 16-bit scale
    (0..65535, as float TIFFs from 16-bit sources are); otherwise on the 0..1 scale that
    image libraries use for floats. NaN and infinities become 0, out-of-range values clip.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max()) if values.size else 0.0
    scale = 255.0 / 65535.0 if peak > 1.0 else 255.0
    return values * scale


def _deep_to_rgb(im: Image.Image, scaled: np.ndarray) -> Image.Image:
    """Round scaled grey values to 8 bits, honouring a single transparent value if present."""
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    transparent = im.info.get("transparency")
    if not isinstance(transparent, int):
        return grey.convert("RGB")
    alpha = Image.fromarray(np.where(np.asarray(im) == transparent, 0, 255).astype(np.uint8))
    return _over_background(Image.merge("RGBA", (grey, grey, grey, alpha)))


__all__ = ["BACKGROUND", "DEFAULT_MAX_PIXELS", "load_image"]
