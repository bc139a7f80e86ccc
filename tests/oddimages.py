"""Image files for the export tests: good, odd-but-valid and bad, made on the fly (deterministic).

Each ``make_*`` function writes one file at ``path`` (creating parent folders) and returns it.
:func:`make_photo_folder` builds the whole mixed folder that ``featviz export`` is tested on and
says which files are good, bad and skipped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, seeded RGB picture (uint8, H x W x 3): something for the network to see."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.28, size=3)
    channels = [127.5 + 127.5 * np.sin(xs / max(width, 1) * 6.28 + ys / max(height, 1) * 3.14 + p) for p in phase]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


# --- odd but valid -------------------------------------------------------------------------

def make_rgb_png(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    Image.fromarray(gradient(*size, seed=seed)).save(_parent(path))
    return path


def make_16bit_png(path: Path) -> Path:
    values = (np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
    Image.fromarray(values).save(_parent(path))
    with Image.open(path) as check:
        assert check.mode.startswith("I"), check.mode
    return path


def make_cmyk_jpeg(path: Path) -> Path:
    Image.fromarray(gradient(48, 40, seed=1)).convert("CMYK").save(_parent(path), quality=90)
    with Image.open(path) as check:
        assert check.mode == "CMYK", check.mode
    return path


def make_palette_png(path: Path) -> Path:
    Image.fromarray(gradient(48, 40, seed=2)).convert("P").save(_parent(path))
    with Image.open(path) as check:
        assert check.mode == "P", check.mode
    return path


def make_rgba_png(path: Path) -> Path:
    pixels = np.dstack([gradient(48, 40, seed=3), np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))])
    Image.fromarray(pixels, mode="RGBA").save(_parent(path))
    return path


def make_exif_rotated_jpeg(path: Path) -> Path:
    """Stored 60x30, EXIF orientation 6 ("rotate 90° clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(gradient(60, 30, seed=4)).save(_parent(path), exif=exif, quality=90)
    return path


def make_animated_gif(path: Path) -> Path:
    frames = [Image.fromarray(gradient(32, 32, seed=10 + i)).convert("P") for i in range(3)]
    frames[0].save(_parent(path), save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    return path


# --- bad -----------------------------------------------------------------------------------

def make_truncated_jpeg(path: Path) -> Path:
    """A real photo cut in half: PIL identifies it from the header, decoding then fails."""
    data = (SAMPLES / "chelsea.jpg").read_bytes()
    _parent(path).write_bytes(data[: len(data) // 2])
    return path


def make_empty(path: Path) -> Path:
    _parent(path).write_bytes(b"")
    return path


def make_random_bytes(path: Path, seed: int = 1234) -> Path:
    # A fixed prefix no image format starts with, so the result cannot depend on luck.
    noise = np.random.default_rng(seed).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    _parent(path).write_bytes(b"\x00RANDOM\x00" + noise)
    return path


def make_text_as_png(path: Path) -> Path:
    _parent(path).write_text("this is a text file, not a PNG\n", encoding="utf-8")
    return path


def make_decompression_bomb(path: Path) -> Path:
    """A small PNG whose header claims 12000 x 12000 = 144,000,000 pixels (> 89,478,485)."""
    Image.new("1", (12000, 12000)).save(_parent(path))
    return path


# --- the mixed folder ----------------------------------------------------------------------

@dataclass
class PhotoFolder:
    """What :func:`make_photo_folder` made. Keys are relative to ``root``, without suffix."""

    root: Path  # the folder given to ``featviz export --recursive``
    good: dict[str, Path] = field(default_factory=dict)  # expected output key -> file
    bad: list[Path] = field(default_factory=list)  # in root, named like images: each must fail
    loose: list[Path] = field(default_factory=list)  # outside root, named one by one (none by default)
    hidden: list[Path] = field(default_factory=list)  # hidden files and folders in root
    not_images: list[Path] = field(default_factory=list)  # other files in root that are no images

    @property
    def all_bad(self) -> list[Path]:
        return [*self.bad, *self.loose]


def make_photo_folder(base: Path) -> PhotoFolder:
    """``base/photos``: good, odd-but-valid and bad images, hidden files and notes, in
    sub-folders. The bad ones include files that only look like images (empty, noise, text
    named .png): their image names keep them in the batch, where each must fail visibly;
    ``notes.txt`` is neither named like nor is an image, so it is skipped."""
    root = base / "photos"
    folder = PhotoFolder(root)
    for sample in ("chelsea.jpg", "coffee.jpg"):
        target = _parent(root / "good" / sample)
        shutil.copyfile(SAMPLES / sample, target)
        folder.good[f"good/{Path(sample).stem}"] = target
    folder.good.update({
        "odd/sixteen": make_16bit_png(root / "odd" / "sixteen.png"),
        "odd/cmyk": make_cmyk_jpeg(root / "odd" / "cmyk.jpg"),
        "odd/palette": make_palette_png(root / "odd" / "palette.png"),
        "odd/alpha": make_rgba_png(root / "odd" / "alpha.png"),
        "odd/rotated": make_exif_rotated_jpeg(root / "odd" / "rotated.jpg"),
        "odd/animated": make_animated_gif(root / "odd" / "animated.gif"),
        "odd/one": make_rgb_png(root / "odd" / "one.png", size=(1, 1)),
        "odd/long": make_rgb_png(root / "odd" / "long.png", size=(3000, 8)),
        "odd/katze groß": make_rgb_png(root / "odd" / "katze groß.png", seed=5),
        "a/cat": make_rgb_png(root / "a" / "cat.png", seed=6),
        "b/cat": make_rgb_png(root / "b" / "cat.png", seed=7),
    })
    folder.bad = [
        make_truncated_jpeg(root / "bad" / "truncated.jpg"),
        make_decompression_bomb(root / "bad" / "bomb.png"),
    ]
    folder.hidden = [
        make_rgb_png(root / "good" / ".hidden.png", seed=8),
        make_rgb_png(root / ".cache" / "thumb.png", seed=9),
    ]
    notes = _parent(root / "good" / "notes.txt")
    notes.write_text("holiday photos\n", encoding="utf-8")
    folder.not_images = [notes]
    folder.bad += [
        make_empty(root / "bad" / "empty.jpg"),
        make_random_bytes(root / "bad" / "noise.jpg"),
        make_text_as_png(root / "bad" / "text.png"),
    ]
    return folder
