"""The natural-image magnitude spectrum that MACO keeps fixed (Fel et al., NeurIPS 2023).

``featviz spectrum FOLDER --out spectrum.npz`` averages, over a folder of photos, the magnitude of
each photo's 2-D real FFT: every photo is read by featviz's safe loader
(:func:`~featviz.inputs.images.load_image`), its shorter side resized to S (bilinear, antialiased)
and centre-cropped to S x S as a model's preprocessing does, scaled to [0, 1] (before any model's
normalisation), and transformed with ``torch.fft.rfft2(norm="ortho")``. Two spectra are kept:

* ``rgb``: float32 (3, S, S//2+1), mean |rfft2| of the R, G and B planes;
* ``decorrelated``: float32 (3, S, S//2+1), the same of the photo in Lucid's decorrelated colour
  space (:func:`featviz.optimize.param.decorrelate`): what MACO uses, because its image is made
  in that space and recorrelated afterwards (as the official code's ``imagenet_decorrelated``).

The file is an ``.npz`` with those arrays, ``size`` (S), ``count`` (photos used) and ``sources``
(their names); it is read back with ``allow_pickle=False``. featviz ships one, computed from the
five photos of the project's ``sample_images/`` at S = 224 (:data:`DEFAULT_FILE`); nothing is
downloaded.

**Another size.** A spectrum made at S is used at size N by sampling it at the same frequency in
cycles per image (the same bin index (ky, kx)), times N / S (the ortho-normalised FFT of the same
scene sampled N instead of S pixels wide): for N <= S that is exactly the source's own bins (the
spectrum of the photos downsampled ideally to N); for N > S the bins beyond the source's band
continue it by natural images' 1/f law: the source value where the ray from 0 through (ky, kx)
leaves the band, times |k_edge| / |k|.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from featviz.errors import ImageError, OutputError, UsageError
from featviz.inputs.discover import InputImage
from featviz.inputs.images import load_image
from featviz.optimize.param import decorrelate
from featviz.output.layout import atomic_write

#: The spectrum featviz ships (package data): the five photos of ``sample_images/`` at 224 px.
DEFAULT_FILE = "natural_spectrum.npz"
DEFAULT_SIZE = 224


@dataclass
class Spectrum:
    """A mean magnitude spectrum: ``decorrelated`` and ``rgb`` float32 (3, size, size//2+1),
    non-negative, over ``count`` photos named in ``sources``."""

    decorrelated: np.ndarray
    rgb: np.ndarray
    size: int
    count: int
    sources: list[str]


@dataclass
class SpectrumRun:
    """What :func:`compute_spectrum` did: the spectrum (None if no photo could be read) and one
    one-line message per photo that could not be read."""

    spectrum: Spectrum | None
    failures: list[str]


def photo_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> float64 (3, size, size) in [0, 1]: the shorter side resized to ``size``
    (bilinear, antialiased), then the centre ``size`` x ``size`` crop."""
    resized = tvf.resize(image, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    cropped = tvf.center_crop(resized, [size])
    return torch.from_numpy(np.asarray(cropped, dtype=np.float64) / 255.0).permute(2, 0, 1)


def magnitudes(photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (3, S, S) in [0, 1] -> (|rfft2| in decorrelated colour, |rfft2| in RGB), each
    float64 (3, S, S//2+1), ``norm="ortho"``."""
    rgb = torch.fft.rfft2(photo, norm="ortho").abs()
    decorrelated = torch.fft.rfft2(decorrelate(photo[None])[0], norm="ortho").abs()
    return decorrelated, rgb


def compute_spectrum(images: Sequence[InputImage], size: int = DEFAULT_SIZE,
                     on_photo: Callable[[], None] | None = None) -> SpectrumRun:
    """The mean magnitude spectrum of ``images`` at ``size``. A photo that cannot be read becomes
    one line in ``failures`` and the others go on. ``on_photo()`` after each photo (progress)."""
    check_size(size)
    shape = (3, size, size // 2 + 1)
    total_dec, total_rgb = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    failures: list[str] = []
    sources: list[str] = []
    for item in images:
        try:
            photo = photo_tensor(load_image(item.path), size)
        except ImageError as error:
            failures.append(error.message)
            continue
        finally:
            if on_photo is not None:
                on_photo()
        decorrelated, rgb = magnitudes(photo)
        total_dec += decorrelated
        total_rgb += rgb
        sources.append(item.key.as_posix())
    if not sources:
        return SpectrumRun(None, failures)
    count = len(sources)
    spectrum = Spectrum((total_dec / count).float().numpy(), (total_rgb / count).float().numpy(), size, count,
                        sources)
    return SpectrumRun(spectrum, failures)


def check_size(size: int) -> None:
    if size < 8:
        raise UsageError(f"--size {size}: a spectrum needs photos at least 8 pixels wide", hint="the default is 224")


PRECISIONS = ("float32", "float16")


def spectrum_bytes(spectrum: Spectrum, precision: str = "float32") -> bytes:
    """The ``.npz`` file's bytes (compressed; no pickled objects). ``float16`` halves the file
    (relative rounding 5e-4; the built-in spectrum is stored so) and is read back as float32."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: unknown", hint="use float32 or float16")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, decorrelated=spectrum.decorrelated.astype(precision),
                        rgb=spectrum.rgb.astype(precision), size=np.int64(spectrum.size),
                        count=np.int64(spectrum.count), sources=np.array(spectrum.sources, dtype=str))
    return buffer.getvalue()


def save_spectrum(spectrum: Spectrum, path: Path, precision: str = "float32") -> Path:
    """Write ``spectrum`` to ``path`` atomically (temporary file and rename)."""
    data = spectrum_bytes(spectrum, precision)
    try:
        atomic_write(Path(path), data)
    except OSError as error:
        raise OutputError(f"cannot write {path} ({error.strerror or type(error).__name__})",
                          hint="choose another --out") from None
    return Path(path)


_HINT = "make one with `featviz spectrum FOLDER --out spectrum.npz`, or leave --spectrum out for the built-in one"


def load_spectrum(path: Path | str) -> Spectrum:
    """Read a spectrum file written by :func:`save_spectrum`; anything else is a
    :class:`~featviz.errors.UsageError` of one sentence naming the file."""
    shown = str(path)
    try:
        loaded = np.load(Path(path), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UsageError(f"--spectrum {shown}: one bare array, not a spectrum file (an .npz of named arrays)",
                             hint=_HINT)
        with loaded as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise UsageError(f"--spectrum {shown}: no such file", hint=_HINT) from None
    except IsADirectoryError:
        raise UsageError(f"--spectrum {shown}: is a folder, not a spectrum file", hint=_HINT) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UsageError(f"--spectrum {shown}: not a spectrum file ({' '.join(str(error).split())})",
                         hint=_HINT) from None
    return _checked(arrays, shown)


def _checked(arrays: dict[str, np.ndarray], shown: str) -> Spectrum:
    missing = [name for name in ("decorrelated", "size") if name not in arrays]
    if missing:
        raise UsageError(f"--spectrum {shown}: not a spectrum file (no {missing[0]!r} array)", hint=_HINT)
    size_array = arrays["size"]
    if size_array.shape != () or size_array.dtype.kind not in "iu" or int(size_array) < 2:
        raise UsageError(f"--spectrum {shown}: 'size' is not one positive whole number", hint=_HINT)
    size = int(size_array)
    expected = (3, size, size // 2 + 1)
    for name in ("decorrelated", "rgb"):
        array = arrays.get(name)
        if array is None:
            continue
        if array.shape != expected or array.dtype.kind != "f":
            raise UsageError(f"--spectrum {shown}: {name!r} has shape {list(array.shape)} ({array.dtype}), not "
                             f"{list(expected)} floats (3 colours, size {size}, size//2+1 frequencies)", hint=_HINT)
        if not np.isfinite(array).all() or (array < 0).any():
            raise UsageError(f"--spectrum {shown}: {name!r} holds negative or non-finite magnitudes", hint=_HINT)
    decorrelated = arrays["decorrelated"].astype(np.float32)
    rgb = arrays["rgb"].astype(np.float32) if "rgb" in arrays else np.zeros_like(decorrelated)
    count = int(arrays["count"]) if "count" in arrays and arrays["count"].shape == () else 0
    sources = [str(s) for s in arrays["sources"].ravel()] if "sources" in arrays else []
    return Spectrum(decorrelated, rgb, size, count, sources)


def default_spectrum() -> Spectrum:
    """The spectrum featviz ships (:data:`DEFAULT_FILE`, package data of ``featviz.optimize``)."""
    with resources.as_file(resources.files("featviz.optimize").joinpath(DEFAULT_FILE)) as path:
        return load_spectrum(path)


def symmetrise(magnitude: torch.Tensor) -> torch.Tensor:
    """Make the self-conjugate columns (kx = 0, and kx = W/2 for an even width W) symmetric,
    M(ky) = M(-ky), by averaging the pair, as a real image's spectrum is. float (..., H, H//2+1)
    of a square image (featviz optimises square images)."""
    height = magnitude.shape[-2]
    mirror = (-torch.arange(height)) % height
    averaged = (magnitude + magnitude[..., mirror, :]) / 2
    columns = torch.zeros(magnitude.shape[-1], dtype=torch.bool)
    columns[0] = True
    if height % 2 == 0 and magnitude.shape[-1] == height // 2 + 1:
        columns[-1] = True
    return torch.where(columns, averaged, magnitude)


def resample(magnitude: torch.Tensor, size: int) -> torch.Tensor:
    """A magnitude spectrum float (C, S, S//2+1) made at S -> float32 (C, size, size//2+1) at
    ``size``, by the rule in the module doc (same bin index, times size / S; beyond the source's
    band, 1/f from the band's edge), then :func:`symmetrise`."""
    source = magnitude.double()
    s = source.shape[-2]
    shape = (size, size // 2 + 1)
    ky = torch.fft.fftfreq(size, d=1.0 / size).round().long()[:, None].expand(shape)  # signed, cycles/image
    kx = torch.arange(size // 2 + 1)[None, :].expand(shape)
    band = s // 2
    reach = torch.maximum(ky.abs(), kx).double()
    factor = torch.where(reach > band, band / reach.clamp(min=1), torch.ones_like(reach))
    edge_y = (ky.double() * factor).round().long()
    edge_x = (kx.double() * factor).round().long()
    values = source[:, edge_y % s, edge_x]
    radius = torch.sqrt(ky.double() ** 2 + kx.double() ** 2)
    edge_radius = torch.sqrt(edge_y.double() ** 2 + edge_x.double() ** 2)
    falloff = torch.where(radius > 0, edge_radius / radius.clamp(min=1e-12), torch.ones_like(radius))
    return symmetrise(values * falloff * (size / s)).float()


def magnitude_for(spectrum: Spectrum, size: int) -> torch.Tensor:
    """MACO's fixed magnitude at ``size``: float32 (3, size, size//2+1), the decorrelated
    spectrum, resampled when its size differs."""
    source = torch.from_numpy(spectrum.decorrelated)
    if spectrum.size == size:
        return symmetrise(source.double()).float()
    return resample(source, size)


def ring_profile(magnitude: np.ndarray) -> np.ndarray:
    """Mean magnitude per integer radius (cycles per image) of float (C, S, S//2+1): float64
    (C, S//2+1). For the docs' plot and a sanity check of the 1/f shape."""
    size = magnitude.shape[-2]
    ky = np.fft.fftfreq(size, d=1.0 / size)[:, None]
    kx = np.arange(magnitude.shape[-1])[None, :]
    radius = np.rint(np.sqrt(ky * ky + kx * kx)).astype(int)
    bins = size // 2 + 1
    keep = radius < bins
    out = np.zeros((magnitude.shape[0], bins))
    counts = np.bincount(radius[keep], minlength=bins)
    for channel in range(magnitude.shape[0]):
        out[channel] = np.bincount(radius[keep], weights=magnitude[channel][keep], minlength=bins) / np.maximum(
            counts, 1)
    return out


__all__ = ["DEFAULT_FILE", "Spectrum", "compute_spectrum", "default_spectrum", "load_spectrum", "magnitude_for",
           "resample", "save_spectrum"]
