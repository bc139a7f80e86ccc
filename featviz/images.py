"""Reading input images, and turning command-line inputs into a list of images with output keys.

Two jobs live here because both deal with what the user pointed at:

* :func:`load_image` turns any file PIL reads into one predictable thing, an 8-bit RGB image,
  so that the rest of featviz never has to think about modes, bit depths, alpha or EXIF.
  Every failure becomes an :class:`~featviz.errors.ImageError` whose one-line message starts
  with the path, so a batch can record it and go on.
* :func:`find_images` expands files, folders, globs and ``-`` (stdin) into a sorted,
  deduplicated list, each image paired with a unique relative *key* that says where its
  outputs go. Sorting by key makes sharding a batch over several machines deterministic.

Nothing here changes global PIL state (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``), since other code in the same process may rely on it.
"""

from __future__ import annotations

import glob
import os
import stat
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featviz.errors import ImageError

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Same as PIL's default: bigger images are refused as possible decompression bombs."""

BACKGROUND: tuple[int, int, int] = (128, 128, 128)
"""Transparent pixels become mid-grey: neutral for a network, unlike black or white."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_GLOB_CHARS = frozenset("*?[")


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
    """The path as the user wrote it, kept on one line so every message stays one line."""
    text = os.fsdecode(os.fspath(path))
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _one_line(text: str) -> str:
    """PIL's messages sometimes span lines; a batch report wants one line per image."""
    return " ".join(str(text).split())


def _open_file(path: str | os.PathLike[str], shown: str) -> BinaryIO:
    """Open the file ourselves so that missing files, folders and permissions get plain words."""
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except FileNotFoundError:
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
        except Exception as exc:  # PIL decoders raise OSError, ValueError, SyntaxError, ...
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
    except Exception:  # corrupt EXIF: keep the pixels as stored
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


# --------------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    """One image to process, and the relative place under OUT where its outputs go."""

    path: Path  # the file to read
    key: PurePosixPath  # output key: where its outputs go under OUT, without the file suffix


@dataclass
class FoundImages:
    """What the inputs expanded to, with counts so the CLI can explain what it left out."""

    images: list[InputImage]  # sorted by key, deduplicated by resolved path, keys unique
    skipped_hidden: int = 0  # hidden files/folders (name starts with '.') skipped inside folders
    skipped_not_image: int = 0  # files in folders that PIL cannot identify
    missing: list[str] = field(default_factory=list)  # files/globs that matched nothing
    unreadable_folders: list[str] = field(default_factory=list)  # folders we could not list


@dataclass
class _Candidate:
    """A found file before deduplication and key disambiguation."""

    path: Path
    key: PurePosixPath


def find_images(
    inputs: Sequence[str], recursive: bool = False, stdin: TextIO | None = None
) -> FoundImages:
    """Expand files, folders, globs and ``-`` into images with unique, stable output keys.

    Explicit files are taken as given (even hidden, even non-images) because the user named
    them; a non-image among them fails later, visibly, in the batch. Inside folders only
    what PIL can identify counts, whatever the extension says.
    """
    found = FoundImages(images=[])
    candidates: list[_Candidate] = []
    for text in inputs:
        if text == "-":
            for line in _stdin_lines(stdin):
                candidates.extend(_expand_path(line, recursive, found))
        else:
            candidates.extend(_expand_input(text, recursive, found))
    found.images = _unique_keys(_dedupe(candidates))
    return found


def _stdin_lines(stdin: TextIO | None) -> Iterator[str]:
    """Paths one per line, as ``find`` prints them; surrounding whitespace is not part of them."""
    stream = sys.stdin if stdin is None else stdin
    for line in stream:
        path = line.strip()
        if path:
            yield path


def _expand_input(text: str, recursive: bool, found: FoundImages) -> list[_Candidate]:
    """An existing path wins over glob reading, so a file named ``a[1].png`` still works."""
    if os.path.exists(text) or not _GLOB_CHARS.intersection(text):
        return _expand_path(text, recursive, found)
    return _expand_glob(text, found)


def _expand_path(text: str, recursive: bool, found: FoundImages) -> list[_Candidate]:
    """A plain path: a folder is walked, a file is taken, anything else is missing."""
    path = Path(text)
    if path.is_dir():
        return list(_walk_folder(path, recursive, found))
    if os.path.exists(path):
        return [_Candidate(path, _explicit_key(path))]
    found.missing.append(text)
    return []


def _expand_glob(pattern: str, found: FoundImages) -> list[_Candidate]:
    """Matched files are treated as if typed one by one; matched folders are not walked."""
    matches = sorted(glob.glob(pattern, recursive=True))
    files = [Path(match) for match in matches if not os.path.isdir(match)]
    if not files:
        found.missing.append(pattern)
    return [_Candidate(path, _explicit_key(path)) for path in files]


def _walk_folder(root: Path, recursive: bool, found: FoundImages) -> Iterator[_Candidate]:
    """Yield images under root in a stable order, following folder symlinks without looping."""
    visited = {root.resolve()}
    pending = [PurePosixPath()]
    while pending:
        relative = pending.pop()
        entries = _list_folder(root / relative, found)
        subfolders: list[PurePosixPath] = []
        for entry in entries:
            child = relative / entry.name
            if entry.name.startswith("."):
                found.skipped_hidden += _counts_as_hidden(entry, recursive)
            elif _is_dir(entry):
                if recursive and _first_visit(Path(entry.path), visited):
                    subfolders.append(child)
            elif _is_file(entry) and _is_image(Path(entry.path)):
                yield _Candidate(root / child, _key_from(child))
            else:
                found.skipped_not_image += 1
        pending.extend(reversed(subfolders))


def _list_folder(folder: Path, found: FoundImages) -> list[os.DirEntry[str]]:
    """Sorted entries; a folder we may not read is reported, not fatal to the whole batch."""
    try:
        with os.scandir(folder) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except OSError:
        found.unreadable_folders.append(str(folder))
        return []


def _counts_as_hidden(entry: os.DirEntry[str], recursive: bool) -> int:
    """A hidden sub-folder is only "skipped" if we would otherwise have entered it."""
    return 0 if _is_dir(entry) and not recursive else 1


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Regular files only: opening a FIFO or device to sniff it could block forever."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _first_visit(folder: Path, visited: set[Path]) -> bool:
    """Symlinked folders are followed once; a link back up the tree is where a loop starts."""
    try:
        resolved = folder.resolve()
    except (OSError, RuntimeError):  # RuntimeError: symlink loop on older Pythons
        return False
    if resolved in visited:
        return False
    visited.add(resolved)
    return True


def _image_suffixes() -> frozenset[str]:
    """File name endings PIL reads (``.png``, ``.jpg``, ...), lower case."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _is_image(path: Path) -> bool:
    """Sniff the header like PIL does, without decoding pixels.

    A file too large to decode is still an image: it belongs in the batch, where it fails
    with a clear message. An unreadable file is kept for the same reason, and so is a file
    whose name says it is an image (``.png``, ``.jpg``, ...) but that PIL cannot identify:
    an empty, truncated or mislabelled picture is an error to report, not a file to ignore.
    Only files that neither look like nor are named like images are skipped.
    """
    if path.suffix.lower() in _image_suffixes():
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(path):
                return True
        except (Image.DecompressionBombError, PermissionError):
            return True
        except Exception:
            return False


def _explicit_key(path: Path) -> PurePosixPath:
    """Relative to the working folder when inside it; otherwise the absolute path minus anchor.

    ``os.path.abspath`` normalises lexically, so ``..`` components disappear without
    resolving symlinks (which would give surprising keys for linked folders).
    """
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(Path(os.path.abspath(os.getcwd())))
    except ValueError:
        relative = Path(*absolute.parts[1:]) if len(absolute.parts) > 1 else Path()
    return _key_from(PurePosixPath(*relative.parts))


def _key_from(relative: PurePosixPath) -> PurePosixPath:
    """Drop the file suffix and make every component safe to use as a folder name."""
    parts = [_safe_component(part) for part in relative.parts]
    if not parts:
        return PurePosixPath("_")
    parts[-1] = _safe_component(_strip_suffix(parts[-1]))
    return PurePosixPath(*parts)


def _strip_suffix(name: str) -> str:
    """``cat.png`` -> ``cat``; a leading dot is part of the name (``.hidden`` stays)."""
    dot = name.rfind(".")
    return name[:dot] if dot > 0 else name


def _safe_component(part: str) -> str:
    """No component may climb out of OUT or vanish, nor split into folders on another OS."""
    part = part.replace("/", "_").replace("\\", "_")
    if part in ("", ".", ".."):
        return "_" * max(len(part), 1)
    return part


def _dedupe(candidates: list[_Candidate]) -> list[_Candidate]:
    """The same file reached twice (two inputs, a symlink) is processed once, first wins."""
    seen: set[Path] = set()
    unique: list[_Candidate] = []
    for candidate in candidates:
        identity = _identity(candidate.path)
        if identity not in seen:
            seen.add(identity)
            unique.append(candidate)
    return unique


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _unique_keys(candidates: list[_Candidate]) -> list[InputImage]:
    """Give clashing keys ``~2``, ``~3``... in (key, path) order, then sort by key.

    Suffixes skip any key already taken, so ``cat~2`` from a real file ``cat~2.png`` is never
    overwritten. Which file gets the plain key depends only on keys and paths, not on the
    order in which the inputs were given.
    """
    ordered = sorted(candidates, key=lambda c: (c.key.parts, str(c.path)))
    taken = {c.key for c in ordered}
    assigned: set[PurePosixPath] = set()
    images: list[InputImage] = []
    for candidate in ordered:
        key = candidate.key
        if key in assigned:
            key = _next_free(key, taken)
            taken.add(key)
        assigned.add(key)
        images.append(InputImage(path=candidate.path, key=key))
    return sorted(images, key=lambda image: image.key.parts)


def _next_free(key: PurePosixPath, taken: set[PurePosixPath]) -> PurePosixPath:
    number = 2
    while (candidate := key.with_name(f"{key.name}~{number}")) in taken:
        number += 1
    return candidate


__all__ = [
    "BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "FoundImages",
    "InputImage",
    "find_images",
    "load_image",
]
