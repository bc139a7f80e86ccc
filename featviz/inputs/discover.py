"""Finding input images: files, folders, globs and ``-`` (stdin) become a sorted list of images,
each paired with a unique relative *key* that says where its outputs go under OUT.

Sorting by key makes sharding a batch over several machines deterministic. Decoding is
:mod:`featviz.inputs.images`' job; here PIL only sniffs headers, to tell images from other files.
"""

from __future__ import annotations

import glob
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from PIL import Image

from featviz.inputs.names import safe_component as _utf8_component

_GLOB_CHARS = frozenset("*?[")
#: Files whose presence marks a folder as featviz's own output (an export's or show's manifest,
#: an atlas's state; the same names as featviz.output.layout.MANIFEST and featviz.atlas.export.STATE,
#: which sit above this module): nothing in such a folder is ever taken as an input.
OUTPUT_MARKERS = ("manifest.jsonl", "atlas-state.json")


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
    output_folders: list[str] = field(default_factory=list)  # featviz output folders left out, once each
    skipped_output: int = 0  # named files and glob matches left out because they lie in one


@dataclass
class _Candidate:
    """A found file before deduplication and key disambiguation."""

    path: Path
    key: PurePosixPath


def find_images(
    inputs: Sequence[str], recursive: bool = False, stdin: TextIO | None = None, out: Path | None = None
) -> FoundImages:
    """Expand files, folders, globs and ``-`` into images with unique, stable output keys.

    Explicit files are taken as given (even hidden, even non-images) because the user named
    them; a non-image among them fails later, visibly, in the batch. Inside folders only
    what PIL can identify counts, whatever the extension says.

    Nothing inside ``out`` (this run's output folder) nor inside any folder holding a featviz
    manifest or atlas state (:data:`OUTPUT_MARKERS`) is an input: a run whose output lies inside
    its input folder would otherwise take its own earlier pictures as photos. Such folders are
    listed once in ``output_folders``.
    """
    found = FoundImages(images=[])
    guard = _OutputGuard(out, found)
    candidates: list[_Candidate] = []
    for text in inputs:
        if text == "-":
            for line in _stdin_lines(stdin):
                candidates.extend(_expand_path(line, recursive, found, guard))
        else:
            candidates.extend(_expand_input(text, recursive, found, guard))
    found.images = _unique_keys(_dedupe(candidates))
    return found


class _OutputGuard:
    """Tells whether a folder is featviz output (``out`` itself, or one holding a marker), with
    one ``stat`` per folder and marker, cached: a collection has far fewer folders than files."""

    def __init__(self, out: Path | None, found: FoundImages) -> None:
        self.out = _identity(Path(out)) if out is not None else None
        self.found = found
        self._known: dict[Path, bool] = {}

    def is_output(self, folder: Path) -> bool:
        """Whether ``folder`` (a folder) is an output folder; noted in ``found`` the first time."""
        resolved = _identity(folder)
        if resolved not in self._known:
            marked = resolved == self.out or any(os.path.isfile(resolved / name) for name in OUTPUT_MARKERS)
            self._known[resolved] = marked
            if marked:
                self.found.output_folders.append(str(folder))
        return self._known[resolved]

    def inside_output(self, file: Path) -> bool:
        """Whether ``file`` lies in an output folder, at any depth (its pictures are 2-4 deep)."""
        resolved = _identity(file)
        if any(self.is_output(parent) for parent in resolved.parents):
            self.found.skipped_output += 1
            return True
        return False


def _stdin_lines(stdin: TextIO | None) -> Iterator[str]:
    """Paths one per line, as ``find`` prints them; surrounding whitespace is not part of them."""
    stream = sys.stdin if stdin is None else stdin
    for line in stream:
        path = line.strip()
        if path:
            yield path


def _expand_input(text: str, recursive: bool, found: FoundImages, guard: _OutputGuard) -> list[_Candidate]:
    """An existing path wins over glob reading, so a file named ``a[1].png`` still works."""
    if os.path.exists(text) or not _GLOB_CHARS.intersection(text):
        return _expand_path(text, recursive, found, guard)
    return _expand_glob(text, found, guard)


def _expand_path(text: str, recursive: bool, found: FoundImages, guard: _OutputGuard) -> list[_Candidate]:
    """A plain path: a folder is walked, a file is taken, anything else is missing."""
    path = Path(text)
    if path.is_dir():
        if guard.is_output(path) or guard.inside_output(path):
            return []
        return list(_walk_folder(path, recursive, found, guard))
    if os.path.exists(path):
        return [] if guard.inside_output(path) else [_Candidate(path, _explicit_key(path))]
    found.missing.append(text)
    return []


def _expand_glob(pattern: str, found: FoundImages, guard: _OutputGuard) -> list[_Candidate]:
    """Matched files are treated as if typed one by one; matched folders are not walked."""
    matches = sorted(glob.glob(pattern, recursive=True))
    files = [Path(match) for match in matches if not os.path.isdir(match)]
    if not files:
        found.missing.append(pattern)
    return [_Candidate(path, _explicit_key(path)) for path in files if not guard.inside_output(path)]


def _walk_folder(root: Path, recursive: bool, found: FoundImages, guard: _OutputGuard) -> Iterator[_Candidate]:
    """Yield images under root in a stable order, following folder symlinks without looping;
    featviz output folders are not entered."""
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
                if recursive and _first_visit(Path(entry.path), visited) and not guard.is_output(Path(entry.path)):
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
        except Exception:  # noqa: BLE001 - any decoder error means "not an image we can read"
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
    """No component may climb out of OUT or vanish, nor split into folders on another OS, nor
    carry bytes that are not UTF-8 (they become ``%FF``: JSON and manifests must hold the key)."""
    part = _utf8_component(part).replace("/", "_").replace("\\", "_")
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


#: Names of the files a batch run writes at the top of OUT (featviz.output.layout.MANIFEST,
#: featviz.output.report.REPORT): a photo named ``index.html.png`` gets ``index.html~2``, not a
#: folder that would collide with the page.
RESERVED_KEYS = frozenset({PurePosixPath("index.html"), PurePosixPath("manifest.jsonl")})


def _unique_keys(candidates: list[_Candidate]) -> list[InputImage]:
    """Give clashing keys ``~2``, ``~3``... in (key, path) order, then sort by key.

    Suffixes skip any key already taken, so ``cat~2`` from a real file ``cat~2.png`` is never
    overwritten. Which file gets the plain key depends only on keys and paths, not on the
    order in which the inputs were given.
    """
    ordered = sorted(candidates, key=lambda c: (c.key.parts, str(c.path)))
    taken = {c.key for c in ordered} | RESERVED_KEYS
    assigned: set[PurePosixPath] = set(RESERVED_KEYS)
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


__all__ = ["FoundImages", "InputImage", "find_images"]
