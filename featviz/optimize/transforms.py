"""Transformation robustness as Lucid's ``standard_transforms``: pad 12 (grey 0.5), jitter 8,
random scale in {0.9, 0.92, ..., 1.1}, random rotation in {-10..10} degrees (0 five times more
often), jitter 4. Every draw comes from one seeded :class:`torch.Generator` on the CPU, so the same
seed gives the same pixels; the whole batch shares each step's draw, as in Lucent.

**One resampling instead of two.** Lucid resizes the padded image (bilinear) and then rotates
the result (bilinear, zero outside). :func:`standard` draws the same pad, jitter, scale, angle
and jitter, in the same order from the generator, and samples the padded image ONCE at the
points where the two steps would have looked: bilinear interpolation to a new size with
``align_corners=False`` keeps normalised coordinates, so "resize by f, rotate by a about the
centre, crop" is one affine grid over the padded image (rotation matrix in normalised
coordinates, output (round(f H) - 4, round(f W) - 4) cut from the grid at the last jitter's
offset). The pixels differ from Lucid's by the second bilinear interpolation only (one blur
less); outside the padded image the fill is Lucid's (zeros when rotated; with angle 0 the
border is clamped, as the resize alone does). Pad + jitter 8 is one pad with offsets; scale 1
with angle 0 is a plain crop (a view). ``tests/test_optimize.py`` compares :func:`standard`
with the two-step chain on a smooth image.

:func:`jitter_only` is the lighter set (``--transforms jitter``): only the last jitter(4), no
padding, no resampling. It is the default below 128 px (``--transforms auto``): on the trained
example at 32 and 64 px every variant with a resampling step (Lucid's set, its one-resampling
form, the pads and jitters scaled by size / 224, every amount scaled by size / 224) left 19-26
of 32 channels with their own image the best of the set, jitter only 29-31 (docs/optimize.md,
"Own image, best image"). Lucid's set was made for images of about 224 px; the threshold of 128
lies between the sizes measured here and that one (it is a choice, not a measurement).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

SCALES = [1 + (i - 5) / 50.0 for i in range(11)]
ANGLES = list(range(-10, 11)) + 5 * [0]
PAD, FIRST_JITTER, LAST_JITTER = 12, 8, 4  # Lucid's, in pixels
#: Below this side the default is :func:`jitter_only`, from it on :func:`standard` (module doc).
SMALL_BELOW = 128


def jitter_only_by_default(size: int) -> bool:
    """The default transform set for images of ``size`` pixels: True (jitter only) below
    :data:`SMALL_BELOW`, False (Lucid's standard set) from it on."""
    return size < SMALL_BELOW


def _pick(options: list[float] | list[int], generator: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=generator))])


def jitter(images: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    """Crop (H-d, W-d) at a random offset in [0, d): Lucid's ``jitter(d)`` (a view, no copy)."""
    dy, dx = (int(v) for v in torch.randint(d, (2,), generator=generator))
    height, width = images.shape[2:]
    return images[:, :, dy:dy + height - d, dx:dx + width - d]


def scaled_rotation_grid(height: int, width: int, degrees: float, crop: tuple[int, int, int, int],
                         dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sampling points of "rotate an image of (height, width) by ``degrees`` about its centre,
    then keep rows crop[0]:crop[1], columns crop[2]:crop[3]", in the normalised coordinates
    (``align_corners=False``) that any resize of the image shares: float (1, rows, cols, 2),
    (x, y) in [-1, 1] inside the image."""
    angle = math.radians(degrees)
    theta = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]]],
                         dtype=dtype, device=device)
    grid = functional.affine_grid(theta, [1, 1, height, width], align_corners=False)
    return grid[:, crop[0]:crop[1], crop[2]:crop[3]]


def standard(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Lucid's standard transforms of RGB float (N, 3, H, W) in [0, 1], with the scale and the
    rotation in one bilinear resampling (module doc): float (N, 3, H', W') in [0, 1], H' =
    round(f (H + 16)) - 4 for the drawn scale f (the same sizes as Lucid's chain)."""
    sampled, fill = standard_parts(images, generator)
    return sampled if fill is None else sampled + fill


def standard_parts(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`standard` as ``sampled + fill`` without building the padded image: ``sampled``
    float (N, 3, H', W'), the photo's share (the unpadded images resampled, zeros outside),
    ``fill`` float (1, 1, H', W') or None, the grey pad's share (0.5 times the bilinear weight
    that falls on the pad ring), the same for every image. The engine adds ``fill`` inside its
    normalisation, so the step never writes (or back-propagates through) a padded copy of the
    batch: the pad cost 0.035 of a 64 x 224 px step's floor (benchmarks/optimize.py)."""
    # pad 12 then jitter 8 (a crop at (dy, dx)) in one step: pad 12 - dx left, 4 + dx right, ...
    dy, dx = (int(v) for v in torch.randint(FIRST_JITTER, (2,), generator=generator))
    keep = PAD - FIRST_JITTER
    pads = [PAD - dx, keep + dx, PAD - dy, keep + dy]
    factor = _pick(SCALES, generator)
    degrees = _pick(ANGLES, generator)
    ey, ex = (int(v) for v in torch.randint(LAST_JITTER, (2,), generator=generator))
    height, width = images.shape[2] + pads[2] + pads[3], images.shape[3] + pads[0] + pads[1]
    rows, cols = max(1, round(height * factor)), max(1, round(width * factor))
    crop = (ey, ey + rows - LAST_JITTER, ex, ex + cols - LAST_JITTER)
    if rows == height and cols == width and degrees == 0:  # nothing to resample: a view of the padded image
        x = functional.pad(images, pads, mode="constant", value=0.5)
        return x[:, :, crop[0]:crop[1], crop[2]:crop[3]], None
    grid = scaled_rotation_grid(rows, cols, degrees, crop, images.dtype, images.device)
    mode = "zeros" if degrees else "border"
    # the same points in the unpadded image's normalised coordinates (align_corners=False:
    # pixel u of the padded image is u - pad of the image, and x_norm = (2 u + 1) / side - 1)
    span = torch.tensor([width / images.shape[3], height / images.shape[2]], dtype=grid.dtype, device=grid.device)
    offset = torch.tensor([pads[0], pads[2]], dtype=grid.dtype, device=grid.device)
    inner = (grid + 1) * span - 1 - 2 * offset / torch.tensor([images.shape[3], images.shape[2]], dtype=grid.dtype,
                                                                device=grid.device)
    sampled = functional.grid_sample(images, inner.expand(images.shape[0], -1, -1, -1), mode="bilinear",
                                     padding_mode="zeros", align_corners=False)
    # the grey ring's share: 0.5 * (weight on the padded image - weight on the photo), where the
    # padded image's weight follows Lucid's fill outside it (zeros when rotated, clamped if not)
    with torch.no_grad():
        ones = images.new_ones(1, 1, height, width)
        padded_weight = functional.grid_sample(ones, grid, mode="bilinear", padding_mode=mode, align_corners=False)
        photo_weight = functional.grid_sample(ones[:, :, :images.shape[2], :images.shape[3]], inner, mode="bilinear",
                                              padding_mode="zeros", align_corners=False)
    return sampled, 0.5 * (padded_weight - photo_weight)


def jitter_only(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Only Lucid's last step, ``jitter(4)``: float (N, 3, H, W) -> (N, 3, H - 4, W - 4), no
    padding, no resampling (every pixel kept as it is)."""
    return jitter(images, LAST_JITTER, generator)
